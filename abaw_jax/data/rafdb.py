"""RAF-DB (basic emotions) reader: the official release layout, crops from the original images, frame lists.

Layout read (the `basic` part of the release as its README describes it; checked against that README and public
readers of `list_patition_label.txt`):

  <basic>/EmoLabel/list_patition_label.txt    `<image name> <label>` per line, e.g. `train_00001.jpg 5`
                                              (the README spells it list_partition_label.txt: both are read)
  <basic>/Image/aligned/<stem>_aligned.jpg    100x100 crops aligned by the release (eyes and mouth centre)
  <basic>/Image/original/<image name>         the whole pictures
  <basic>/Annotation/manual/<stem>_manu_attri.txt   five lines `x<TAB>y`: left eye centre, right eye centre,
                                              nose tip, left and right mouth corner; then gender, race, age

`<basic>` is the folder given or its `basic/` sub-folder. Labels 1-7 are Surprise, Fear, Disgust, Happiness,
Sadness, Anger, Neutral (mapped onto EXPR by `tasks.SOURCE_LABELS["rafdb_expr"]`); the name prefix is the split,
`train_XXXXX` (12,271 images) or `test_XXXX` (3,068), the test split being the one results are reported on.

`labelled_frames` reads the release's aligned crops, or the crops `prepare_crops` (`python -m
data_prep.prepare_sources --source=rafdb`) cuts from the original images with the five manual landmarks and
`media.align.align_face`, the alignment of the Aff-Wild2 crops, written as `<crops>/<stem>_aligned.jpg`.

Errors name the file and line, what was expected and what was found (`affwild2.AnnotationError`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re

import cv2
import numpy as np

from abaw_jax import tasks
from abaw_jax.data import frame_pipeline
from abaw_jax.data.affwild2 import AnnotationError, read_release_text
from abaw_jax.media import align

LABEL_FILES = ("EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt")
ALIGNED_DIR = "Image/aligned"
ORIGINAL_DIR = "Image/original"
MANUAL_DIR = "Annotation/manual"
SPLITS = ("train", "test")
_NAME = re.compile(r"^(train|test)_\d+\.jpg$")


@dataclasses.dataclass(frozen=True)
class RafdbLabels:
    """The rows of the label file: `names` (N,) image names, `codes` (N,) labels 1..7, `lines` (N,) 1-based."""

    path: pathlib.Path
    names: np.ndarray
    codes: np.ndarray
    lines: np.ndarray

    def split(self, split: str) -> np.ndarray:
        """Row indices of `split` ("train" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"RAF-DB split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero([n.startswith(split + "_") for n in self.names])


def find_basic(root: str | os.PathLike) -> pathlib.Path:
    """The folder holding `EmoLabel/`: `root` itself or `root/basic`."""
    root = pathlib.Path(root)
    for folder in (root, root / "basic"):
        if (folder / "EmoLabel").is_dir():
            return folder
    raise FileNotFoundError(f"no RAF-DB EmoLabel folder in {root} or {root / 'basic'}")


def read_labels(root: str | os.PathLike) -> RafdbLabels:
    """Parses the label file of the release at `root`; a malformed line is an AnnotationError naming it."""
    basic = find_basic(root)
    path = next((basic / f for f in LABEL_FILES if (basic / f).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no {' or '.join(LABEL_FILES)} in {basic}")
    codes_known = tasks.get_source_labels("rafdb_expr").codes
    expected = f"'<train_XXXXX.jpg | test_XXXX.jpg> <label 1..{max(codes_known)}>'"
    names, codes, lines, seen = [], [], [], {}
    for number, line in enumerate(read_release_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not _NAME.match(fields[0]):
            raise AnnotationError(path, number, expected, line)
        if not fields[1].isdigit() or int(fields[1]) not in codes_known:
            raise AnnotationError(path, number, f"a label in 1..{max(codes_known)}", fields[1])
        if fields[0] in seen:
            raise AnnotationError(path, number, "each image once", f"{fields[0]} also on line {seen[fields[0]]}")
        seen[fields[0]] = number
        names.append(fields[0])
        codes.append(int(fields[1]))
        lines.append(number)
    if not names:
        raise AnnotationError(path, 1, expected, "no rows")
    return RafdbLabels(path, np.array(names, object), np.array(codes, np.int64), np.array(lines, np.int64))


def aligned_name(name: str) -> str:
    """`train_00001.jpg` -> `train_00001_aligned.jpg`, the release's name of its aligned crop."""
    return f"{pathlib.Path(name).stem}_aligned.jpg"


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
    """The five manual landmarks (5, 2) of a `<stem>_manu_attri.txt` file."""
    path = pathlib.Path(path)
    lines = read_release_text(path).splitlines()
    points = []
    for number in range(1, 6):
        line = lines[number - 1] if number <= len(lines) else ""
        try:
            point = [float(v) for v in line.split()]
        except ValueError:
            point = []
        if len(point) != 2 or not np.isfinite(point).all():
            raise AnnotationError(path, number, "a landmark 'x y' (eyes, nose tip, mouth corners)", line)
        points.append(point)
    return np.array(points, np.float64)


def prepare_crops(
    root: str | os.PathLike,
    crops: str | os.PathLike,
    *,
    size: int = align.DEFAULT_SIZE,
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> int:
    """Aligns every labelled original image on its manual landmarks into `<crops>/<stem>_aligned.jpg`; returns how
    many it wrote (existing crops are kept unless `overwrite`). A missing image or landmark file is an
    AnnotationError naming the label file's line."""
    basic = find_basic(root)
    rows = read_labels(basic)
    crops = pathlib.Path(crops)
    crops.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, number in zip(rows.names, rows.lines):
        out = crops / aligned_name(name)
        if out.exists() and not overwrite:
            continue
        source = basic / ORIGINAL_DIR / name
        marks = basic / MANUAL_DIR / f"{pathlib.Path(name).stem}_manu_attri.txt"
        if not marks.is_file():
            raise AnnotationError(rows.path, int(number), f"its landmark file {marks}", "no such file")
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            found = "a file OpenCV cannot decode" if source.exists() else "no such file"
            raise AnnotationError(rows.path, int(number), f"the original image {source}", found)
        crop = align.align_face(image, read_landmarks(marks), size)
        if not cv2.imwrite(str(out), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
            raise OSError(f"{out}: could not write the crop")
        written += 1
    logging.info("RAF-DB: %d crops written in %s", written, crops)
    return written


def labelled_frames(
    root: str | os.PathLike, split: str, crops: str | os.PathLike | None = None, task: str = "EXPR"
) -> frame_pipeline.LabelledFrames:
    """The crops of `split` ("train" or "test") with EXPR labels: the release's `Image/aligned` crops, or
    `prepare_crops`'s folder. A listed image without its crop is an AnnotationError naming the label line."""
    task_info = tasks.get_task(task)
    if task_info.name != "EXPR":
        raise ValueError(f"RAF-DB labels expressions, not {task_info.name}")
    basic = find_basic(root)
    rows = read_labels(basic)
    folder = basic / ALIGNED_DIR if crops is None else pathlib.Path(crops)
    index = rows.split(split)
    if not len(index):
        raise AnnotationError(rows.path, 1, f"images named {split}_*.jpg", f"none of its {len(rows.names)} rows")
    paths = []
    for i in index:
        path = folder / aligned_name(rows.names[i])
        if not path.is_file():
            raise AnnotationError(rows.path, int(rows.lines[i]), f"the aligned image {path}", "no such file")
        paths.append(str(path))
    labels = tasks.get_source_labels("rafdb_expr").lookup()[rows.codes[index]]
    return frame_pipeline.LabelledFrames(
        task=task_info.name,
        paths=np.array(paths, object),
        labels=labels.astype(np.int32),
        valid=np.ones(len(index), bool),
        names=np.full(len(index), split, object),
        frames=np.zeros(len(index), np.int64),
    )


def train_and_evaluation_frames(
    root: str | os.PathLike, crops: str | os.PathLike | None = None
) -> tuple[frame_pipeline.LabelledFrames, frame_pipeline.LabelledFrames]:
    """(training frames, evaluation frames): the `train_` and the `test_` images."""
    return labelled_frames(root, "train", crops), labelled_frames(root, "test", crops)
