"""Where each stage of the whole-method pipeline (`configs/abaw.py`) keeps its output, in one place.

    <root>/mae/                       stage 1: MAE pretraining workdir
    <root>/finetune_<task>/           stage 2: fine-tuning workdir per task (au, expr, va)
    <root>/finetune_<source set>/     stage 2 on another release, when a fusion uses its set (affectnet_va, ...)
    <root>/features/                  stage 3: the feature store (visual sets named after tasks + `mae`, audio)
    <root>/fusion_<task>/             stage 4: TMF ensemble on visual + audio features
    <root>/fusion_<task>_visual/      stage 4, ablation: the same ensemble on visual features only
    <root>/fusion_<task>_table6_<k>/  stage 4, ablation: row k of the paper's Table 6 (official member only)
    <root>/evaluate_<task>[_visual]/  stage 5: tuning, tables, submission files of each ensemble
    <root>/report/                    report.md and its figures
    <root>/predictor/                 the predictor bundle that `python -m abaw_jax.predict` reads

Each stage folder holds the stage job's own files plus `stage.json` (`STAGE_FILE`), written by the pipeline:
the stage's settings, their fingerprint and whether the stage finished. Readers of a pipeline workdir (the
report, the bundle export, `predict`) take a `PipelineDirs` rather than building paths themselves.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from abaw_jax import table6, tasks

TASKS = tasks.TASK_KEYS
# '' : visual + audio features (the method); 'visual': visual features only (the audio ablation);
# 'table6_<k>': the sets of row k of the paper's Table 6.


def table6_variant(row: int) -> str:
    """The fusion variant of row `row` of the paper's Table 6."""
    return f"table6_{row}"


VARIANTS = ("", "visual", *(table6_variant(k) for k in table6.ROWS))
STAGE_FILE = "stage.json"


def _suffix(task: str, variant: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return f"{task}_{variant}" if variant else task


@dataclasses.dataclass(frozen=True)
class PipelineDirs:
    """The stage folders of one pipeline workdir `root` (nothing is created here)."""

    root: str

    @property
    def mae(self) -> str:
        return os.path.join(self.root, "mae")

    def finetune(self, name: str) -> str:
        """Stage 2 of a task (au, expr, va) or of another release's encoder (`tasks.SOURCE_LABELS` key)."""
        if name in tasks.SOURCE_LABELS:
            return os.path.join(self.root, f"finetune_{name}")
        return os.path.join(self.root, f"finetune_{_suffix(name, '')}")

    @property
    def features(self) -> str:
        return os.path.join(self.root, "features")

    def fusion(self, task: str, variant: str = "") -> str:
        return os.path.join(self.root, f"fusion_{_suffix(task, variant)}")

    def table6(self, task: str, row: int) -> str:
        """Stage 4 of `task` on the sets of Table 6's row `row`."""
        return self.fusion(task, table6_variant(row))

    def evaluate(self, task: str, variant: str = "") -> str:
        return os.path.join(self.root, f"evaluate_{_suffix(task, variant)}")

    @property
    def report(self) -> str:
        return os.path.join(self.root, "report")

    @property
    def predictor(self) -> str:
        return os.path.join(self.root, "predictor")


def flat_settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A stage.json `config` as {dotted key: value} ('model.size': 'tiny'), as --config.<key> names them."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
