"""The paper-style report of one pipeline run: Tables 1-3 and 5, the paper's claims checked in sign, figures.

`write_report(PipelineDirs(root), tasks=("au", "expr", "va"))` writes `<root>/report/report.md` and
`<root>/report/figures/*.png` and returns the markdown. Every number in it is copied from a file a stage wrote
(nothing is recomputed; the claims' `change` is the difference of two copied numbers), printed as the evaluate job
prints it: fractions with 4 decimals.

Inputs, per task t of the run (a missing required file is a `ReportError` naming it):
  mae/metrics.jsonl                        required: MAE loss curve
  mae/reconstructions/step_*.png           optional: reconstruction grids
  finetune_t/metrics.jsonl, best.json      required: fine-tuning loss and eval metric, best step
  fusion_t/scores.json, metrics.jsonl      required: members' held-out / test scores, losses and held-out curves
  evaluate_t/results.json                  required: `tables` (Tables 1-3), `tuning`, `ablation`, `test_metric`
  evaluate_t/plots/*.png                   optional: timelines of predictions vs labels
  evaluate_t_visual/results.json           optional: the visual-only ensemble (the audio ablation)
  <stage folder>/stage.json                optional: {"stage", "config", "fingerprint", "complete"[, "seconds"]}
Optional inputs that are absent drop their rows or columns, with a note saying so.

The claims section rests each of the paper's claims on two cells of a Table 5 (named as `setting [column]`):
"holds" when the cell with the part is higher than the cell without it, else "does not hold on this run"; SDD's
claims are "not measurable" when evaluate's SDD row routed no track of the set (`reaction_tracks` 0), since
the two cells are then the same predictions.
With M the configured ensemble (vote / soft / mean) and SDD in both cells when the run routes reaction videos:
  TMF helps (each task)       static fine-tuned encoder per frame vs TMF official, both on Validation_Set
  audio helps VA              M [+ SDD] + smoothing: visual only vs visual + audio
  SDD helps EXPR and VA       M + smoothing vs M + SDD + smoothing
  smoothing helps (each)      M [+ SDD] vs M [+ SDD] + smoothing (the tuned sigma and AU thresholds / EXPR biases)
  the ensemble helps (each)   single member (mean of the general members) vs M, both post-processed, without SDD

`read_tables(markdown)` parses the report's tables back; `check_report(dirs, markdown, tasks=...)` compares every
number in them with the file it comes from and returns the mismatches (the end-to-end test's check).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import shutil
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from PIL import Image  # noqa: E402

from abaw_jax import tasks as task_facts  # noqa: E402
from abaw_jax.runtime.errors import ExplainedError  # noqa: E402
from abaw_jax.runtime.pipeline_dirs import STAGE_FILE, PipelineDirs, flat_settings  # noqa: E402
from abaw_jax.runtime.telemetry import format_duration  # noqa: E402

REPORT_FILE = "report.md"
FIGURES = "figures"
MISSING = "—"
TABLE_NUMBER = {"AU": 1, "EXPR": 2, "VA": 3}
WITH_AUDIO, VISUAL_ONLY = "visual + audio", "visual only"
SUBMISSION_ROW = "submission (ensemble as configured)"
HOLDS, DOES_NOT_HOLD = "holds", "does not hold on this run"
NO_REACTION_TRACKS = "not measurable: no reaction track in the set"
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


class ReportError(ExplainedError, ValueError):
    """A required stage file is missing or not in the layout its stage writes; the message names it."""


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


# ---------------------------------------------------------------------------------------------------------------
# Reading the stage files.


def _read_json(path: pathlib.Path, what: str) -> Any:
    if not path.is_file():
        raise ReportError(f"{path}: missing; the report needs it ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _read_jsonl(path: pathlib.Path, what: str) -> list[dict]:
    if not path.is_file():
        raise ReportError(f"{path}: missing; the report needs it ({what})")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}: line {number}: not valid JSON ({e.msg})") from None
    return records


def _key(data: Any, path: pathlib.Path, *keys: str | int) -> Any:
    """data[k1][k2]... with an error naming the file and the missing key."""
    node = data
    for depth, key in enumerate(keys):
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            dotted = ".".join(map(str, keys[: depth + 1]))
            raise ReportError(f"{path}: no {dotted!r} (expected the layout its stage writes)") from None
    return node


@dataclasses.dataclass
class TaskFiles:
    """What the stages wrote for one task, read once."""

    task: task_facts.Task
    finetune_metrics: list[dict]
    finetune_best: dict
    fusion_scores: dict
    fusion_metrics: list[dict]
    results: dict
    visual: dict | None
    paths: dict[str, pathlib.Path]


def _read_task(dirs: PipelineDirs, key: str) -> TaskFiles:
    task = task_facts.get_task(key)
    finetune, fusion = pathlib.Path(dirs.finetune(key)), pathlib.Path(dirs.fusion(key))
    evaluate, visual = pathlib.Path(dirs.evaluate(key)), pathlib.Path(dirs.evaluate(key, "visual"))
    paths = {
        "finetune_metrics": finetune / "metrics.jsonl",
        "finetune_best": finetune / "best.json",
        "fusion_scores": fusion / "scores.json",
        "fusion_metrics": fusion / "metrics.jsonl",
        "results": evaluate / "results.json",
        "visual": visual / "results.json",
        "plots": evaluate / "plots",
    }
    results = _read_json(paths["results"], f"{task.name} Tables 1-3 and 5")
    for name in ("tables", "tuning", "ablation", "ablation_set", "test_metric"):
        _key(results, paths["results"], name)
    return TaskFiles(
        task=task,
        finetune_metrics=_read_jsonl(paths["finetune_metrics"], f"{task.name} fine-tuning curves"),
        finetune_best=_read_json(paths["finetune_best"], f"{task.name} fine-tuned encoder's best step"),
        fusion_scores=_read_json(paths["fusion_scores"], f"{task.name} fusion members' scores"),
        fusion_metrics=_read_jsonl(paths["fusion_metrics"], f"{task.name} fusion curves"),
        results=results,
        visual=_read_json(paths["visual"], "") if paths["visual"].is_file() else None,
        paths=paths,
    )


def _task_keys(tasks: Sequence[str]) -> list[str]:
    keys = [str(t).lower() for t in tasks]
    unknown = [t for t in keys if t not in task_facts.TASK_KEYS]
    if unknown or not keys:
        raise ReportError(f"tasks must be a non-empty subset of {list(task_facts.TASK_KEYS)}, got {list(tasks)!r}")
    return [t for t in task_facts.TASK_KEYS if t in keys]


def _stage_folders(dirs: PipelineDirs, keys: Sequence[str]) -> list[pathlib.Path]:
    folders = [dirs.mae, *[dirs.finetune(t) for t in keys], dirs.features]
    folders += [f(t, v) for f in (dirs.fusion, dirs.evaluate) for t in keys for v in ("", "visual")]
    return [pathlib.Path(f) for f in folders]


# ---------------------------------------------------------------------------------------------------------------
# Markdown.


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _markdown_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], source: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(v) for v in row) + " |" for row in rows]
    if source:
        lines += ["", f"Source: {source}"]
    return "\n".join(lines) + "\n"


def _release_line(stages: dict[str, dict]) -> str:
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


def _stages_section(folders: Sequence[pathlib.Path], stages: dict[str, dict]) -> str:
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
    return "## Stages\n\n" + _markdown_table("Stage settings", ["stage", "settings", "complete", "wall time"], rows)


def _training_rows(name: str, records: list[dict], best: dict | None) -> tuple:
    losses = [r for r in records if "loss" in r]
    return (
        name,
        losses[-1]["step"] if losses else MISSING,
        losses[0]["loss"] if losses else None,
        losses[-1]["loss"] if losses else None,
        best.get("metric") if best else None,
        best.get("step") if best else MISSING,
    )


def _ablation_settings(files: TaskFiles) -> list[str]:
    settings = [r["setting"] for r in files.results["ablation"]]
    if files.visual is not None:
        settings += [r["setting"] for r in files.visual.get("ablation", []) if r["setting"] not in settings]
    return settings


def _ablation_value(results: dict | None, setting: str) -> float | None:
    if results is None:
        return None
    if setting == SUBMISSION_ROW:
        return results.get("test_metric")
    return next((r["metric"] for r in results.get("ablation", []) if r["setting"] == setting), None)


def _ablation_columns(files: TaskFiles) -> list[tuple[str, dict]]:
    return [(WITH_AUDIO, files.results)] + ([(VISUAL_ONLY, files.visual)] if files.visual is not None else [])


def _table5(files: TaskFiles) -> str:
    name = files.task.name
    columns = _ablation_columns(files)
    settings = _ablation_settings(files)
    if files.results["test_metric"] is not None:
        settings.append(SUBMISSION_ROW)
    ablation_set = files.results["ablation_set"]
    rows = [
        (
            s,
            "Validation_Set" if "(Validation_Set)" in s else ablation_set,
            *[_ablation_value(results, s) for _, results in columns],
        )
        for s in settings
    ]
    source = f"`{_relative(files.paths['results'])}` `ablation` (and `test_metric` for the submission row)" + (
        f"; `{_relative(files.paths['visual'])}` for {VISUAL_ONLY}" if files.visual is not None else ""
    )
    return _markdown_table(
        f"Table 5 ({name}): ablation, {files.task.metric_name}",
        ["setting", "set", *[c for c, _ in columns]],
        rows,
        source,
    )


def _relative(path: pathlib.Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _parse_setting(setting: str) -> tuple[str, bool, bool] | None:
    """(combiner, with SDD, with smoothing) of an ensemble row of evaluate's ablation; None for other rows."""
    if setting.startswith(("single member", "static ", "TMF ")) or setting == SUBMISSION_ROW:
        return None
    combiner, *parts = setting.split(" + ")
    return combiner, "SDD" in parts, "smoothing" in parts


@dataclasses.dataclass
class Claim:
    order: int  # the claim's place in the paper's list (rows sort by it, then by task)
    claim: str
    task: str
    without: tuple[str, str] | None  # (Table 5 setting, column)
    with_: tuple[str, str] | None
    reason: str = ""  # why it cannot be checked, when a side is missing
    unmeasurable: bool = False  # both cells score the same predictions (SDD routed no track)


def _claims(files: TaskFiles) -> list[Claim]:
    """The paper's claims that concern this task, each on two Table 5 cells."""
    name, results = files.task.name, files.results
    settings = [r["setting"] for r in results["ablation"]]
    ensemble = {p: s for s in settings if (p := _parse_setting(s)) is not None}
    method = next(iter(ensemble))[0] if ensemble else ""
    routed = any(sdd for (c, sdd, _) in ensemble if c == method)
    cell = lambda key, column=WITH_AUDIO: (ensemble[key], column) if key in ensemble else None
    static = next((s for s in settings if s.startswith("static ")), None)
    tmf = next((s for s in settings if s.startswith("TMF ")), None)
    single = next((s for s in settings if s.startswith("single member")), None)
    full = (method, routed, True)
    claims = [
        Claim(
            0,
            "TMF helps (static fine-tuned encoder -> TMF)",
            name,
            (static, WITH_AUDIO) if static else None,
            (tmf, WITH_AUDIO) if tmf else None,
            "" if static else "no static predictions (evaluate ran without static_predictions)",
        )
    ]
    if name == "VA":
        visual_has = files.visual is not None and _ablation_value(files.visual, ensemble.get(full, "")) is not None
        claims.append(
            Claim(
                1,
                "audio helps VA (visual only -> visual + audio)",
                name,
                cell(full, VISUAL_ONLY) if visual_has else None,
                cell(full),
                "" if visual_has else f"no visual-only variant ({_relative(files.paths['visual'])} absent)",
            )
        )
    if name in ("EXPR", "VA"):
        with_sdd = cell((method, True, True))
        claims.append(
            Claim(
                2,
                f"SDD helps {name} (general members -> reaction videos routed to the reaction member)",
                name,
                cell((method, False, True)),
                with_sdd,
                "" if routed else "scene routing was off (scene_routing=none)",
                with_sdd is not None and _routes_no_track(results, with_sdd[0]),
            )
        )
    claims.append(
        Claim(
            3,
            "smoothing helps (post-processing tuned on out-of-fold predictions)",
            name,
            cell((method, routed, False)),
            cell(full),
        )
    )
    claims.append(
        Claim(
            4,
            "the ensemble helps (single member -> ensemble, both post-processed, no SDD)",
            name,
            (single, WITH_AUDIO) if single else None,
            cell((method, False, True)),
        )
    )
    return claims


def _routes_no_track(results: dict, setting: str) -> bool:
    """Whether evaluate's ablation row `setting` routed no track to the reaction member."""
    row = next((r for r in results.get("ablation", []) if r["setting"] == setting), {})
    return row.get("reaction_tracks") == 0


def _verdict(before: float, after: float, unmeasurable: bool) -> str:
    if unmeasurable:
        return NO_REACTION_TRACKS
    return HOLDS if after > before else DOES_NOT_HOLD


def _claims_section(all_files: Sequence[TaskFiles], not_run: Sequence[str]) -> str:
    rows, unchecked = [], []
    claims = sorted(((claim, files) for files in all_files for claim in _claims(files)), key=lambda c: c[0].order)
    for claim, files in claims:
        if claim.without is None or claim.with_ is None:
            unchecked.append(f"- {claim.claim}, {claim.task}: not checked: {claim.reason or 'a row is missing'}.")
            continue
        columns = dict(_ablation_columns(files))
        before = _ablation_value(columns[claim.without[1]], claim.without[0])
        after = _ablation_value(columns[claim.with_[1]], claim.with_[0])
        rows.append(
            (
                claim.claim,
                claim.task,
                f"{claim.without[0]} [{claim.without[1]}]",
                f"{claim.with_[0]} [{claim.with_[1]}]",
                before,
                after,
                f"{after - before:+.4f}",
                _verdict(before, after, claim.unmeasurable),
            )
        )
    text = (
        "## The paper's claims on this run\n\nEach claim rests on two cells of the task's Table 5 "
        "(`setting [column]`); it holds when the score with the part is higher than without it. SDD cannot "
        "be measured on a set in which no track is a reaction video.\n\n"
    )
    text += _markdown_table(
        "Claims", ["claim", "task", "without", "with", "without score", "with score", "change", "verdict"], rows
    )
    if unchecked or not_run:
        text += "\n" + "\n".join(unchecked + [f"- {t.upper()}: not run, no claims checked." for t in not_run]) + "\n"
    return text


def _tables_1_3(files: TaskFiles) -> str:
    task, results, path = files.task, files.results, files.paths["results"]
    number = TABLE_NUMBER[task.name]
    parts = []
    for stage, title in (("before", "raw outputs"), ("after", "after post-processing")):
        rows = []
        for member, row in results["tables"].items():
            scores = _key(row, path, stage)
            rows.append(
                (
                    member,
                    row["tracks"],
                    scores["frames"],
                    *scores["per_class"],
                    scores["metric"],
                    scores["metric_face_frames"],
                )
            )
        parts.append(
            _markdown_table(
                f"Table {number} ({task.name}): {task.metric_name}, each member on its own held-out tracks, {title}",
                ["member", "tracks", "frames", *task.label_names, "Avg.", "Avg. (face frames)"],
                rows,
                f"`{_relative(path)}` `tables.<member>.{stage}`",
            )
        )
    steps = _key(results, path, "tuning", "steps")
    parts.append(
        _markdown_table(
            f"Tuning ({task.name}): post-processing tuned on the out-of-fold predictions",
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
            f"`{_relative(path)}` `tuning.steps`",
        )
    )
    scores, spath = files.fusion_scores, files.paths["fusion_scores"]
    members = _key(scores, spath, "members")
    heldout, test = _key(scores, spath, "heldout"), _key(scores, spath, "test")
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
        _markdown_table(
            f"Fusion members ({task.name}): {task.metric_name} at the best epoch on held-out tracks, and on the "
            "test set",
            ["member", "train tracks", "held-out tracks", "best step", "held-out", "test"],
            rows,
            f"`{_relative(spath)}` (`members`, `heldout.<member>.metric`, `test.<member>.metric`)",
        )
    )
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Figures.


def _save(figure, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _curve(axis, records: list[dict], key: str, label: str | None = None) -> None:
    points = [(r["step"], r[key]) for r in records if key in r]
    if points:
        axis.plot(*zip(*points), linewidth=1.0, label=label or key, marker="." if len(points) < 20 else None)


def _mae_figures(mae: pathlib.Path, records: list[dict], figures: pathlib.Path, notes: list[str]) -> list[tuple]:
    out = []
    figure, axis = plt.subplots(figsize=(5, 3))
    _curve(axis, records, "loss")
    axis.set(xlabel="step", ylabel="loss", title="MAE pretraining loss")
    out.append(("MAE pretraining loss", _save(figure, figures / "curves_mae.png")))
    grids = sorted((mae / "reconstructions").glob("step_*.png"))
    if not grids:
        notes.append(f"No MAE reconstructions ({mae / 'reconstructions'} has no step_*.png): figure dropped.")
        return out
    picked = [grids[0], grids[len(grids) // 2], grids[-1]] if len(grids) > 2 else grids
    images = [Image.open(path).convert("RGB") for path in dict.fromkeys(picked)]
    width = 4.0 * images[0].width / images[0].height
    figure, axes = plt.subplots(1, len(images), figsize=(width * len(images) + 0.4, 4.3), squeeze=False)
    for axis, path, image in zip(axes[0], dict.fromkeys(picked), images):
        axis.imshow(image)
        axis.set_title(f"step {int(path.stem.split('_')[-1])}", fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    out.append(
        (
            "MAE reconstructions (columns per step: original, masked, reconstruction)",
            _save(figure, figures / "mae_reconstructions.png"),
        )
    )
    return out


def _finetune_figure(all_files: Sequence[TaskFiles], figures: pathlib.Path) -> tuple:
    figure, axes = plt.subplots(2, len(all_files), figsize=(3.5 * len(all_files), 5), squeeze=False)
    for column, files in enumerate(all_files):
        _curve(axes[0, column], files.finetune_metrics, "loss")
        _curve(axes[1, column], files.finetune_metrics, "eval_metric")
        axes[0, column].set_title(f"fine-tuning {files.task.name}", fontsize=9)
        axes[0, column].set_ylabel("loss")
        axes[1, column].set(xlabel="step", ylabel=f"eval {files.task.metric_name.split(' (')[0]}")
    figure.tight_layout()
    return "Fine-tuning loss and evaluation metric per task", _save(figure, figures / "curves_finetune.png")


def _fusion_figure(files: TaskFiles, figures: pathlib.Path) -> tuple:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for member in files.fusion_scores["members"]:
        _curve(axes[0], files.fusion_metrics, f"loss/{member}", member)
        _curve(axes[1], files.fusion_metrics, f"heldout/{member}", member)
    name = files.task.name
    axes[0].set(xlabel="step", ylabel="loss", title=f"fusion {name}: training loss per member")
    axes[1].set(xlabel="step", ylabel=files.task.metric_name.split(" (")[0], title=f"fusion {name}: held-out")
    for axis in axes:
        axis.title.set_fontsize(9)
        if axis.lines:
            axis.legend(fontsize=6)
    figure.tight_layout()
    path = _save(figure, figures / f"curves_fusion_{name.lower()}.png")
    return f"Fusion {name}: losses and held-out metric per member", path


def _timelines(files: TaskFiles, figures: pathlib.Path, notes: list[str]) -> list[tuple]:
    plots = sorted(files.paths["plots"].glob("*.png"))
    if not plots:
        notes.append(f"{files.task.name}: no timelines ({files.paths['plots']} has no PNG): figures dropped.")
    out = []
    for path in plots:
        target = figures / f"timeline_{files.task.name.lower()}_{path.name}"
        shutil.copyfile(path, target)
        out.append((f"{files.task.name} timeline {path.stem} (out-of-fold, post-processed)", target))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The report.


def write_report(dirs: PipelineDirs, *, tasks: Sequence[str]) -> str:
    """Writes `<dirs.report>/report.md` and its figures from the stage files of `tasks`; returns the markdown."""
    keys = _task_keys(tasks)
    not_run = [t for t in task_facts.TASK_KEYS if t not in keys]
    mae = pathlib.Path(dirs.mae)
    mae_records = _read_jsonl(mae / "metrics.jsonl", "MAE loss curve")
    all_files = [_read_task(dirs, key) for key in keys]
    folders = _stage_folders(dirs, keys)
    stages = {f.name: _read_json(f / STAGE_FILE, "") for f in folders if (f / STAGE_FILE).is_file()}
    report = pathlib.Path(dirs.report)
    figures = report / FIGURES
    if figures.exists():
        shutil.rmtree(figures)  # a rerun must not keep figures of tasks or tracks it no longer has
    figures.mkdir(parents=True)

    notes = [f"{t.upper()}: not run (no rows for it)." for t in not_run]
    for files in all_files:
        if files.visual is None:
            dropped = f"the {VISUAL_ONLY} column" + (" and the audio claim are" if files.task.name == "VA" else " is")
            notes.append(
                f"{files.task.name}: no visual-only variant ({_relative(files.paths['visual'])} absent): "
                f"{dropped} dropped."
            )
        if not any(r["setting"].startswith("static ") for r in files.results["ablation"]):
            notes.append(
                f"{files.task.name}: no static predictions in the ablation (evaluate ran without "
                "static_predictions): the TMF rows and claim are dropped."
            )
    figure_list = _mae_figures(mae, mae_records, figures, notes)
    figure_list.append(_finetune_figure(all_files, figures))
    for files in all_files:
        figure_list.append(_fusion_figure(files, figures))
    for files in all_files:
        figure_list += _timelines(files, figures, notes)

    parts = [
        f"# Report of the pipeline run in {dirs.root}\n",
        f"Release: {_release_line(stages)}. Tasks: {', '.join(f.task.name for f in all_files)}. "
        "Scores are fractions (F1 in [0, 1], CCC in [-1, 1]) with 4 decimals, copied from the stage files "
        "named under each table.\n",
    ]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    parts.append(_stages_section(folders, stages))
    summary = [
        (
            f.task.name,
            f.task.metric_name,
            f.finetune_best.get("metric"),
            f.results["tables"].get("official", {}).get("before", {}).get("metric"),
            f.results["tables"].get("out-of-fold", {}).get("after", {}).get("metric"),
            f.results["test_metric"],
        )
        for f in all_files
    ]
    parts.append(
        "## Results\n\n"
        + _markdown_table(
            "Summary",
            [
                "task",
                "metric",
                "fine-tuned encoder (eval set, best step)",
                "TMF official (held-out, raw)",
                "out-of-fold (post-processed)",
                "test (submission)",
            ],
            summary,
            "`finetune_<task>/best.json` `metric`; `evaluate_<task>/results.json` `tables.official.before.metric`, "
            "`tables.out-of-fold.after.metric`, `test_metric` (test scores need the release's test labels)",
        )
    )
    training = [_training_rows("mae", mae_records, None)]
    training += [
        _training_rows(f"finetune_{f.task.name.lower()}", f.finetune_metrics, f.finetune_best) for f in all_files
    ]
    parts.append(
        _markdown_table(
            "Training (stages 1 and 2)",
            ["stage", "last step", "first loss", "last loss", "best eval metric", "best step"],
            training,
            "`mae/metrics.jsonl`, `finetune_<task>/metrics.jsonl` (`loss`), `finetune_<task>/best.json`",
        )
    )
    parts.append("## Tables 1-3: each member on its own held-out tracks\n")
    parts += [_tables_1_3(f) for f in all_files]
    parts.append("## Table 5: what each part of the method adds\n")
    parts += [_table5(f) for f in all_files]
    parts.append(_claims_section(all_files, not_run))
    parts.append(
        "## Figures\n\n" + "\n\n".join(f"![{caption}]({FIGURES}/{path.name})" for caption, path in figure_list) + "\n"
    )
    text = "\n".join(parts)
    (report / REPORT_FILE).write_text(text, encoding="utf-8")
    return text


# ---------------------------------------------------------------------------------------------------------------
# The check: every number of the tables against its file.


def _same(cell: str, expected: Any) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return cell == MISSING
    if isinstance(expected, int) and not isinstance(expected, bool):
        return cell == str(expected)
    try:
        return abs(float(cell) - float(expected)) <= 5.001e-5
    except ValueError:
        return False


def check_report(dirs: PipelineDirs, markdown: str, *, tasks: Sequence[str]) -> list[str]:
    """Mismatches between the numbers in `markdown`'s tables and the stage files of `dirs` (empty: all agree).

    Reads the files on its own (not through the writer's helpers) and also checks that every expected table is
    there, that each claim's scores are the Table 5 cells it names and that its verdict follows their sign.
    """
    problems: list[str] = []
    tables = {t.title: t for t in read_tables(markdown)}

    def table(prefix: str) -> Table | None:
        found = [t for title, t in tables.items() if title.startswith(prefix)]
        if not found:
            problems.append(f"no table titled {prefix!r}...")
        return found[0] if found else None

    def compare(where: str, record: dict[str, str], expected: dict[str, Any]) -> None:
        for column, value in expected.items():
            if column not in record:
                problems.append(f"{where}: no column {column!r}")
            elif not _same(record[column], value):
                problems.append(f"{where}, {column}: report {record[column]!r}, file {value!r}")

    summary = table("Summary")
    training = table("Training")
    claims = table("Claims")
    for key in _task_keys(tasks):
        task = task_facts.get_task(key)
        results = json.loads(pathlib.Path(dirs.evaluate(key), "results.json").read_text())
        visual_path = pathlib.Path(dirs.evaluate(key, "visual"), "results.json")
        visual = json.loads(visual_path.read_text()) if visual_path.is_file() else None
        scores = json.loads(pathlib.Path(dirs.fusion(key), "scores.json").read_text())
        best = json.loads(pathlib.Path(dirs.finetune(key), "best.json").read_text())
        lines = pathlib.Path(dirs.finetune(key), "metrics.jsonl").read_text().splitlines()
        losses = [r for r in (json.loads(x) for x in lines if x.strip()) if "loss" in r]
        if summary:
            rows = [r for r in summary.records() if r["task"] == task.name]
            if len(rows) != 1:
                problems.append(f"Summary: {len(rows)} rows for {task.name}")
            for r in rows:
                compare(
                    f"Summary {task.name}",
                    r,
                    {
                        "fine-tuned encoder (eval set, best step)": best["metric"],
                        "TMF official (held-out, raw)": results["tables"]["official"]["before"]["metric"],
                        "out-of-fold (post-processed)": results["tables"]["out-of-fold"]["after"]["metric"],
                        "test (submission)": results["test_metric"],
                    },
                )
        if training:
            for r in training.records():
                if r["stage"] == f"finetune_{key}":
                    compare(
                        f"Training {r['stage']}",
                        r,
                        {
                            "last step": losses[-1]["step"],
                            "first loss": losses[0]["loss"],
                            "last loss": losses[-1]["loss"],
                            "best eval metric": best["metric"],
                            "best step": best["step"],
                        },
                    )
        number = TABLE_NUMBER[task.name]
        for stage, suffix in (("before", "raw outputs"), ("after", "after post-processing")):
            candidates = [
                x
                for title, x in tables.items()
                if title.startswith(f"Table {number} ({task.name})") and title.endswith(suffix)
            ]
            if not candidates:
                problems.append(f"no Table {number} ({task.name}) {suffix}")
                continue
            t = candidates[0]
            if [r["member"] for r in t.records()] != list(results["tables"]):
                problems.append(
                    f"Table {number} ({task.name}) {suffix}: members {[r['member'] for r in t.records()]}"
                    f", file {list(results['tables'])}"
                )
            for r in t.records():
                entry = results["tables"].get(r["member"])
                if entry is None:
                    continue
                row = entry[stage]
                compare(
                    f"Table {number} ({task.name}) {suffix} {r['member']}",
                    r,
                    {
                        "tracks": entry["tracks"],
                        "frames": row["frames"],
                        **dict(zip(task.label_names, row["per_class"])),
                        "Avg.": row["metric"],
                        "Avg. (face frames)": row["metric_face_frames"],
                    },
                )
        tuning = table(f"Tuning ({task.name})")
        if tuning:
            steps = results["tuning"]["steps"]
            if len(tuning.rows) != len(steps):
                problems.append(f"Tuning ({task.name}): {len(tuning.rows)} rows, file {len(steps)} steps")
            for r, s in zip(tuning.records(), steps):
                values = s["value"] if isinstance(s["value"], list) else [s["value"]]
                cells = r["value"].split()
                if (
                    r["step"] != s["step"]
                    or len(cells) != len(values)
                    or any(abs(float(c) - v) > 1e-5 * max(1.0, abs(v)) for c, v in zip(cells, values))
                ):
                    problems.append(f"Tuning ({task.name}) {r['step']}, value: report {r['value']!r}, file {values}")
                compare(f"Tuning ({task.name}) {r['step']}", r, {"before": s["before"], "after": s["after"]})
        fusion = table(f"Fusion members ({task.name})")
        if fusion:
            if [r["member"] for r in fusion.records()] != list(scores["members"]):
                problems.append(f"Fusion members ({task.name}): members differ from {list(scores['members'])}")
            for r in fusion.records():
                info = scores["members"].get(r["member"], {})
                compare(
                    f"Fusion members ({task.name}) {r['member']}",
                    r,
                    {
                        "train tracks": len(info.get("train", [])),
                        "held-out tracks": len(info.get("heldout", [])),
                        "best step": info.get("best_step"),
                        "held-out": scores["heldout"].get(r["member"], {}).get("metric"),
                        "test": scores["test"].get(r["member"], {}).get("metric"),
                    },
                )
        ablation = table(f"Table 5 ({task.name})")
        if ablation:
            cells = {}
            for column, source in ((WITH_AUDIO, results), (VISUAL_ONLY, visual)):
                if source is None:
                    if column in ablation.header:
                        problems.append(f"Table 5 ({task.name}): a {column!r} column without its results.json")
                    continue
                expected = {r["setting"]: r["metric"] for r in source["ablation"]}
                if source["test_metric"] is not None:
                    expected[SUBMISSION_ROW] = source["test_metric"]
                shown = {r["setting"]: r.get(column) for r in ablation.records()}
                for setting, value in expected.items():
                    if setting not in shown:
                        problems.append(f"Table 5 ({task.name}): no row {setting!r}")
                    elif not _same(shown[setting] or "", value):
                        problems.append(
                            f"Table 5 ({task.name}) {setting} [{column}]: report {shown[setting]!r}, file {value!r}"
                        )
                cells.update({(s, column): v for s, v in expected.items()})
            if claims:
                for r in claims.records():
                    if r["task"] != task.name:
                        continue
                    sides, refs = [], []
                    for side in ("without", "with"):
                        match = re.fullmatch(r"(.*) \[(.*)\]", r[side])
                        ref = (match.group(1), match.group(2)) if match else None
                        if ref not in cells:
                            problems.append(f"Claims {r['claim']} {task.name}: {side} {r[side]!r} is no Table 5 cell")
                            break
                        sides.append(cells[ref])
                        refs.append(ref)
                        compare(f"Claims {r['claim']} {task.name}", r, {f"{side} score": cells[ref]})
                    if len(sides) == 2:
                        unmeasurable = r["claim"].startswith("SDD helps") and any(
                            row["setting"] == refs[1][0] and row.get("reaction_tracks") == 0
                            for row in results["ablation"]
                        )
                        verdict = (
                            NO_REACTION_TRACKS if unmeasurable else HOLDS if sides[1] > sides[0] else DOES_NOT_HOLD
                        )
                        compare(f"Claims {r['claim']} {task.name}", r, {"change": sides[1] - sides[0]})
                        if r["verdict"] != verdict:
                            problems.append(
                                f"Claims {r['claim']} {task.name}: verdict {r['verdict']!r}, the scores say {verdict!r}"
                            )
    mae_lines = pathlib.Path(dirs.mae, "metrics.jsonl").read_text().splitlines()
    mae_losses = [r for r in (json.loads(x) for x in mae_lines if x.strip()) if "loss" in r]
    if training:
        for r in training.records():
            if r["stage"] == "mae":
                compare(
                    "Training mae",
                    r,
                    {
                        "last step": mae_losses[-1]["step"],
                        "first loss": mae_losses[0]["loss"],
                        "last loss": mae_losses[-1]["loss"],
                    },
                )
    return problems
