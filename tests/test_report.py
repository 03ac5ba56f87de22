"""The pipeline report: its tables hold exactly the stage files' numbers, its claims follow their sign, figures.

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
from abaw_jax.eval import reconstruction_grid, report, simulate
from abaw_jax.jobs import evaluate
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
    """A fine-tuned encoder's per-frame outputs (member `static`) on Validation_Set, weaker than TMF."""
    writer = PredictionWriter(directory, task)
    rng = np.random.default_rng(1)
    task_dir = affwild2.find_task_dir(release_root / "annotations", task)
    for track in predictions.tracks("Validation_Set"):
        labels, valid = affwild2.parse_annotation_file(task_dir / "Validation_Set" / f"{track}.txt", task)
        face = predictions.face_mask(track)
        writer.add_track(track, "Validation_Set", face)
        writer.write("static", track, simulate.simulate_outputs(task, labels, valid, face, rng, 0.3), "heldout")
    writer.flush()


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
    return {t.title: t for t in report.read_tables(markdown)}


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
    tables = report.read_tables(markdown)
    assert [(t.title, t.header, t.rows) for t in tables] == [
        ("First", ["a", "b c"], [["1", "x y"], ["2.5", "—"]]),
        ("Second", ["x"], []),
    ]
    assert tables[0].records() == [{"a": "1", "b c": "x y"}, {"a": "2.5", "b c": "—"}]
    with pytest.raises(ValueError, match=r"table 'T', line 4: 1 cells, the header has 2"):
        report.read_tables("### T\n| a | b |\n|---|---|\n| 1 |\n")


def test_every_number_in_the_tables_is_the_one_in_its_stage_file(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    text = report.write_report(dirs, tasks=["expr", "va"])
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
                shown = [float(record[c]) for c in (*task.label_names, "Avg.", "Avg. (face frames)")]
                assert shown == pytest.approx(row["per_class"] + [row["metric"], row["metric_face_frames"]], abs=5e-5)
        scores = _json(pathlib.Path(dirs.fusion(key), "scores.json"))
        fusion = tables[next(t for t in tables if t.startswith(f"Fusion members ({task.name})"))]
        for record in fusion.records():
            member = record["member"]
            assert int(record["best step"]) == scores["members"][member]["best_step"]
            assert int(record["held-out tracks"]) == len(scores["members"][member]["heldout"])
            assert int(record["train tracks"]) == len(scores["members"][member]["train"])
            heldout = scores["heldout"].get(member)
            assert (
                record["held-out"] == "—"
                if heldout is None
                else float(record["held-out"]) == pytest.approx(heldout["metric"], abs=5e-5)
            )
            assert float(record["test"]) == pytest.approx(scores["test"][member]["metric"], abs=5e-5)
        ablation = tables[next(t for t in tables if t.startswith(f"Table 5 ({task.name})"))]
        columns = [("visual + audio", results)]
        if key == "va":
            columns.append(("visual only", _json(pathlib.Path(dirs.evaluate(key, "visual"), "results.json"))))
        assert ablation.header == ["setting", "set", *[c for c, _ in columns]]
        rows = {r["setting"]: r for r in ablation.records()}
        for column, source in columns:
            for row in source["ablation"]:
                assert float(rows[row["setting"]][column]) == pytest.approx(row["metric"], abs=5e-5)
            submitted = rows["submission (ensemble as configured)"][column]
            assert float(submitted) == pytest.approx(source["test_metric"], abs=5e-5)
        assert any(s.startswith("static fine-tuned encoder") for s in rows)  # the static predictions' row
        best = _json(pathlib.Path(dirs.finetune(key), "best.json"))
        (summary,) = [r for r in tables["Summary"].records() if r["task"] == task.name]
        assert float(summary["fine-tuned encoder (eval set, best step)"]) == pytest.approx(best["metric"], abs=5e-5)
        assert float(summary["test (submission)"]) == pytest.approx(results["test_metric"], abs=5e-5)
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
                derived = column in ("change", "wall time", "settings", "train tracks", "held-out tracks")
                if derived or not re.fullmatch(r"-?\d+(\.\d+)?", cell):
                    continue
                assert np.abs(known - float(cell)).min() <= 5e-5, (table.title, column, cell)
    assert report.check_report(dirs, text, tasks=["expr", "va"]) == []


def _claim_rows(text):
    return {(r["claim"].split(" (")[0], r["task"]): r for r in _tables(text)["Claims"].records()}


def _set_metric(results_path, setting, value):
    results = _json(results_path)
    (row,) = [r for r in results["ablation"] if r["setting"] == setting]
    row["metric"] = value
    results_path.write_text(json.dumps(results))


@pytest.mark.parametrize("gain", [0.25, -0.25, 0.0])
def test_claims_hold_or_not_by_the_sign_of_their_two_scores(run_root, tmp_path, gain):
    dirs = _copy(run_root, tmp_path)
    expr = pathlib.Path(dirs.evaluate("expr"), "results.json")
    va, va_visual = (pathlib.Path(dirs.evaluate("va", v), "results.json") for v in ("", "visual"))
    # Each claim's "without" cell at 0.5, its "with" cell at 0.5 + gain.
    static, tmf = "static fine-tuned encoder, per frame (Validation_Set)", "TMF official (Validation_Set)"
    for path, pairs in (
        (expr, [(static, tmf), ("vote + smoothing", "vote + SDD + smoothing")]),
        (
            va,
            [
                ("single member (mean of 6), post-processed", "mean + smoothing"),
                ("mean + SDD", "mean + SDD + smoothing"),
            ],
        ),
    ):
        for without, with_ in pairs:
            _set_metric(path, without, 0.5)
            _set_metric(path, with_, 0.5 + gain)
    _set_metric(va_visual, "mean + SDD + smoothing", 0.5)
    text = report.write_report(dirs, tasks=["expr", "va"])
    claims = _claim_rows(text)
    expected = "holds" if gain > 0 else "does not hold on this run"
    for claim in (
        ("TMF helps", "EXPR"),
        ("SDD helps EXPR", "EXPR"),
        ("the ensemble helps", "VA"),
        ("smoothing helps", "VA"),
        ("audio helps VA", "VA"),
    ):
        row = claims[claim]
        assert row["verdict"] == expected, claim
        assert float(row["with score"]) - float(row["without score"]) == pytest.approx(gain, abs=2e-4)
        assert row["change"] == f"{gain:+.4f}"
    assert claims[("audio helps VA", "VA")]["without"] == "mean + SDD + smoothing [visual only]"
    assert report.check_report(dirs, text, tasks=["expr", "va"]) == []


def test_sdd_claim_is_not_measurable_when_no_track_was_routed(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    va = pathlib.Path(dirs.evaluate("va"), "results.json")
    _set_metric(va, "mean + smoothing", 0.5)
    _set_metric(va, "mean + SDD + smoothing", 0.5)
    results = _json(va)
    for row in results["ablation"]:
        if "SDD" in row["setting"]:
            row["reaction_tracks"] = 0
    va.write_text(json.dumps(results))
    text = report.write_report(dirs, tasks=["expr", "va"])
    claims = _claim_rows(text)
    assert claims[("SDD helps VA", "VA")]["verdict"] == "not measurable: no reaction track in the set"
    assert claims[("SDD helps EXPR", "EXPR")]["verdict"] in ("holds", "does not hold on this run")
    assert report.check_report(dirs, text, tasks=["expr", "va"]) == []
    claimed = text.replace(
        "| +0.0000 | not measurable: no reaction track in the set |", "| +0.0000 | does not hold on this run |"
    )
    assert claimed != text
    assert any("SDD helps VA" in p and "verdict" in p for p in report.check_report(dirs, claimed, tasks=["expr", "va"]))


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
    text = report.write_report(dirs, tasks=["va", "expr"])
    assert "- AU: not run (no rows for it)." in text
    assert "VA: no visual-only variant (evaluate_va_visual/results.json absent)" in text
    assert "EXPR: no static predictions in the ablation" in text
    assert "No MAE reconstructions" in text and "EXPR: no timelines" in text
    assert "TMF helps (static fine-tuned encoder -> TMF), EXPR: not checked: no static predictions" in text
    assert "audio helps VA (visual only -> visual + audio), VA: not checked: no visual-only variant" in text
    tables = _tables(text)
    assert not any(t.startswith(("Table 1", "Tuning (AU)", "Table 5 (AU)")) for t in tables)
    assert tables[next(t for t in tables if t.startswith("Table 5 (VA)"))].header == [
        "setting",
        "set",
        "visual + audio",
    ]
    claims = _claim_rows(text)
    assert ("TMF helps", "VA") in claims and ("TMF helps", "EXPR") not in claims
    (summary,) = [r for r in tables["Summary"].records() if r["task"] == "EXPR"]
    assert summary["test (submission)"] == "—"
    expr_rows = [r["setting"] for r in tables[next(t for t in tables if t.startswith("Table 5 (EXPR)"))].records()]
    assert "submission (ensemble as configured)" not in expr_rows and "vote + SDD + smoothing" in expr_rows
    assert not (pathlib.Path(dirs.report) / "figures" / "mae_reconstructions.png").exists()
    assert report.check_report(dirs, text, tasks=["expr", "va"]) == []
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
    with pytest.raises(report.ReportError, match=re.escape(f"{scores}: missing; the report needs it")):
        report.write_report(dirs, tasks=["va"])
    with pytest.raises(report.ReportError, match=r"non-empty subset of \['au', 'expr', 'va'\], got \['exp'\]"):
        report.write_report(dirs, tasks=["exp"])
    metrics = pathlib.Path(dirs.finetune("expr"), "metrics.jsonl")
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": \n')
    with pytest.raises(report.ReportError, match=re.escape(f"{metrics}: line 7: not valid JSON")):
        report.write_report(dirs, tasks=["expr"])
    results = pathlib.Path(dirs.evaluate("va"), "results.json")
    results.write_text(json.dumps({k: v for k, v in _json(results).items() if k != "tables"}))
    with pytest.raises(report.ReportError, match=re.escape(f"{results}: no 'tables'")):
        report.write_report(dirs, tasks=["va"])


def test_figures_exist_and_are_valid_pngs(run_root, tmp_path):
    dirs = _copy(run_root, tmp_path)
    text = report.write_report(dirs, tasks=["expr", "va"])
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
    text = report.write_report(dirs, tasks=["expr", "va"])
    tables = report.read_tables(text)
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
        problems = report.check_report(dirs, tampered, tasks=["expr", "va"])
        assert problems and any(table.header[column] in p for p in problems), (kind, problems)
    flipped = text.replace("| holds |", "| does not hold on this run |", 1)
    assert any("verdict" in p for p in report.check_report(dirs, flipped, tasks=["expr", "va"]))
    assert any(
        "no table" in p
        for p in report.check_report(dirs, text.replace("### Summary", "### Other"), tasks=["expr", "va"])
    )
