"""The paper's Table 6 in the pipeline: rows by number, the other releases' encoders as stages, the report's table.

The end-to-end test copies the shared micro pipeline run and adds two rows, so the stages it already finished
(MAE, the tasks' fine-tuning) are skipped and only the new encoders, the features and the fusions run.
"""

import json
import pathlib
import shutil

import pytest

from abaw_jax import table6, tasks
from abaw_jax.jobs import pipeline
from abaw_jax.jobs.registry import JOBS
from abaw_jax.media import stand_in_audio
from abaw_jax.report import check as report
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.pipeline_dirs import PipelineDirs
from conftest import load_config, micro_pipeline_config


def test_rows_parse_by_number_or_all_and_refuse_anything_else():
    assert table6.parse_rows("6, 3") == (3, 6)
    assert table6.parse_rows("all") == tuple(range(1, 7))
    assert table6.parse_rows("") == ()
    for bad, match in (("7", "rows are 1 to 6"), ("1,x", "got 'x'"), ("2,2", "given twice")):
        with pytest.raises(ValueError, match=match):
            table6.parse_rows(bad)


def test_every_row_fuses_the_papers_sets_and_the_best_rows_are_the_papers():
    names = {row.number: [table6.paper_name(s) for s in (*row.visual, *row.audio)] for row in table6.ROWS.values()}
    assert names[1] == ["affn_VA", "affn_EXPR", "Hubert"]
    assert names[6] == ["affn_VA", "affn_EXPR", "raf_EXPR", "BP4D_AU", "Hubert", "vggish"]
    best = {task: max(table6.ROWS.values(), key=lambda r: r.paper[task]).number for task in ("VA", "EXPR", "AU")}
    assert best == {"VA": 6, "EXPR": 6, "AU": 3}  # the paper: best VA / EXPR use all sets, AU drops BP4D and audio
    assert all(set(row.visual) <= set(tasks.SOURCE_LABELS) for row in table6.ROWS.values())


def test_plan_adds_the_encoders_and_one_official_member_per_row(tmp_path):
    dirs = PipelineDirs(str(tmp_path))
    config = micro_pipeline_config(tmp_path, table6="1,4", **{"features.audio_models.hubert": str(tmp_path)})
    stages = {s.name: s for s in pipeline.plan(config, dirs)}
    sources = ["finetune_affectnet_expr", "finetune_affectnet_va", "finetune_rafdb_expr", "finetune_bp4d_au"]
    assert all(stages[name].inputs == (dirs.mae,) and stages[name].config.encoder == dirs.mae for name in sources)
    assert stages["finetune_bp4d_au"].config.data.source == "bp4d"
    features = stages["features"].config
    assert features.sets == ("au", "expr", "va", "affectnet_expr", "affectnet_va", "rafdb_expr", "bp4d_au")
    assert tuple(features.audio) == ("logmel_mfcc", "hubert")
    assert features.encoders.rafdb_expr == dirs.finetune("rafdb_expr")
    row = stages["fusion_expr_table6_4"].config
    assert row.visual_sets == "expr,affectnet_va,affectnet_expr,rafdb_expr,bp4d_au" and row.audio_sets == "hubert"
    assert row.members == "official" and stages["fusion_expr"].config.members != "official"
    assert "fusion_au_table6_1" in stages and "evaluate_au_table6_1" not in stages
    assert dirs.fusion("va", "table6_1") in stages["report"].inputs
    assert dirs.fusion("va", "table6_1") not in stages["predictor"].inputs

    # A set named in a task's own fusion brings its encoder too; nothing else is fine-tuned.
    one = micro_pipeline_config(tmp_path, **{"fusion.va.visual_sets": "va,affectnet_va"})
    names = [s.name for s in pipeline.plan(one, dirs)]
    assert [n for n in names if n.startswith("finetune_")] == [
        "finetune_au",
        "finetune_expr",
        "finetune_va",
        "finetune_affectnet_va",
    ]
    with pytest.raises(JobError, match=r"config.table6: Table 6 rows are 1 to 6"):
        pipeline.plan(micro_pipeline_config(tmp_path, table6="0"), dirs)


def test_audio_rows_without_their_model_stop_before_training_and_say_how_to_get_one(tmp_path):
    config = micro_pipeline_config(tmp_path / "cache", table6="1")
    with pytest.raises(JobError, match=r"^stage features: config.audio names 'hubert', whose model .* is empty"):
        JOBS["pipeline"](config, str(tmp_path / "w"))
    config = micro_pipeline_config(
        tmp_path / "cache", table6="1", **{"features.audio_models.hubert": str(tmp_path / "none")}
    )
    with pytest.raises(JobError, match=r"does not exist .* `python -m data_prep.make_stand_in_audio"):
        JOBS["pipeline"](config, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "mae").exists()


def test_table6_tiny_preset_runs_two_rows_per_task_with_every_source_encoder():
    config = load_config("abaw", "table6_tiny")
    rows = table6.parse_rows(config.table6)
    assert len(rows) >= 2
    used = {s for r in rows for s in table6.ROWS[r].visual}
    assert used == set(table6.VISUAL_SETS)
    assert all(config.features.audio_models[k] for r in rows for k in table6.ROWS[r].audio)


def test_two_rows_run_end_to_end_and_the_report_prints_table6(micro_pipeline, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(micro_pipeline[0], root)
    audio = stand_in_audio.write_stand_ins(tmp_path / "audio", kinds=("hubert",))
    config = micro_pipeline_config(
        tmp_path / "cache",
        table6="3,4",
        **{"data.cache_dir": micro_pipeline[1].data.cache_dir, "features.audio_models.hubert": audio["hubert"]},
    )
    records = JOBS["pipeline"](config, str(root))
    assert records["mae"]["status"] == "skipped" and records["finetune_va"]["status"] == "skipped"
    assert records["finetune_bp4d_au"]["status"] == "ran" and records["fusion_va_table6_4"]["status"] == "ran"

    dirs = PipelineDirs(str(root))
    markdown = (root / "report" / "report.md").read_text()
    table = next(t for t in report.read_tables(markdown) if t.title.startswith("Table 6"))
    assert [r["row"] for r in table.records()] == ["3", "4"]
    for record in table.records():
        number = int(record["row"])
        assert record["BP4D_AU"] == ("✓" if number == 4 else "×") and record["Hubert"] == record["BP4D_AU"]
        for task in tasks.TASKS.values():
            scores = json.loads((pathlib.Path(dirs.fusion(task.key, f"table6_{number}")) / "scores.json").read_text())
            assert float(record[task.name]) == pytest.approx(scores["heldout"]["official"]["metric"], abs=5e-5)
            assert float(record[f"{task.name} paper"]) == table6.ROWS[number].paper[task.name]
    encoders = next(t for t in report.read_tables(markdown) if t.title.startswith("Encoders fine-tuned"))
    assert [r["encoder"] for r in encoders.records()] == ["affn_EXPR", "affn_VA", "raf_EXPR", "BP4D_AU"]
    assert next(r for r in encoders.records() if r["encoder"] == "BP4D_AU")["task labels it lacks"] == "AU25, AU26"
    assert report.check_report(dirs, markdown, tasks=("au", "expr", "va")) == []
    cell = table.rows[0][table.header.index("EXPR")]
    tampered = markdown.replace(
        f"| {cell} | {table.rows[0][table.header.index('EXPR paper')]} |", "| 0.9999 | 0.4971 |"
    )
    assert any(
        p.startswith("Table 6 row 3, EXPR: report '0.9999'")
        for p in report.check_report(dirs, tampered, tasks=("au", "expr", "va"))
    )
    store = root / "features"
    assert {"affectnet_va", "bp4d_au", "hubert"} <= {p.name for p in store.iterdir()}
