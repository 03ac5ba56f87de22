"""Reading the stage files a report rests on, once per task (a missing required file is a `ReportError` naming it).

Inputs, per task t of the run (file names: `runtime.artefacts`):
  mae/metrics.jsonl                        required: MAE loss curve
  finetune_t/metrics.jsonl, best.json      required: fine-tuning loss and eval metric, best step
  fusion_t/scores.json, metrics.jsonl      required: members' held-out / test scores, losses and held-out curves
  evaluate_t/results.json                  required: `tables` (Tables 1-3), `tuning`, `ablation`, `test_metric`
  evaluate_t/per_video.json                optional: per-video sufficient statistics of those scores (intervals;
                                           an evaluate run older than this file has none: no intervals)
  evaluate_t/plots/*.png                   optional: timelines of predictions vs labels
  evaluate_t_visual/results.json, per_video.json   optional: the visual-only ensemble (the audio ablation)
  <stage folder>/stage.json                optional: {"stage", "config", "fingerprint", "complete"[, "seconds"]}
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from abaw_jax import table6
from abaw_jax import tasks as task_facts
from abaw_jax.runtime.artefacts import BEST_FILE, METRICS_FILE, PER_VIDEO_FILE, RESULTS_FILE, SCORES_FILE
from abaw_jax.runtime.errors import ExplainedError
from abaw_jax.runtime.pipeline_dirs import PipelineDirs

PLOTS = "plots"


class ReportError(ExplainedError, ValueError):
    """A required stage file is missing or not in the layout its stage writes; the message names it."""


def read_json(path: pathlib.Path, what: str) -> Any:
    if not path.is_file():
        raise ReportError(f"{path}: missing; the report needs it ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: pathlib.Path, what: str) -> list[dict]:
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


def field(data: Any, path: pathlib.Path, *keys: str | int) -> Any:
    """data[k1][k2]... with an error naming the file and the missing key."""
    node = data
    for depth, name in enumerate(keys):
        try:
            node = node[name]
        except (KeyError, IndexError, TypeError):
            dotted = ".".join(map(str, keys[: depth + 1]))
            raise ReportError(f"{path}: no {dotted!r} (expected the layout its stage writes)") from None
    return node


@dataclasses.dataclass
class TaskFiles:
    """What the stages wrote for one task, read once (`per_video`: evaluate's per-video statistics)."""

    task: task_facts.Task
    finetune_metrics: list[dict]
    finetune_best: dict
    fusion_scores: dict
    fusion_metrics: list[dict]
    results: dict
    visual: dict | None
    per_video: dict | None
    visual_per_video: dict | None
    paths: dict[str, pathlib.Path]


def read_task(dirs: PipelineDirs, key: str) -> TaskFiles:
    task = task_facts.get_task(key)
    finetune, fusion = pathlib.Path(dirs.finetune(key)), pathlib.Path(dirs.fusion(key))
    evaluate, visual = pathlib.Path(dirs.evaluate(key)), pathlib.Path(dirs.evaluate(key, "visual"))
    paths = {
        "finetune_metrics": finetune / METRICS_FILE,
        "finetune_best": finetune / BEST_FILE,
        "fusion_scores": fusion / SCORES_FILE,
        "fusion_metrics": fusion / METRICS_FILE,
        "results": evaluate / RESULTS_FILE,
        "per_video": evaluate / PER_VIDEO_FILE,
        "visual": visual / RESULTS_FILE,
        "visual_per_video": visual / PER_VIDEO_FILE,
        "plots": evaluate / PLOTS,
    }
    results = read_json(paths["results"], f"{task.name} Tables 1-3 and 5")
    for entry in ("tables", "tuning", "ablation", "ablation_set", "test_metric"):
        field(results, paths["results"], entry)
    return TaskFiles(
        task=task,
        finetune_metrics=read_jsonl(paths["finetune_metrics"], f"{task.name} fine-tuning curves"),
        finetune_best=read_json(paths["finetune_best"], f"{task.name} fine-tuned encoder's best step"),
        fusion_scores=read_json(paths["fusion_scores"], f"{task.name} fusion members' scores"),
        fusion_metrics=read_jsonl(paths["fusion_metrics"], f"{task.name} fusion curves"),
        results=results,
        visual=read_json(paths["visual"], "") if paths["visual"].is_file() else None,
        per_video=_optional(paths["per_video"]),
        visual_per_video=_optional(paths["visual_per_video"]) if paths["visual"].is_file() else None,
        paths=paths,
    )


def _optional(path: pathlib.Path) -> Any:
    return read_json(path, "") if path.is_file() else None


def task_keys(tasks: Sequence[str]) -> list[str]:
    keys = [str(t).lower() for t in tasks]
    unknown = [t for t in keys if t not in task_facts.TASK_KEYS]
    if unknown or not keys:
        raise ReportError(f"tasks must be a non-empty subset of {list(task_facts.TASK_KEYS)}, got {list(tasks)!r}")
    return [t for t in task_facts.TASK_KEYS if t in keys]


def stage_folders(dirs: PipelineDirs, keys: Sequence[str]) -> list[pathlib.Path]:
    """Every stage folder a run of `keys` may have, in pipeline order (other releases' encoders and Table 6 rows
    only where the run made them)."""
    sources = [pathlib.Path(dirs.finetune(s)) for s in task_facts.SOURCE_LABELS]
    rows = [pathlib.Path(dirs.table6(t, n)) for t in keys for n in table6.ROWS]
    folders = [dirs.mae, *[dirs.finetune(t) for t in keys], *[f for f in sources if f.is_dir()], dirs.features]
    folders += [dirs.fusion(t, v) for t in keys for v in ("", "visual")] + [f for f in rows if f.is_dir()]
    folders += [dirs.evaluate(t, v) for t in keys for v in ("", "visual")]
    return [pathlib.Path(f) for f in folders]


def relative(path: pathlib.Path) -> str:
    """`<stage folder>/<file>`, as the report names its sources."""
    return f"{path.parent.name}/{path.name}"
