"""The report's Table 6 section: which feature sets each fusion combines, in the paper's layout, beside its scores.

Inputs (present only when the run had `config.table6` rows or fused another release's set):
  fusion_t_table6_<k>/scores.json   row k of Table 6 for task t: the official member's Validation_Set score
  fusion_t/scores.json              the method's own fusion, for comparison
  finetune_<source set>/best.json   the encoders fine-tuned on other releases: their own metric and Aff-Wild2's
  features/stage.json               which model files made the audio sets
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from abaw_jax import table6
from abaw_jax import tasks as task_facts
from abaw_jax.report.stage_files import field, read_json, relative
from abaw_jax.report.tables import markdown_table, number
from abaw_jax.runtime.artefacts import BEST_FILE, SCORES_FILE
from abaw_jax.runtime.pipeline_dirs import PipelineDirs

_COLUMNS = (*table6.VISUAL_SETS, *table6.AUDIO_SETS)
OFFICIAL = "official"


def _official_score(folder: pathlib.Path) -> float | None:
    path = folder / SCORES_FILE
    if not path.is_file():
        return None
    return field(read_json(path, ""), path, "heldout", OFFICIAL, "metric")


def table6_section(dirs: PipelineDirs, keys: Sequence[str], stages: dict[str, dict]) -> str:
    """The section's markdown, or '' when the run has neither Table 6 rows nor other releases' encoders."""
    rows_run = [n for n in table6.ROWS if any(pathlib.Path(dirs.table6(t, n)).is_dir() for t in keys)]
    encoders = [f for f in (pathlib.Path(dirs.finetune(s)) for s in task_facts.SOURCE_LABELS) if f.is_dir()]
    if not rows_run and not encoders:
        return ""
    parts = ["## Table 6: feature combinations\n"]
    keys = sorted(keys, key=table6.TRACK_ORDER.index)
    names = [task_facts.get_task(t).name for t in keys]
    if rows_run:
        rows = []
        for row_number in rows_run:
            row = table6.ROWS[row_number]
            marks = ["✓" if s in (*row.visual, *row.audio) else "×" for s in _COLUMNS]
            scores = []
            for key, name in zip(keys, names):
                scores += [_official_score(pathlib.Path(dirs.table6(key, row_number))), row.paper[name]]
            rows.append((row_number, *marks, *scores))
        method = [f"{name} {number(_official_score(pathlib.Path(dirs.fusion(key))))}" for key, name in zip(keys, names)]
        parts.append(
            markdown_table(
                "Table 6: the official member on the Validation_Set (face frames; its epoch picked there too), "
                "beside the paper's score",
                ["row", *(table6.paper_name(s) for s in _COLUMNS), *(h for n in names for h in (n, f"{n} paper"))],
                rows,
                "`fusion_<task>_table6_<row>/scores.json` `heldout.official.metric`; every row also fuses the "
                "task's own Aff-Wild2 set (the paper's aff2_<task>). The fusion job writes no per-video statistics, "
                "so these have no interval. For comparison, the method's own fusion (official member, the task's "
                f"configured sets): {', '.join(method)}.",
            )
        )
        parts.append(_audio_models_line(stages, rows_run))
    if encoders:
        parts.append(_encoders_table(encoders))
    return "\n".join(parts)


def _audio_models_line(stages: dict[str, dict], rows_run: Sequence[int]) -> str:
    kinds = [k for k in table6.AUDIO_SETS if any(k in table6.ROWS[n].audio for n in rows_run)]
    if not kinds:
        return ""
    models = stages.get("features", {}).get("config", {}).get("audio_models", {})
    listed = ", ".join(f"{table6.paper_name(k)} from `{models.get(k) or 'unknown'}`" for k in kinds)
    return f"Audio encoders of these rows: {listed} (the features stage's config.audio_models).\n"


def _encoders_table(folders: Sequence[pathlib.Path]) -> str:
    rows = []
    for folder in folders:
        source = task_facts.SOURCE_LABELS[folder.name.removeprefix("finetune_")]
        best_path = folder / BEST_FILE
        best = read_json(best_path, "") if best_path.is_file() else {}
        rows.append(
            (
                source.paper_name,
                source.source,
                source.task,
                ", ".join(source.missing) or "none",
                best.get("metric"),
                best.get("affwild2_metric"),
                best.get("step"),
            )
        )
    return markdown_table(
        "Encoders fine-tuned on other releases (stage 2)",
        ["encoder", "release", "task", "task labels it lacks", "own metric", "Aff-Wild2 validation", "best step"],
        rows,
        f"`{relative(folders[0] / BEST_FILE)}` and the others' (`metric`: the release's own evaluation split, "
        "averaged over the labels it has; `affwild2_metric`: the same model on Aff-Wild2's Validation_Set over "
        "those labels)",
    )
