"""Building the report's markdown tables from the stage files (`report.stage_files`), and reading them back.

Every number is copied from a file a stage wrote, printed as the evaluate job prints it (fractions with 4
decimals), except the 95% intervals, which `report.bootstrap` computes from evaluate's per-video statistics
(`per_video.json`): one interval per score of Tables 1-3, Table 5, the summary's out-of-fold and test scores.
`read_tables(markdown)` parses a report's tables back (the check and the tests use it).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from abaw_jax.report import bootstrap
from abaw_jax.report.stage_files import TaskFiles, field, relative
from abaw_jax.runtime.artefacts import PER_VIDEO_FILE
from abaw_jax.runtime.pipeline_dirs import flat_settings
from abaw_jax.runtime.telemetry import format_duration

MISSING = "—"
TABLE_NUMBER = {"AU": 1, "EXPR": 2, "VA": 3}
WITH_AUDIO, VISUAL_ONLY = "visual + audio", "visual only"
SUBMISSION_ROW = "submission (ensemble as configured)"
CI = "95% CI"
ALL_FRAMES, FACE_FRAMES = "Avg. (all annotated frames)", "Avg. (face frames)"
# Settings shown per stage in the header, when the stage's config has them (dotted keys of the nested config).
STAGE_KEYS = {
    "mae": ("model.size", "model.image_size", "model.mask_ratio", "batch_size", "num_epochs", "total_steps", "base_lr"),
    "finetune": (
        "task",
        "model.size",
        "model.image_size",
        "batch_size",
        "num_epochs",
        "total_steps",
        "base_lr",
        "layer_decay",
    ),
    "features": ("sets", "audio", "static_predictions"),
    "fusion": (
        "task",
        "members",
        "visual_sets",
        "audio_sets",
        "num_epochs",
        "batch_clips",
        "clip_len",
        "learning_rate",
    ),
    "evaluate": ("task", "ensemble.method", "ensemble.reaction_routing", "scene_routing", "static_predictions"),
}


@dataclasses.dataclass
class Table:
    """One markdown table of the report: the heading above it, its header and its rows (cells as text)."""

    title: str
    header: list[str]
    rows: list[list[str]]

    def records(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, row)) for row in self.rows]


def read_tables(markdown: str) -> list[Table]:
    """Every pipe table of `markdown`, titled by the closest heading (`#`...) above it, in order."""
    tables: list[Table] = []
    title, lines = "", markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                row = _cells(lines[i].strip())
                if len(row) != len(header):
                    raise ValueError(f"table {title!r}, line {i + 1}: {len(row)} cells, the header has {len(header)}")
                rows.append(row)
                i += 1
            tables.append(Table(title, header, rows))
            continue
        i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def markdown_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], source: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(number(v) for v in row) + " |" for row in rows]
    if source:
        lines += ["", f"Source: {source}"]
    return "\n".join(lines) + "\n"


def release_line(stages: dict[str, dict]) -> str:
    for stage in stages.values():
        data = stage.get("config", {}).get("data") if isinstance(stage.get("config"), dict) else None
        if isinstance(data, dict) and "root" in data:  # a release config; MAE's `data` holds face shards
            if not data.get("root"):
                return (
                    f"the synthetic release ({data.get('synthetic_videos', '?')} videos x "
                    f"{data.get('synthetic_frames_per_video', '?')} frames, seed {data.get('synthetic_seed', '?')}"
                    ", built in the cache)"
                )
            return f"Aff-Wild2 at {data['root']}"
    return "unknown (no stage.json with a config.data section)"


def _settings_line(name: str, config: Any) -> str:
    if not isinstance(config, dict):
        return MISSING
    flat = flat_settings(config)
    kind = next((k for k in STAGE_KEYS if name.startswith(k)), "")
    shown = []
    for key in STAGE_KEYS.get(kind, ()):
        if key in flat:
            value = flat[key]
            value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            shown.append(f"{key}={value}" if value != "" else f"{key}=''")
    return " ".join(shown) or MISSING


def stages_section(folders: Sequence[pathlib.Path], stages: dict[str, dict]) -> str:
    if not stages:
        return (
            "## Stages\n\nNo stage.json in any stage folder: the stages' settings and wall times are unknown "
            "(the stage jobs were run one by one, not by the pipeline).\n"
        )
    rows = []
    for folder in folders:
        if folder.name in stages:
            stage = stages[folder.name]
            seconds = stage.get("seconds")
            rows.append(
                (
                    folder.name,
                    _settings_line(folder.name, stage.get("config")),
                    "yes" if stage.get("complete") else "no",
                    format_duration(seconds) if isinstance(seconds, (int, float)) else MISSING,
                )
            )
        elif folder.is_dir():
            rows.append((folder.name, "no stage.json", MISSING, MISSING))
    seconds = [s["seconds"] for s in stages.values() if isinstance(s.get("seconds"), (int, float))]
    if seconds:
        rows.append(("total", f"{len(seconds)} timed stages", "", format_duration(sum(seconds))))
    return "## Stages\n\n" + markdown_table("Stage settings", ["stage", "settings", "complete", "wall time"], rows)


def training_rows(name: str, records: list[dict], best: dict | None) -> tuple:
    losses = [r for r in records if "loss" in r]
    return (
        name,
        losses[-1]["step"] if losses else MISSING,
        losses[0]["loss"] if losses else None,
        losses[-1]["loss"] if losses else None,
        best.get("metric") if best else None,
        best.get("step") if best else MISSING,
    )


# Per-video statistics and intervals.


def row_key(setting: str) -> str:
    """The per_video.json key of a Table 5 row."""
    return "test_metric" if setting == SUBMISSION_ROW else f"ablation/{setting}"


def statistics(per_video: dict | None, key: str) -> tuple[list[str], np.ndarray] | None:
    """(videos, statistics) of one score in a per_video.json, None when it has none."""
    entry = (per_video or {}).get(key)
    if entry is None:
        return None
    return list(entry["videos"]), np.asarray(entry["statistics"], np.float64)


def interval_cell(per_video: dict | None, key: str) -> str:
    found = statistics(per_video, key)
    return MISSING if found is None else bootstrap.format_interval(*bootstrap.score_interval(found[1]))


# Table 5.


def ablation_settings(files: TaskFiles) -> list[str]:
    settings = [r["setting"] for r in files.results["ablation"]]
    if files.visual is not None:
        settings += [r["setting"] for r in files.visual.get("ablation", []) if r["setting"] not in settings]
    return settings


def ablation_value(results: dict | None, setting: str) -> float | None:
    if results is None:
        return None
    if setting == SUBMISSION_ROW:
        return results.get("test_metric")
    return next((r["metric"] for r in results.get("ablation", []) if r["setting"] == setting), None)


def ablation_columns(files: TaskFiles) -> list[tuple[str, dict, dict]]:
    """(column, results.json, per_video.json) of each ensemble variant: with audio, and visual only if run."""
    columns = [(WITH_AUDIO, files.results, files.per_video)]
    if files.visual is not None:
        columns.append((VISUAL_ONLY, files.visual, files.visual_per_video))
    return columns


def setting_set(setting: str, ablation_set: str) -> str:
    """The set a Table 5 row is scored on: the static/TMF rows name theirs, the others the ablation set."""
    for name in ("Validation_Set", "test"):
        if setting.endswith(f"({name})"):
            return name if name == "Validation_Set" else ablation_set
    return ablation_set


def table5(files: TaskFiles) -> str:
    name = files.task.name
    columns = ablation_columns(files)
    settings = ablation_settings(files)
    if files.results["test_metric"] is not None:
        settings.append(SUBMISSION_ROW)
    ablation_set = files.results["ablation_set"]
    rows = []
    for s in settings:
        cells = []
        for _, results, per_video in columns:
            value = ablation_value(results, s)
            cells += [value, MISSING if value is None else interval_cell(per_video, row_key(s))]
        rows.append((s, setting_set(s, ablation_set), *cells))
    source = (
        f"`{relative(files.paths['results'])}` `ablation` (and `test_metric` for the submission row), intervals "
        f"from `{relative(files.paths['per_video'])}`"
        + (f"; `evaluate_{name.lower()}_visual/` for {VISUAL_ONLY}" if files.visual is not None else "")
    )
    return markdown_table(
        f"Table 5 ({name}): ablation, {files.task.metric_name}, all annotated frames",
        ["setting", "set", *[h for c, _, _ in columns for h in (c, f"{c} {CI}")]],
        rows,
        source,
    )


# Tables 1-3, tuning, fusion members.


def tables_1_3(files: TaskFiles) -> str:
    task, results, path = files.task, files.results, files.paths["results"]
    number = TABLE_NUMBER[task.name]
    parts = []
    for stage, title in (("before", "raw outputs"), ("after", "after post-processing")):
        rows = []
        for member, row in results["tables"].items():
            scores = field(row, path, stage)
            rows.append(
                (
                    member,
                    row["tracks"],
                    scores["frames"],
                    *scores["per_class"],
                    scores["metric"],
                    interval_cell(files.per_video, f"tables/{member}/{stage}"),
                    scores["metric_face_frames"],
                )
            )
        parts.append(
            markdown_table(
                f"Table {number} ({task.name}): {task.metric_name}, each member on its own held-out tracks "
                f"(which also picked its epoch), {title}",
                ["member", "tracks", "frames", *task.label_names, ALL_FRAMES, f"{ALL_FRAMES} {CI}", FACE_FRAMES],
                rows,
                f"`{relative(path)}` `tables.<member>.{stage}`; intervals from "
                f"`{relative(files.paths['per_video'])}` `tables/<member>/{stage}`",
            )
        )
    steps = field(results, path, "tuning", "steps")
    parts.append(
        markdown_table(
            f"Tuning ({task.name}): post-processing tuned on the out-of-fold predictions, all annotated frames",
            ["step", "value", "before", "after"],
            [
                (
                    s["step"],
                    " ".join(f"{v:g}" for v in (s["value"] if isinstance(s["value"], list) else [s["value"]])),
                    s["before"],
                    s["after"],
                )
                for s in steps
            ],
            f"`{relative(path)}` `tuning.steps`",
        )
    )
    scores, spath = files.fusion_scores, files.paths["fusion_scores"]
    members = field(scores, spath, "members")
    heldout, test = field(scores, spath, "heldout"), field(scores, spath, "test")
    rows = [
        (
            m,
            len(info["train"]),
            len(info["heldout"]),
            info["best_step"],
            heldout.get(m, {}).get("metric"),
            test.get(m, {}).get("metric"),
        )
        for m, info in members.items()
    ]
    parts.append(
        markdown_table(
            f"Fusion members ({task.name}): {task.metric_name} on face frames, at the epoch picked on the held-out "
            "tracks, and on the test set",
            ["member", "train tracks", "held-out tracks", "best step", "held-out (face frames)", "test (face frames)"],
            rows,
            f"`{relative(spath)}` (`members`, `heldout.<member>.metric`, `test.<member>.metric`); the fusion job "
            "writes no per-video statistics, so these have no interval",
        )
    )
    return "\n".join(parts)


# Summary and how the numbers were obtained.

SUMMARY_HEADER = [
    "task",
    "metric",
    "fine-tuned encoder (eval set, face frames; picked its step)",
    "TMF official (held-out tracks, all annotated frames, raw)",
    "out-of-fold (post-processed, all annotated frames)",
    f"out-of-fold {CI}",
    "test (submission, all annotated frames)",
    f"test {CI}",
]


def summary_table(all_files: Sequence[TaskFiles]) -> str:
    rows = [
        (
            f.task.name,
            f.task.metric_name,
            f.finetune_best.get("metric"),
            f.results["tables"].get("official", {}).get("before", {}).get("metric"),
            f.results["tables"].get("out-of-fold", {}).get("after", {}).get("metric"),
            interval_cell(f.per_video, "tables/out-of-fold/after"),
            f.results["test_metric"],
            MISSING if f.results["test_metric"] is None else interval_cell(f.per_video, "test_metric"),
        )
        for f in all_files
    ]
    return markdown_table(
        "Summary",
        SUMMARY_HEADER,
        rows,
        "`finetune_<task>/best.json` `metric`; `evaluate_<task>/results.json` `tables.official.before.metric`, "
        f"`tables.out-of-fold.after.metric`, `test_metric` (test scores need the release's test labels); intervals "
        f"from `evaluate_<task>/{PER_VIDEO_FILE}`",
    )


def method_section(all_files: Sequence[TaskFiles]) -> str:
    """What selected, tuned and scored each number, which frames count, and how intervals and verdicts are made."""
    sets = "; ".join(f"{f.task.name}: {f.results['ablation_set']}" for f in all_files)
    return f"""## How each number was obtained

- **Frames.** "All annotated frames" are every frame with a valid label, as the organisers score: frames without
  a detected face get predictions filled in from the nearest face frames (`eval.coverage`). "Face frames" are
  only the frames with a detected face. A score is one of the two and its column says which; the fine-tuned
  encoder's and the fusion members' own scores count face frames (their jobs see only face crops), so they differ
  from the all-frames scores of the same predictions in Tables 1-3 and 5.
- **Fine-tuned encoder.** Its best step is picked on its evaluation set's face frames, and the summary's value is
  that selection score (selected and scored on the same frames). Table 5's static row scores the same encoder's
  per-frame predictions on all annotated frames.
- **Fusion members, Tables 1-3.** Each member's epoch is picked on its own held-out tracks, and Tables 1-3 score
  it on those same tracks: optimistic. The out-of-fold row predicts every labelled track by the fold member that
  held it out (whose epoch that track helped pick).
- **Post-processing.** The smoothing sigma, then the AU thresholds or EXPR class biases, are tuned on the
  out-of-fold predictions, and the out-of-fold "after" row is scored on those same tracks: optimistic.
- **Table 5 and the claims** are scored on the ablation set ({sets}), where nothing was picked or tuned when it is
  the test set; rows marked (Validation_Set) are scored there. "smoothing" is the tuned sigma alone;
  "smoothing + thresholds" / "smoothing + biases" add the tuned AU thresholds / EXPR biases. The submission row
  is the test score of the submitted labels.
- **Intervals.** Each {CI} is a bootstrap over videos: {bootstrap.RESAMPLES} resamples of the scored videos with
  replacement (seed {bootstrap.SEED}), the metric recomputed on each resample's pooled frames (F1 and CCC are not
  means of per-video scores), and the 2.5th-97.5th percentiles. One seed per stage: the spread over training
  seeds is not measured by this run.
- **Verdicts.** A claim's difference gets a paired interval (both sides scored on the same resampled videos):
  "{bootstrap.HOLDS}" when it lies above 0, "{bootstrap.DOES_NOT_HOLD}" when below, "{bootstrap.UNDECIDED}" when it
  contains 0, and "{bootstrap.TOO_FEW}" when the set has fewer than {bootstrap.MIN_VIDEOS} videos.
"""
