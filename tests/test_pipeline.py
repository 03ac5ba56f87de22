"""The whole method in one run (configs/abaw.py, abaw_jax/jobs/pipeline.py) on a micro configuration.

One real run of every stage (the `micro_pipeline` fixture) is shared; the tests then check what it wrote, and
that reruns skip, resume or redo exactly the stages they should.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from abaw_jax.data import release
from abaw_jax.eval.submission import check_submission
from abaw_jax.jobs import pipeline
from abaw_jax.jobs.registry import JOBS, STAGE_JOBS
from abaw_jax.report import check as report
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.pipeline_dirs import STAGE_FILE, PipelineDirs, flat_settings
from conftest import REPO, micro_pipeline_config, set_values

STAGES = [
    "mae",
    "finetune_au",
    "finetune_expr",
    "finetune_va",
    "features",
    "fusion_au",
    "fusion_expr",
    "fusion_va",
    "fusion_va_visual",
    "evaluate_au",
    "evaluate_expr",
    "evaluate_va",
    "evaluate_va_visual",
    "report",
    "predictor",
]


def _stage(root: pathlib.Path, name: str) -> dict:
    return json.loads((root / name / "stage.json").read_text())


def test_every_stage_runs_in_order_into_its_folder(micro_pipeline):
    root, config, records = micro_pipeline
    assert list(records) == STAGES
    assert all(r["status"] == "ran" and r["complete"] for r in records.values())
    dirs = PipelineDirs(str(root))
    # Each stage read the folder of the stage before it, not the tiny presets' /tmp workdirs; stage.json
    # records those folders relative to the workdir.
    assert _stage(root, "finetune_expr")["config"]["encoder"] == "$WORKDIR/mae"
    assert _stage(root, "features")["config"]["encoders"]["va"] == "$WORKDIR/finetune_va"
    assert _stage(root, "fusion_va_visual")["config"]["audio_sets"] == ""
    assert _stage(root, "fusion_va")["config"]["audio_sets"] == "logmel_mfcc"
    assert _stage(root, "evaluate_au")["config"]["fusion_workdir"] == "$WORKDIR/fusion_au"
    assert _stage(root, "evaluate_va_visual")["config"]["fusion_workdir"] == "$WORKDIR/fusion_va_visual"
    assert _stage(root, "evaluate_au")["inputs"] == {
        "fusion_au": records["fusion_au"]["fingerprint"],
        "features": records["features"]["fingerprint"],
    }
    paths = release.resolve(config.data)
    for task in ("AU", "EXPR", "VA"):
        submission = root / f"evaluate_{task.lower()}" / "submissions" / f"{task}.txt"
        assert check_submission(submission, paths.example_file(task), task) > 0
    markdown = (root / "report" / "report.md").read_text()
    assert report.check_report(dirs, markdown, tasks=("au", "expr", "va")) == []
    assert "## The paper's claims on this run" in markdown
    assert (
        f"Release: the synthetic release ({config.data.synthetic_videos} videos x "
        f"{config.data.synthetic_frames_per_video} frames, seed {config.data.synthetic_seed}"
    ) in markdown


def test_stage_config_file_reruns_the_stage_alone(micro_pipeline):
    root, _, _ = micro_pipeline
    path = root / "evaluate_expr" / "stage_config.py"
    spec = importlib.util.spec_from_file_location("stage_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert f"--config={path}" in path.read_text()
    settings = json.loads(json.dumps(module.get_config().to_dict()))
    assert settings["fusion_workdir"] == str(root / "fusion_expr")  # the file itself runs with real paths
    assert pipeline.portable(settings, str(root)) == _stage(root, "evaluate_expr")["config"]


def test_rerun_with_the_same_settings_skips_every_stage(micro_pipeline):
    root, config, _ = micro_pipeline
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "logs" not in p.parts}
    records = JOBS["pipeline"](config, str(root))
    assert [r["status"] for r in records.values()] == ["skipped"] * len(STAGES)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "logs" not in p.parts}
    assert after == before


def test_unfinished_stage_resumes_in_place_and_later_stages_stay(micro_pipeline, capsys):
    root, config, _ = micro_pipeline
    record = _stage(root, "fusion_va")
    (root / "fusion_va" / "stage.json").write_text(json.dumps({**record, "complete": False}))
    records = JOBS["pipeline"](config, str(root))
    assert records["fusion_va"]["status"] == "resumed"
    assert "Resumed from" in capsys.readouterr().out  # the job found its own checkpoint: no retraining
    assert {n for n, r in records.items() if r["status"] != "skipped"} == {"fusion_va"}
    assert _stage(root, "fusion_va")["complete"]


def test_each_key_is_either_cosmetic_or_reruns_its_stage(tmp_path):
    """Every stage job's cosmetic keys exist in its config; changing one keeps a finished stage, changing any other
    key (or an input) reruns it."""
    root = str(tmp_path)
    stages = pipeline.plan(micro_pipeline_config(tmp_path / "cache"), PipelineDirs(root))
    for stage in (s for s in stages if s.config is not None):
        cosmetic = STAGE_JOBS[stage.job].cosmetic_keys
        settings = stage.settings(root)
        flat = flat_settings(settings)
        assert set(cosmetic) <= set(flat), (stage.name, set(cosmetic) - set(flat))
        inputs = {os.path.basename(d): "f" for d in stage.inputs}
        record = {"config": settings, "inputs": inputs}
        for key in flat:
            changed = json.loads(json.dumps(settings))
            *parents, leaf = key.split(".")
            node = changed
            for parent in parents:
                node = node[parent]
            node[leaf] = "changed"
            assert pipeline._up_to_date(record, changed, inputs, cosmetic) == (key in cosmetic), (stage.name, key)
        for name in inputs:
            assert not pipeline._up_to_date(record, settings, {**inputs, name: "g"}, cosmetic)


def test_moved_workdir_with_cosmetic_changes_skips_every_stage(micro_pipeline, tmp_path, capsys):
    root, config, _ = micro_pipeline
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(root, moved)
    stripped = 0
    for record_path in moved.glob(f"*/{STAGE_FILE}"):  # records written before data.synthetic_preset existed
        record = json.loads(record_path.read_text())
        if "synthetic_preset" in record["config"].get("data", {}):
            del record["config"]["data"]["synthetic_preset"]
            record_path.write_text(json.dumps(record))
            stripped += 1
    assert stripped > 0
    cosmetic = {
        "mae.log_every": 7,
        "finetune.au.eval_batch_size": 3,
        "features.decode_threads": 1,
        "fusion.va.log_every": 3,
        "fusion.va.member_loop": "vmap",
        "evaluate.au.num_plots": 0,
    }
    records = JOBS["pipeline"](micro_pipeline_config(config.data.cache_dir, **cosmetic), str(moved))
    assert [r["status"] for r in records.values()] == ["skipped"] * len(STAGES)
    out = capsys.readouterr().out
    assert (
        "mae: done earlier with these settings, skipped (cosmetic settings changed, results unaffected: "
        f"log_every: {config.mae.log_every} -> 7)"
    ) in out
    assert f"num_plots: {config.evaluate.au.num_plots} -> 0" in out and ".previous" not in out
    assert sorted(p.name for p in moved.iterdir()) == sorted(p.name for p in root.iterdir())


def test_interrupted_rerun_keeps_the_finished_stage_and_the_old_settings_restore_it(micro_pipeline, capsys):
    root, config, _ = micro_pipeline
    before = {p: p.stat().st_mtime_ns for p in (root / "evaluate_expr").rglob("*") if p.is_file()}
    changed = micro_pipeline_config(config.data.cache_dir, **{"evaluate.expr.tuning.bias_rounds": 1})

    def killed(stage_config, workdir):
        raise JobError("killed while rerunning")

    with pytest.raises(JobError, match="stage evaluate_expr: killed"):
        pipeline.run(
            changed, str(root), jobs={**STAGE_JOBS, "evaluate": dataclasses.replace(STAGE_JOBS["evaluate"], run=killed)}
        )
    out = capsys.readouterr().out
    assert "tuning.bias_rounds: 2 -> 1" in out
    assert f"the finished run is kept in {root / 'evaluate_expr.previous'}" in out
    assert _stage(root, "evaluate_expr.previous")["complete"] and not _stage(root, "evaluate_expr")["complete"]

    records = JOBS["pipeline"](config, str(root))
    assert records["evaluate_expr"]["status"] == "restored"
    assert {n for n, r in records.items() if r["status"] != "skipped"} == {"evaluate_expr"}
    assert not (root / "evaluate_expr.previous").exists()
    assert {p: p.stat().st_mtime_ns for p in (root / "evaluate_expr").rglob("*") if p.is_file()} == before


def test_changed_setting_reruns_that_stage_and_its_dependents_only(micro_pipeline, capsys):
    root, config, _ = micro_pipeline
    changed = set_values(micro_pipeline_config(config.data.cache_dir), {"evaluate.expr.tuning.bias_rounds": 1})
    (root / "evaluate_expr" / "marker").write_text("from the earlier run")
    records = JOBS["pipeline"](changed, str(root))
    ran = {n for n, r in records.items() if r["status"] == "ran"}
    assert ran == {"evaluate_expr", "report", "predictor"}
    out = capsys.readouterr().out
    assert "tuning.bias_rounds: 2 -> 1" in out
    assert f"removing {root / 'evaluate_expr.previous'}: its replacement is complete" in out
    assert not (root / "evaluate_expr" / "marker").exists()  # a fresh run, not resumed from the old folder
    assert not (root / "evaluate_expr.previous").exists()


def test_plan_rejects_inconsistent_settings(synthetic_affwild2, tmp_path):
    dirs = PipelineDirs(str(tmp_path))

    def fails(match, **overrides):
        with pytest.raises(JobError, match=match):
            pipeline.plan(micro_pipeline_config(tmp_path, **overrides), dirs)

    fails(r"config.tasks must be distinct tasks", tasks="expr,pose")
    fails(r"config.tasks must name at least one", tasks="", audio_ablation="")
    fails(r"audio_ablation=.*not in config.tasks", tasks="expr", audio_ablation="va")
    fails(
        r"config.evaluate.expr reads members \['reaction'\].*config.fusion.expr.members",
        **{"fusion.expr.members": "official,fold1,fold2,fold3,fold4,fold5,whole"},
    )
    fails(r"config.mae.data.data_dir is empty", **{"data.root": str(tmp_path)})
    one_task = pipeline.plan(
        micro_pipeline_config(tmp_path, tasks="expr", audio_ablation="", **{"features.sets": ("au", "mae")}), dirs
    )
    assert [s.name for s in one_task][:4] == ["mae", "finetune_expr", "features", "fusion_expr"]
    assert one_task[2].config.sets == ("expr", "mae") and one_task[2].inputs == (dirs.finetune("expr"), dirs.mae)
    skip_mae = pipeline.plan(micro_pipeline_config(tmp_path, mae_encoder="/weights/mae.pth"), dirs)
    assert skip_mae[0].name == "finetune_au" and skip_mae[0].config.encoder == "/weights/mae.pth"
    # A real release is checked before any training: audio features need its videos folder.
    real = tmp_path / "release"
    shutil.copytree(synthetic_affwild2, real, ignore=shutil.ignore_patterns("videos"))
    fails(
        r"config.data.videos: .*release has no videos/ folder",
        mae_encoder="/weights/mae.pth",
        **{"data.root": str(real)},
    )
    no_audio = {
        "data.root": str(real),
        "features.audio": (),
        "fusion.au.audio_sets": "",
        "fusion.expr.audio_sets": "",
        "fusion.va.audio_sets": "",
    }
    fails(
        r"config.fusion.va.audio_sets names \['logmel_mfcc'\], which config.features.audio=.* does not extract",
        mae_encoder="/weights/mae.pth",
        **{**no_audio, "fusion.va.audio_sets": "logmel_mfcc"},
    )
    visual_only = pipeline.plan(
        micro_pipeline_config(tmp_path, mae_encoder="/weights/mae.pth", audio_ablation="", **no_audio), dirs
    )
    assert visual_only[3].name == "features" and visual_only[3].config.data.root == str(real)


def test_a_bad_value_in_a_late_stage_stops_before_the_first_stage(tmp_path):
    config = micro_pipeline_config(tmp_path / "cache", **{"fusion.expr.clip_len": 0})
    with pytest.raises(JobError, match=r"^stage fusion_expr: config.clip_len must be an integer >= 1, got 0"):
        JOBS["pipeline"](config, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "mae").exists()


def test_foreign_folder_in_a_stage_place_is_not_overwritten(tmp_path):
    (tmp_path / "mae").mkdir()
    (tmp_path / "mae" / "mine.txt").write_text("a user's file")
    with pytest.raises(JobError, match=r"mae exists but was not made by this pipeline"):
        JOBS["pipeline"](micro_pipeline_config(tmp_path / "cache"), str(tmp_path))
    assert (tmp_path / "mae" / "mine.txt").read_text() == "a user's file"


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "abaw_jax.main",
            "--config=configs/abaw.py:tiny",
            f"--workdir={tmp_path}",
            "--config.tasks=expr,pose",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.tasks must be distinct tasks")
