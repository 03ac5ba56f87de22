"""The pipeline report: its tables hold exactly the stage files' numbers, its intervals and verdicts are the
bootstrap of evaluate's per-video statistics, figures.

The stage files are the real ones where a job writes them quickly: the evaluate job runs on simulated member
predictions of the fixture release (with static predictions, and a visual-only variant for VA); the training
curves go through the jobs' MetricWriter; fusion's scores.json and finetune's best.json follow the layout those
jobs write (key for key, see jobs/fusion.py `_report` and jobs/finetune.py `BestParams`).
"""

import io
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from abaw_jax import tasks
from abaw_jax.data import affwild2
from abaw_jax.data.predictions import Predictions, PredictionWriter
from abaw_jax.eval import reconstruction_grid, simulate
from abaw_jax.jobs import evaluate
from abaw_jax.report import bootstrap, check, stage_files, writer
from abaw_jax.report import tables as report_tables
from abaw_jax.runtime.pipeline_dirs import PipelineDirs
from abaw_jax.runtime.telemetry import MetricWriter
from conftest import load_config

RUN_TASKS = ("expr", "va")  # AU is left out of the run: the report says so (and the fixture stays fast)


def _evaluate_config(task, release_root, fusion_dir, static_dir):
    config = load_config("evaluate", task)
    config.data.root = str(release_root)
    config.fusion_workdir = str(fusion_dir)
    config.static_predictions = str(static_dir)
    config.num_plots = 1
    # Short tuning grids keep the fixture fast; the layout of results.json does not depend on them.
    config.tuning.sigmas = (0.0, 1.0, 3.0)
    config.tuning.expr_bias = (-0.3, 0.0, 0.3)
    config.tuning.thresholds = (0.3, 0.5, 0.7)
    config.tuning.bias_rounds = 1
    return config


def _static_predictions(release_root, predictions: Predictions, directory, task):
    """A fine-tuned encoder's per-frame outputs (member `static`) on Validation_Set and the test tracks, weaker
    than TMF."""
    prediction_writer = PredictionWriter(directory, task)
    rng = np.random.default_rng(1)
    task_dir = affwild2.find_task_dir(release_root / "annotations", task)
    for split, role in (("Validation_Set", "heldout"), ("test", "test")):
        for track in predictions.tracks(split):
            path = (
                task_dir / split / f"{track}.txt"
                if split != "test"
                else release_root / "test_set" / "ground_truth" / task_dir.name / f"{track}.txt"
            )
            labels, valid = affwild2.parse_annotation_file(path, task)
            face = predictions.face_mask(track)
            prediction_writer.add_track(track, split, face)
            outputs = simulate.simulate_outputs(task, labels, valid, face, rng, 0.3)
            prediction_writer.write("static", track, outputs, role)
    prediction_writer.flush()


def _fusion_files(directory: pathlib.Path, task: tasks.Task, predictions: Predictions, rng):
    """scores.json in the fusion job's layout, and its curves through the job's MetricWriter."""
    names = list(task.label_names)
    members = {
        m: {
            "train": [t for t in predictions.tracks() if predictions.role(m, t) == "train"],
            "heldout": [t for t in predictions.tracks() if predictions.role(m, t) == "heldout"],
            "best_step": int(rng.integers(1, 40)) if m.startswith(("fold", "official")) else 0,
        }
        for m in predictions.members
    }
    score = lambda: {
        "metric": float(rng.uniform()),
        "per_class": dict(zip(names, rng.uniform(size=len(names)).tolist())),
    }
    scores = {
        "task": task.name,
        "heldout": {m: score() for m, info in members.items() if info["heldout"]},
        "test": {m: score() for m in members},
        "test_reaction": {m: score() for m in members},
        "members": members,
    }
    (directory / "scores.json").write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")
    writer = MetricWriter(str(directory))
    for step in (10, 20, 30, 40):
        writer.write(step, {f"loss/{m}": rng.uniform(0.5, 2) for m in members})
        writer.write(step, {f"heldout/{m}": rng.uniform() for m, info in members.items() if info["heldout"]})
    writer.close()
    return scores


def _finetune_files(directory: pathlib.Path, task: tasks.Task, rng):
    writer = MetricWriter(str(directory))
    best = None
    for step in (25, 50, 75, 100):
        writer.write(step, {"grad_norm": rng.uniform(), "loss": rng.uniform(0.5, 2), "lr": 1e-3})
        if step % 50 == 0:
            per_class = dict(zip(task.label_names, rng.uniform(size=task.num_outputs).tolist()))
            metric = float(np.mean(list(per_class.values())))
            writer.write(step, {"eval_metric": metric, **{f"eval_{k}": v for k, v in per_class.items()}})
            if best is None or metric > best["metric"]:
                best = {"step": step, "metric": metric, "per_class": per_class, "params": f"step_{step:07d}"}
    writer.close()
    (directory / "best.json").write_text(json.dumps(best, indent=2), encoding="utf-8")


def _mae_files(directory: pathlib.Path, rng):
    writer = MetricWriter(str(directory))
    for step in (1, 25, 50):
        writer.write(step, {"grad_norm": rng.uniform(), "loss": rng.uniform(0.5, 2), "lr": 1e-3})
    writer.close()
    (directory / "reconstructions").mkdir()
    for step in (25, 50):
        grid = rng.integers(0, 256, (2 * 16, 3 * 16, 3)).astype(np.uint8)
        reconstruction_grid.save_png(grid, str(directory / "reconstructions" / f"step_{step:07d}.png"))


@pytest.fixture(scope="module")
def run_root(synthetic_affwild2, tmp_path_factory):
    """A pipeline workdir with EXPR and VA stage files (VA also visual-only), and stage.json for two stages."""
    root = tmp_path_factory.mktemp("pipeline")
    dirs = PipelineDirs(str(root))
    rng = np.random.default_rng(0)
    _mae_files(pathlib.Path(dirs.mae), rng)
    for key in RUN_TASKS:
        task = tasks.get_task(key)
        _finetune_files(pathlib.Path(dirs.finetune(key)), task, rng)
        for variant, seed in (("", 0), ("visual", 1)):
            if variant and key != "va":
                continue
            fusion = pathlib.Path(dirs.fusion(key, variant))
            simulate.write_release_predictions(synthetic_affwild2, fusion / "predictions", task.name, seed=seed)
            predictions = Predictions(fusion / "predictions")
            _fusion_files(fusion, task, predictions, rng)
            static = pathlib.Path(dirs.features) / f"predictions_{key}"
            if not static.exists():
                _static_predictions(synthetic_affwild2, predictions, static, task.name)
            evaluate.run(_evaluate_config(key, synthetic_affwild2, fusion, static), dirs.evaluate(key, variant))
    stage = lambda name, config, seconds: json.dumps(
        {"stage": name, "config": config, "fingerprint": "0" * 16, "complete": True, "seconds": seconds}
    )
    data = {"root": "", "synthetic_videos": 16, "synthetic_frames_per_video": 300, "synthetic_seed": 0}
    pathlib.Path(dirs.mae, "stage.json").write_text(
        stage("mae", {"data": data, "model": {"size": "tiny"}, "batch_size": 64}, 125.4)
    )
    pathlib.Path(dirs.finetune("expr"), "stage.json").write_text(stage("finetune_expr", {"task": "EXPR"}, 61))
    return root


def _copy(root, tmp_path) -> PipelineDirs:
    """A copy of the stage files the report reads (not the member predictions), for a test to change."""
    target = tmp_path / "run"
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("predictions*", "tensorboard", "submissions"))
    return PipelineDirs(str(target))


def _json(path):
    return json.loads(pathlib.Path(path).read_text())


def _tables(markdown):
    return {t.title: t for t in report_tables.read_tables(markdown)}


def _numbers(value):
    """Every number in a json value (nested), as floats."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_read_tables_parses_pipe_tables_under_their_headings():
    markdown = "\n".join(
        [
            "# Title",
            "text | with a pipe",
            "",
            "### First",
            "",
            "| a | b c |",
            "|---|:---:|",
            "| 1 | x y |",
            "|  2.5 |  — |",
            "",
            "Source: somewhere",
            "## Second",
            "|x|",
            "|---|",
            "",
            "| not | a table |",
        ]
    )
    tables = report_tables.read_tables(markdown)
    assert [(t.title, t.header, t.rows) for t in tables] == [
        ("First", ["a", "b c"], [["1", "x y"], ["2.5", "—"]]),
        ("Second", ["x"], []),
    ]
    assert tables[0].records() == [{"a": "1", "b c": "x y"}, {"a": "2.5", "b c": "—"}]
    with pytest.raises(ValueError, match=r"table 'T', line 4: 1 cells, the header has 2"):
        report_tables.read_tables("### T\n| a | b |\n|---|---|\n| 1 |\n")


def test_every_number_in_the_tables_is_the_one_in_its_stage_file(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    text = writer.write_report(dirs, tasks=["expr", "va"])
    assert (pathlib.Path(dirs.report) / "report.md").read_text() == text
    tables = _tables(text)
    for key in RUN_TASKS:
        task = tasks.get_task(key)
        results = _json(pathlib.Path(dirs.evaluate(key), "results.json"))
        number = {"EXPR": 2, "VA": 3}[task.name]
        for stage, suffix in (("before", "raw outputs"), ("after", "after post-processing")):
            (table,) = [
                t
                for title, t in tables.items()
                if title.startswith(f"Table {number} ({task.name})") and title.endswith(suffix)
            ]
            assert [r["member"] for r in table.records()] == ["official", *simulate.FOLD_MEMBERS, "out-of-fold"]
            for record in table.records():
                row = results["tables"][record["member"]][stage]
                assert int(record["tracks"]) == results["tables"][record["member"]]["tracks"]
                assert int(record["frames"]) == row["frames"]
                shown = [float(record[c]) for c in (*task.label_names, report_tables.ALL_FRAMES, "Avg. (face frames)")]
                assert shown == pytest.approx(row["per_class"] + [row["metric"], row["metric_face_frames"]], abs=5e-5)
                _assert_interval(record[f"{report_tables.ALL_FRAMES} 95% CI"], row["metric"])
        scores = _json(pathlib.Path(dirs.fusion(key), "scores.json"))
        fusion = tables[next(t for t in tables if t.startswith(f"Fusion members ({task.name})"))]
        for record in fusion.records():
            member = record["member"]
            assert int(record["best step"]) == scores["members"][member]["best_step"]
            assert int(record["held-out tracks"]) == len(scores["members"][member]["heldout"])
            assert int(record["train tracks"]) == len(scores["members"][member]["train"])
            heldout = scores["heldout"].get(member)
            shown = record["held-out (face frames)"]
            assert shown == "—" if heldout is None else float(shown) == pytest.approx(heldout["metric"], abs=5e-5)
            assert float(record["test (face frames)"]) == pytest.approx(scores["test"][member]["metric"], abs=5e-5)
        ablation = tables[next(t for t in tables if t.startswith(f"Table 5 ({task.name})"))]
        columns = [("visual + audio", results)]
        if key == "va":
            columns.append(("visual only", _json(pathlib.Path(dirs.evaluate(key, "visual"), "results.json"))))
        assert ablation.header == ["setting", "set", *[h for c, _ in columns for h in (c, f"{c} 95% CI")]]
        rows = {r["setting"]: r for r in ablation.records()}
        for column, source in columns:
            for row in source["ablation"]:
                assert float(rows[row["setting"]][column]) == pytest.approx(row["metric"], abs=5e-5)
                _assert_interval(rows[row["setting"]][f"{column} 95% CI"], row["metric"])
            submitted = rows["submission (ensemble as configured)"][column]
            assert float(submitted) == pytest.approx(source["test_metric"], abs=5e-5)
        # Smoothing and the tuned biases / thresholds are separate rows; TMF is also shown on the test tracks.
        assert (
            {"mean + smoothing"} <= set(rows)
            if key == "va"
            else {"vote + smoothing", "vote + smoothing + biases"} <= set(rows)
        )
        assert {"static fine-tuned encoder, per frame (Validation_Set)", "TMF official (test)"} <= set(rows)
        best = _json(pathlib.Path(dirs.finetune(key), "best.json"))
        (summary,) = [r for r in tables["Summary"].records() if r["task"] == task.name]
        shown = summary["fine-tuned encoder (eval set, face frames; picked its step)"]
        assert float(shown) == pytest.approx(best["metric"], abs=5e-5)
        assert float(summary["test (submission, all annotated frames)"]) == pytest.approx(
            results["test_metric"], abs=5e-5
        )
    # No number in any table that is not in a stage file (the claims' `change` is a difference of two of them).
    sources = [p for p in pathlib.Path(dirs.root).rglob("*.json") if p.name != "stage.json"]
    sources += list(pathlib.Path(dirs.root).rglob("metrics.jsonl"))
    known = []
    for path in sources:
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        known += [n for line in lines if line.strip() for n in _numbers(json.loads(line))]
    known = np.array(known)
    for table in tables.values():
        for record in table.records():
            for column, cell in record.items():
                derived = column in ("change", "wall time", "settings", "train tracks", "held-out tracks", "videos")
                if derived or not re.fullmatch(r"-?\d+(\.\d+)?", cell):
                    continue
                assert np.abs(known - float(cell)).min() <= 5e-5, (table.title, column, cell)
    assert check.check_report(dirs, text, tasks=["expr", "va"]) == []


def _assert_interval(cell, score):
    """A 95% CI cell of a score: a well-formed interval (check_report recomputes it from the statistics)."""
    low, high = bootstrap.parse_interval(cell)
    assert -1 <= low <= high <= 1, (cell, score)


def _claim_rows(text):
    return {(r["claim"].split(" (")[0], r["task"]): r for r in _tables(text)["Claims"].records()}


def _set_cell(dirs, key, variant, setting, statistics, videos):
    """Table 5 cell `setting` of evaluate_<key>[_variant]: per-video statistics and the score they give."""
    folder = pathlib.Path(dirs.evaluate(key, variant))
    results, per_video = _json(folder / "results.json"), _json(folder / "per_video.json")
    (row,) = [r for r in results["ablation"] if r["setting"] == setting]
    row["metric"] = bootstrap.point(statistics)
    per_video[f"ablation/{setting}"] = {"videos": videos, "statistics": statistics.tolist()}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "per_video.json").write_text(json.dumps(per_video))


def _cell_statistics(task, accuracy, rng, videos=8, frames=60):
    """Per-video statistics of predictions right on about `accuracy` of the frames (VA: noise shrinking with it)."""
    if task == "VA":
        labels = rng.uniform(-1, 1, (videos, frames, 2))
        final = np.clip(labels + (1 - accuracy) * rng.normal(size=labels.shape), -1, 1)
    else:
        labels = rng.integers(0, 8, (videos, frames))
        final = np.where(rng.uniform(size=labels.shape) < accuracy, labels, rng.integers(0, 8, labels.shape))
    return bootstrap.video_statistics(task, final, labels, np.ones((videos, frames), bool))


@pytest.mark.parametrize("gain, expected", [(0.6, "holds"), (-0.6, "does not hold"), (0.0, "undecided")])
def test_claims_are_decided_by_the_paired_interval_of_their_change(run_root, tmp_path, gain, expected):
    dirs = _copy(run_root, tmp_path)
    videos = [f"v{i}" for i in range(8)]
    rng = np.random.default_rng(7)
    low = {t: _cell_statistics(t, 0.3, rng) for t in ("EXPR", "VA")}
    high = {t: low[t] if gain == 0 else _cell_statistics(t, 0.3 + abs(gain), rng) for t in ("EXPR", "VA")}
    without, with_ = (low, high) if gain >= 0 else (high, low)
    cells = [  # (task, variant, setting, statistics): each claim's "without" and "with" cell
        ("expr", "", "static fine-tuned encoder, per frame (Validation_Set)", without["EXPR"]),
        ("expr", "", "TMF official (Validation_Set)", with_["EXPR"]),
        ("va", "", "single member (mean of 6), post-processed", without["VA"]),
        ("va", "", "mean + smoothing", with_["VA"]),
        ("va", "", "mean + SDD", without["VA"]),
        ("va", "", "mean + SDD + smoothing", with_["VA"]),
        ("va", "visual", "mean + SDD + smoothing", without["VA"]),
    ]
    for key, variant, setting, statistics in cells:
        _set_cell(dirs, key, variant, setting, statistics, videos)
    text = writer.write_report(dirs, tasks=["expr", "va"])
    claims = _claim_rows(text)
    for claim in (
        ("TMF helps on Validation_Set", "EXPR"),
        ("the ensemble helps", "VA"),
        ("smoothing helps", "VA"),
        ("audio helps VA", "VA"),
    ):
        row = claims[claim]
        assert row["verdict"] == expected and row["videos"] == "8", (claim, row)
        low_end, high_end = bootstrap.parse_interval(row["change 95% CI"])
        change = float(row["with score"]) - float(row["without score"])
        assert low_end <= change <= high_end
    assert claims[("audio helps VA", "VA")]["without"] == "mean + SDD + smoothing [visual only]"
    assert claims[("audio helps VA", "VA")]["premise on this release"] == "premise built in (audio_arousal)"
    assert claims[("the ensemble helps", "VA")]["premise on this release"] == "not built in (person_styles off)"
    assert check.check_report(dirs, text, tasks=["expr", "va"]) == []
    # A verdict changed by hand, or one left at a sign-based "holds" on an undecided interval, fails the check.
    row = claims[("smoothing helps", "VA")]
    other = "undecided" if expected != "undecided" else "holds"
    tampered = text.replace(f"| 8 | {expected} |", f"| 8 | {other} |", 1)
    assert tampered != text
    problems = check.check_report(dirs, tampered, tasks=["expr", "va"])
    assert any("verdict" in p for p in problems), problems
    assert row["verdict"] == expected


def test_fewer_videos_than_the_minimum_are_too_few_to_decide(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    rng = np.random.default_rng(8)
    videos = [f"v{i}" for i in range(bootstrap.MIN_VIDEOS - 1)]
    _set_cell(dirs, "va", "", "mean + SDD", _cell_statistics("VA", 0.1, rng, len(videos)), videos)
    _set_cell(dirs, "va", "", "mean + SDD + smoothing", _cell_statistics("VA", 0.95, rng, len(videos)), videos)
    text = writer.write_report(dirs, tasks=["va"])
    row = _claim_rows(text)[("smoothing helps", "VA")]
    assert row["verdict"] == "too few videos to decide" and row["videos"] == str(bootstrap.MIN_VIDEOS - 1)
    assert bootstrap.parse_interval(row["change 95% CI"])[0] > 0  # a clear gain, still not decided
    assert f"fewer than {bootstrap.MIN_VIDEOS} videos" in text
    assert check.check_report(dirs, text, tasks=["va"]) == []


def test_sdd_claim_is_not_measurable_when_no_track_was_routed(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    va = pathlib.Path(dirs.evaluate("va"), "results.json")
    results = _json(va)
    for row in results["ablation"]:
        if "SDD" in row["setting"]:
            row["reaction_tracks"] = 0
    va.write_text(json.dumps(results))
    text = writer.write_report(dirs, tasks=["expr", "va"])
    claims = _claim_rows(text)
    row = claims[("SDD helps VA", "VA")]
    assert row["verdict"] == "not measurable: no reaction track in the set"
    assert check.check_report(dirs, text, tasks=["expr", "va"]) == []
    claimed = text.replace("| not measurable: no reaction track in the set |", "| holds |")
    assert claimed != text
    assert any("SDD helps VA" in p and "verdict" in p for p in check.check_report(dirs, claimed, tasks=["expr", "va"]))


def test_missing_optional_parts_are_reported_as_missing(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    shutil.rmtree(dirs.evaluate("va", "visual"))
    shutil.rmtree(pathlib.Path(dirs.mae) / "reconstructions")
    shutil.rmtree(pathlib.Path(dirs.evaluate("expr")) / "plots")
    path = pathlib.Path(dirs.evaluate("expr"), "results.json")
    results = _json(path)  # as evaluate writes it without static_predictions
    results["ablation"] = [r for r in results["ablation"] if not r["setting"].startswith(("static", "TMF"))]
    results["test_metric"] = None  # a release without test labels
    path.write_text(json.dumps(results))
    text = writer.write_report(dirs, tasks=["va", "expr"])
    assert "- AU: not run (no rows for it)." in text
    assert "VA: no visual-only variant (evaluate_va_visual/results.json absent)" in text
    assert "EXPR: no static predictions in the ablation" in text
    assert "No MAE reconstructions" in text and "EXPR: no timelines" in text
    assert "TMF helps on Validation_Set (static fine-tuned encoder -> TMF), EXPR: not checked: no static" in text
    assert "audio helps VA (visual only -> visual + audio), VA: not checked: no visual-only variant" in text
    tables = _tables(text)
    assert not any(t.startswith(("Table 1", "Tuning (AU)", "Table 5 (AU)")) for t in tables)
    assert tables[next(t for t in tables if t.startswith("Table 5 (VA)"))].header == [
        "setting",
        "set",
        "visual + audio",
        "visual + audio 95% CI",
    ]
    claims = _claim_rows(text)
    assert ("TMF helps on test", "VA") in claims and ("TMF helps on Validation_Set", "EXPR") not in claims
    (summary,) = [r for r in tables["Summary"].records() if r["task"] == "EXPR"]
    assert summary["test (submission, all annotated frames)"] == "—"
    expr_rows = [r["setting"] for r in tables[next(t for t in tables if t.startswith("Table 5 (EXPR)"))].records()]
    assert "submission (ensemble as configured)" not in expr_rows and "vote + SDD + smoothing" in expr_rows
    assert not (pathlib.Path(dirs.report) / "figures" / "mae_reconstructions.png").exists()
    assert check.check_report(dirs, text, tasks=["expr", "va"]) == []
    # Stage files: settings and wall time where stage.json exists, the rest said to lack it.
    stages = {r["stage"]: r for r in tables["Stage settings"].records()}
    assert stages["mae"]["wall time"] == "2m05s" and "model.size=tiny" in stages["mae"]["settings"]
    assert stages["total"]["wall time"] == "3m06s"  # 125.4 s + 61 s
    assert stages["finetune_expr"]["settings"] == "task=EXPR" and stages["fusion_va"]["settings"] == "no stage.json"
    assert "Release: the synthetic release (16 videos x 300 frames, seed 0" in text


def test_a_missing_or_broken_required_file_is_a_clear_error(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    scores = pathlib.Path(dirs.fusion("va"), "scores.json")
    scores.unlink()
    with pytest.raises(stage_files.ReportError, match=re.escape(f"{scores}: missing; the report needs it")):
        writer.write_report(dirs, tasks=["va"])
    with pytest.raises(stage_files.ReportError, match=r"non-empty subset of \['au', 'expr', 'va'\], got \['exp'\]"):
        writer.write_report(dirs, tasks=["exp"])
    metrics = pathlib.Path(dirs.finetune("expr"), "metrics.jsonl")
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": \n')
    with pytest.raises(stage_files.ReportError, match=re.escape(f"{metrics}: line 7: not valid JSON")):
        writer.write_report(dirs, tasks=["expr"])
    results = pathlib.Path(dirs.evaluate("va"), "results.json")
    results.write_text(json.dumps({k: v for k, v in _json(results).items() if k != "tables"}))
    with pytest.raises(stage_files.ReportError, match=re.escape(f"{results}: no 'tables'")):
        writer.write_report(dirs, tasks=["va"])


def test_figures_exist_and_are_valid_pngs(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    text = writer.write_report(dirs, tasks=["expr", "va"])
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text)
    figures = pathlib.Path(dirs.report) / "figures"
    assert sorted(linked) == sorted(f"figures/{p.name}" for p in figures.iterdir())
    assert {
        "figures/curves_mae.png",
        "figures/mae_reconstructions.png",
        "figures/curves_finetune.png",
        "figures/curves_fusion_expr.png",
        "figures/curves_fusion_va.png",
    } <= set(linked)
    assert sum(name.startswith("figures/timeline_") for name in linked) == 2  # num_plots=1 per task
    for name in linked:
        data = (pathlib.Path(dirs.report) / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 400_000
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) >= 100


def test_check_report_finds_a_changed_number_in_each_kind_of_table(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    text = writer.write_report(dirs, tasks=["expr", "va"])
    tables = report_tables.read_tables(text)
    kinds = ("Summary", "Training", "Table 2 (EXPR)", "Tuning (VA)", "Fusion members (VA)", "Table 5 (VA)", "Claims")
    for kind in kinds:
        table = next(t for t in tables if t.title.startswith(kind))
        row = next(r for r in table.rows if any(re.fullmatch(r"-?\d+\.\d{4}", c) for c in r))
        column = next(i for i, c in enumerate(row) if re.fullmatch(r"-?\d+\.\d{4}", c))
        old_line = "| " + " | ".join(row) + " |"
        changed = row.copy()
        changed[column] = f"{float(row[column]) + 0.01:.4f}"
        tampered = text.replace(old_line, "| " + " | ".join(changed) + " |", 1)
        assert tampered != text
        problems = check.check_report(dirs, tampered, tasks=["expr", "va"])
        assert problems and any(table.header[column] in p for p in problems), (kind, problems)
    claims = next(t for t in tables if t.title == "Claims")
    for row in claims.rows:  # every verdict, changed to another one, fails the check
        verdict = claims.header.index("verdict")
        changed = row.copy()
        changed[verdict] = "holds" if row[verdict] != "holds" else "undecided"
        flipped = text.replace("| " + " | ".join(row) + " |", "| " + " | ".join(changed) + " |", 1)
        assert flipped != text
        assert any("verdict" in p for p in check.check_report(dirs, flipped, tasks=["expr", "va"])), row
    interval = claims.header.index("change 95% CI")
    row = next(r for r in claims.rows if bootstrap.parse_interval(r[interval]))
    low, high = bootstrap.parse_interval(row[interval])
    changed = row.copy()
    changed[interval] = bootstrap.format_interval(low - 0.01, high)
    widened = text.replace("| " + " | ".join(row) + " |", "| " + " | ".join(changed) + " |", 1)
    assert any("change 95% CI" in p for p in check.check_report(dirs, widened, tasks=["expr", "va"]))
    assert any(
        "no table" in p
        for p in check.check_report(dirs, text.replace("### Summary", "### Other"), tasks=["expr", "va"])
    )
