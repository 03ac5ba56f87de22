"""The three ABAW tasks in one place: label names, label kind, invalid marker, headers, folders, metric.

Every stage (readers, synthetic release, fine-tuning, fusion, evaluation, submission files) reads these
facts from here:

  AU    12 binary action units; annotation rows of 12 values in {0, 1}, -1 = not annotated;
        metric: mean of the 12 per-AU F1 scores.
  EXPR  8 expression classes; one integer 0..7 per row, -1 = invalid; metric: mean F1 over all 8
        classes (a class absent from prediction and truth scores 0).
  VA    valence and arousal, two floats in [-1, 1], -5 = invalid; metric: (CCC_V + CCC_A) / 2.

Folder and file names are those of the ABAW6 release (the EXPR folder of older releases is accepted
when reading).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

LabelKind = Literal["binary", "multiclass", "continuous"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Facts of one ABAW task.

    Attributes:
      name: "AU", "EXPR" or "VA".
      label_names: column names of the annotation header, in order.
      kind: "binary" (one 0/1 label per name), "multiclass" (one class index per row) or "continuous".
      invalid_marker: the value that marks an unannotated row.
      folders: annotation folder names; the first is the current release's and what we write.
      test_list_file: the release's list of test video names.
      example_file: the release's example submission file (every test frame, in order).
      metric_name: how the task metric is reported.
    """

    name: str
    label_names: tuple[str, ...]
    kind: LabelKind
    invalid_marker: int | float
    folders: tuple[str, ...]
    test_list_file: str
    example_file: str
    metric_name: str

    @property
    def key(self) -> str:
        """The lower-case name that configs, stage folders (`finetune_au`) and feature sets use."""
        return self.name.lower()

    @property
    def header(self) -> str:
        """First line of an annotation file."""
        return ",".join(self.label_names)

    @property
    def submission_header(self) -> str:
        """First line of a submission file."""
        return "image_location," + self.header

    @property
    def num_outputs(self) -> int:
        """Model outputs per frame: a logit per AU, a logit per class, or valence and arousal."""
        return len(self.label_names)

    @property
    def values_per_row(self) -> int:
        """Label values per annotation (and submission) row: 12 AUs, one class index, or 2 values."""
        return 1 if self.kind == "multiclass" else len(self.label_names)


AU = Task(
    name="AU",
    label_names=("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"),
    kind="binary",
    invalid_marker=-1,
    folders=("AU_Detection_Challenge",),
    test_list_file="AU_Detection_Challenge_test_set_release.txt",
    example_file="CVPR_6th_ABAW_AU_test_set_example.txt",
    metric_name="F1 (mean of 12 AUs)",
)
EXPR = Task(
    name="EXPR",
    label_names=("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"),
    kind="multiclass",
    invalid_marker=-1,
    folders=("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"),
    test_list_file="EXPR_Recognition_Challenge_test_set_release.txt",
    example_file="CVPR_6th_ABAW_Expr_test_set_example.txt",
    metric_name="F1 (mean of 8 classes)",
)
VA = Task(
    name="VA",
    label_names=("valence", "arousal"),
    kind="continuous",
    invalid_marker=-5,
    folders=("VA_Estimation_Challenge",),
    test_list_file="VA_Estimation_Challenge_test_set_release.txt",
    example_file="CVPR_6th_ABAW_VA_test_set_example.txt",
    metric_name="CCC (mean of valence and arousal)",
)

TASKS: dict[str, Task] = {t.name: t for t in (AU, EXPR, VA)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
TASK_KEYS: tuple[str, ...] = tuple(t.key for t in TASKS.values())  # ("au", "expr", "va")


def get_task(name: str) -> Task:
    """The task called `name` (case-insensitive); a clear error for anything else."""
    task = TASKS.get(str(name).upper())
    if task is None:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_NAMES)} (any case)")
    return task
