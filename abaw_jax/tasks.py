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

Other training sources (the paper's Table 6 encoders) and how their labels map onto these tasks
(`SOURCE_LABELS`; the readers are `data.affectnet`, `data.rafdb`, `data.bp4d`):

  affectnet_expr  AffectNet expression codes 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
                  6 Anger -> Neutral, Happiness, Sadness, Surprise, Fear, Disgust, Anger; 7 Contempt,
                  8 None, 9 Uncertain, 10 No-Face dropped (no EXPR class); EXPR "Other" has no source.
  affectnet_va    AffectNet valence, arousal -> valence, arousal; -2 (no rating) is invalid.
  rafdb_expr      RAF-DB basic labels 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger,
                  7 Neutral -> the EXPR class of the same name; "Other" has no source.
  bp4d_au         BP4D AU1, 2, 4, 6, 7, 10, 12, 15, 23, 24 -> the AU of the same number; AU14 and AU17
                  (coded by BP4D, not ABAW) dropped; AU25 and AU26 have no source: their labels are -1,
                  masked out of the loss and the metric, never read as 0.

A label with no source is still an output of the model: training on such a source trains the others
and `missing_labels_message` says which are left untrained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import numpy as np

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


@dataclasses.dataclass(frozen=True)
class SourceLabels:
    """How one training source's labels map onto an ABAW task.

    Attributes:
      key: the source-and-task name of presets and feature sets, e.g. "affectnet_expr".
      paper_name: the encoder's name in the paper's Table 6, e.g. "affn_EXPR".
      source: the release, e.g. "AffectNet".
      task: the ABAW task name its labels train.
      codes: the source's label code -> its name in the source (AU number for AUs, class code for
        expressions, 0 / 1 for valence / arousal).
      to_task: the source code -> index into `task.label_names`, or None when the label is dropped.
    """

    key: str
    paper_name: str
    source: str
    task: str
    codes: Mapping[int, str]
    to_task: Mapping[int, int | None]

    @property
    def covered(self) -> tuple[int, ...]:
        """Task label indices that some source label maps onto, in task order."""
        return tuple(sorted({i for i in self.to_task.values() if i is not None}))

    @property
    def missing(self) -> tuple[str, ...]:
        """Task labels with no source label: never trained on this source, left out of its metric."""
        names = get_task(self.task).label_names
        return tuple(n for i, n in enumerate(names) if i not in self.covered)

    @property
    def dropped(self) -> tuple[str, ...]:
        """Source labels with no task label: their images (or AU columns) are not used."""
        return tuple(self.codes[c] for c, i in self.to_task.items() if i is None)

    def lookup(self) -> np.ndarray:
        """Array mapping a source code to its task index, -1 where dropped or unknown (codes 0..max)."""
        table = np.full(max(self.codes) + 1, -1, np.int64)
        for code, index in self.to_task.items():
            table[code] = -1 if index is None else index
        return table


def _by_name(task: Task, names: Mapping[int, str], renames: Mapping[str, str]) -> dict[int, int | None]:
    """Source code -> task index of the task label whose name the source name is (after `renames`)."""
    index = {n: i for i, n in enumerate(task.label_names)}
    return {code: index.get(renames.get(name, name)) for code, name in names.items()}


_AFFECTNET_EXPRESSIONS = {
    0: "Neutral",
    1: "Happy",
    2: "Sad",
    3: "Surprise",
    4: "Fear",
    5: "Disgust",
    6: "Anger",
    7: "Contempt",
    8: "None",
    9: "Uncertain",
    10: "No-Face",
}
_RAFDB_EXPRESSIONS = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral"}
# The AUs of the common 12-AU BP4D protocol; AU25 and AU26 of ABAW are not among them.
_BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)

SOURCE_LABELS: dict[str, SourceLabels] = {
    s.key: s
    for s in (
        SourceLabels(
            key="affectnet_expr",
            paper_name="affn_EXPR",
            source="AffectNet",
            task="EXPR",
            codes=_AFFECTNET_EXPRESSIONS,
            to_task=_by_name(EXPR, _AFFECTNET_EXPRESSIONS, {"Happy": "Happiness", "Sad": "Sadness"}),
        ),
        SourceLabels(
            key="affectnet_va",
            paper_name="affn_VA",
            source="AffectNet",
            task="VA",
            codes={0: "valence", 1: "arousal"},
            to_task={0: 0, 1: 1},
        ),
        SourceLabels(
            key="rafdb_expr",
            paper_name="raf_EXPR",
            source="RAF-DB",
            task="EXPR",
            codes=_RAFDB_EXPRESSIONS,
            to_task=_by_name(EXPR, _RAFDB_EXPRESSIONS, {}),
        ),
        SourceLabels(
            key="bp4d_au",
            paper_name="BP4D_AU",
            source="BP4D",
            task="AU",
            codes={n: f"AU{n}" for n in _BP4D_AUS},
            to_task=_by_name(AU, {n: f"AU{n}" for n in _BP4D_AUS}, {}),
        ),
    )
}


def get_source_labels(key: str) -> SourceLabels:
    """The mapping called `key` (case-insensitive); a clear error for anything else."""
    found = SOURCE_LABELS.get(str(key).lower())
    if found is None:
        raise ValueError(f"unknown training source {key!r}; expected one of {list(SOURCE_LABELS)}")
    return found


def missing_labels(task: str | Task, labels: np.ndarray, valid: np.ndarray) -> tuple[str, ...]:
    """Task labels that no valid training label shows: EXPR classes without a frame, AUs never annotated (-1 in
    every valid frame). VA has none missing while any frame is valid."""
    task = task if isinstance(task, Task) else get_task(task)
    labels, valid = np.asarray(labels), np.asarray(valid, bool)
    if task.kind == "multiclass":
        seen = np.bincount(labels[valid].astype(np.int64), minlength=task.num_outputs) > 0
    elif task.kind == "binary":
        seen = (labels[valid] >= 0).any(axis=0) if valid.any() else np.zeros(task.num_outputs, bool)
    else:
        seen = np.full(task.num_outputs, bool(valid.any()))
    return tuple(n for n, s in zip(task.label_names, seen) if not s)


def missing_labels_message(task: str | Task, labels: np.ndarray, valid: np.ndarray, source: str) -> str | None:
    """One line saying which labels `source`'s training frames lack and what that means, or None if none."""
    task = task if isinstance(task, Task) else get_task(task)
    missing = missing_labels(task, labels, valid)
    if not missing:
        return None
    if task.kind == "binary":
        effect = "masked out of the loss and the metric; their outputs stay untrained"
    else:
        effect = "never a training target, so the model learns not to predict them"
    return (
        f"{source} has no {task.name} training label for {', '.join(missing)}: the other "
        f"{task.num_outputs - len(missing)} are trained, these are {effect}"
    )
