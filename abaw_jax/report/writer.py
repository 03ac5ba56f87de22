"""The paper-style report of one pipeline run: how each number was obtained, Tables 1-3 and 5 with intervals, the
paper's claims decided from paired intervals, figures.

`write_report(PipelineDirs(root), tasks=("au", "expr", "va"))` writes `<root>/report/report.md` and
`<root>/report/figures/*.png` and returns the markdown. Inputs: `report.stage_files`; optional inputs that are
absent drop their rows or columns, with a note saying so.
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Sequence

from abaw_jax import tasks as task_facts
from abaw_jax.data import synthetic
from abaw_jax.report import claims, feature_sets, figures, stage_files, tables
from abaw_jax.runtime.artefacts import METRICS_FILE
from abaw_jax.runtime.pipeline_dirs import STAGE_FILE, PipelineDirs

REPORT_FILE = "report.md"


def synthetic_premises(stages: dict[str, dict]) -> synthetic.Premises | None:
    """The premises built into the run's synthetic release (a release config with an empty root): those of its
    `synthetic_preset` when the config names one of `synthetic.PRESETS`, else the default generator's; None for
    another release or when no stage.json says."""
    for stage in stages.values():
        data = stage.get("config", {}).get("data") if isinstance(stage.get("config"), dict) else None
        if isinstance(data, dict) and "root" in data:  # a release config; MAE's `data` holds face shards
            if data["root"]:
                return None
            preset = synthetic.PRESETS.get(str(data.get("synthetic_preset", "")))
            return preset.premises if preset else synthetic.Premises()
    return None


def write_report(dirs: PipelineDirs, *, tasks: Sequence[str]) -> str:
    """Writes `<dirs.report>/report.md` and its figures from the stage files of `tasks`; returns the markdown."""
    keys = stage_files.task_keys(tasks)
    not_run = [t for t in task_facts.TASK_KEYS if t not in keys]
    mae = pathlib.Path(dirs.mae)
    mae_records = stage_files.read_jsonl(mae / METRICS_FILE, "MAE loss curve")
    all_files = [stage_files.read_task(dirs, key) for key in keys]
    folders = stage_files.stage_folders(dirs, keys)
    stages = {f.name: stage_files.read_json(f / STAGE_FILE, "") for f in folders if (f / STAGE_FILE).is_file()}
    report = pathlib.Path(dirs.report)
    figure_dir = report / figures.FIGURES
    if figure_dir.exists():
        shutil.rmtree(figure_dir)  # a rerun must not keep figures of tasks or tracks it no longer has
    figure_dir.mkdir(parents=True)

    notes = [f"{t.upper()}: not run (no rows for it)." for t in not_run]
    for files in all_files:
        if files.visual is None:
            dropped = f"the {tables.VISUAL_ONLY} column" + (
                " and the audio claim are" if files.task.name == "VA" else " is"
            )
            notes.append(
                f"{files.task.name}: no visual-only variant ({stage_files.relative(files.paths['visual'])} absent): "
                f"{dropped} dropped."
            )
        if files.per_video is None:
            notes.append(
                f"{files.task.name}: no per-video statistics ({stage_files.relative(files.paths['per_video'])} "
                "absent: evaluate ran before it wrote them; rerun evaluate): no intervals, claims undecided."
            )
        if not any(r["setting"].startswith("static ") for r in files.results["ablation"]):
            notes.append(
                f"{files.task.name}: no static predictions in the ablation (evaluate ran without "
                "static_predictions): the TMF rows and claim are dropped."
            )
    figure_list = figures.mae_figures(mae, mae_records, figure_dir, notes)
    figure_list.append(figures.finetune_figure(all_files, figure_dir))
    for files in all_files:
        figure_list.append(figures.fusion_figure(files, figure_dir))
    for files in all_files:
        figure_list += figures.timelines(files, figure_dir, notes)

    parts = [
        f"# Report of the pipeline run in {dirs.root}\n",
        f"Release: {tables.release_line(stages)}. Tasks: {', '.join(f.task.name for f in all_files)}. "
        "Scores are fractions (F1 in [0, 1], CCC in [-1, 1]) with 4 decimals, copied from the stage files "
        f"named under each table; the {tables.CI} intervals are computed from evaluate's per-video statistics.\n",
    ]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    parts.append(tables.method_section(all_files))
    parts.append(tables.stages_section(folders, stages))
    parts.append("## Results\n\n" + tables.summary_table(all_files))
    training = [tables.training_rows("mae", mae_records, None)]
    training += [
        tables.training_rows(f"finetune_{f.task.name.lower()}", f.finetune_metrics, f.finetune_best) for f in all_files
    ]
    parts.append(
        tables.markdown_table(
            "Training (stages 1 and 2)",
            ["stage", "last step", "first loss", "last loss", "best eval metric", "best step"],
            training,
            "`mae/metrics.jsonl`, `finetune_<task>/metrics.jsonl` (`loss`), `finetune_<task>/best.json`",
        )
    )
    parts.append("## Tables 1-3: each member on its own held-out tracks\n")
    parts += [tables.tables_1_3(f) for f in all_files]
    parts.append("## Table 5: what each part of the method adds\n")
    parts += [tables.table5(f) for f in all_files]
    section = feature_sets.table6_section(dirs, keys, stages)
    if section:
        parts.append(section)
    parts.append(claims.claims_section(all_files, not_run, synthetic_premises(stages)))
    parts.append(
        "## Figures\n\n"
        + "\n\n".join(f"![{caption}]({figures.FIGURES}/{path.name})" for caption, path in figure_list)
        + "\n"
    )
    text = "\n".join(parts)
    (report / REPORT_FILE).write_text(text, encoding="utf-8")
    return text
