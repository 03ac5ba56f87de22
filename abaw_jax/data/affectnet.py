"""AffectNet reader: the official manually annotated release, aligned crops from its landmarks, frame lists.

Layout read (the release as distributed by its authors; checked against public readers of it: the column list
and the `Manually_Annotated_file_lists` / `Manually_Annotated/Manually_Annotated_Images` folders in scripts that
parse `training.csv`, the `x;y;x;y...` landmark order in scripts that cut five points from it, the 0-10 codes):

  <root>/Manually_Annotated_file_lists/{training,validation}.csv   (or the two files directly in <root>)
  <root>/Manually_Annotated/Manually_Annotated_Images/<subDirectory_filePath>
      (or <root>/Manually_Annotated_Images/...)

Each list file has the header `subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
expression,valence,arousal`, then one row per image: its path below the images folder (`689/737db2483489148d.jpg`),
the face box in image pixels, 68 landmarks as 136 `;`-separated numbers `x0;y0;x1;y1;...` (image pixels, the
iBUG 68-point order), the expression code 0-10 (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
6 Anger, 7 Contempt, 8 None, 9 Uncertain, 10 No-Face) and valence and arousal in [-1, 1], -2 when not rated.
`validation.csv` is the split the literature reports on (there is no public test set).

Images are whole pictures, so faces are cut once with `prepare_crops` (`python -m data_prep.prepare_sources
--source=affectnet`): the 68 landmarks give five points (eye centres, nose tip, mouth corners) and
`media.align.align_face` aligns them like the Aff-Wild2 crops, into `<crops>/<subDirectory_filePath stem>.jpg`.
`labelled_frames` then lists the crops of a split with their labels mapped onto EXPR or VA by
`tasks.SOURCE_LABELS` (images without a mapped label are left out). The widely shared class-folder
re-distribution (`<root>/<class>/*.jpg`) is read by `frame_pipeline.image_folder_frames` once its folders are
named by EXPR label: it refuses numbered folders, whose AffectNet codes (1 = Happy) are not EXPR indices.

Errors name the list file and line, what was expected and what was found (`affwild2.AnnotationError`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import pathlib

import cv2
import numpy as np

from abaw_jax import tasks
from abaw_jax.data import frame_pipeline
from abaw_jax.data.affwild2 import AnnotationError, LayoutError, read_release_text
from abaw_jax.media import align

COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
LIST_FILES = {"train": "training.csv", "validation": "validation.csv"}
LISTS_DIR = "Manually_Annotated_file_lists"
IMAGES_DIR = "Manually_Annotated_Images"
NUM_LANDMARKS = 68
NO_RATING = -2.0
NUM_CODES = 11
# iBUG 68-point indices: the eyes as seen in the image (left: 36-41, right: 42-47), nose tip, mouth corners.
_LEFT_EYE, _RIGHT_EYE, _NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = slice(36, 42), slice(42, 48), 30, 48, 54


@dataclasses.dataclass(frozen=True)
class AffectNetList:
    """The rows of one list file; every array has one row per image.

    Attributes:
      path: the list file.
      images: (N,) `subDirectory_filePath`, relative to the images folder.
      lines: (N,) 1-based line of each row in the list file.
      boxes: (N, 4) float32 face box x, y, width, height in image pixels.
      landmarks: (N, 68, 2) float32 landmark (x, y) in image pixels.
      expression: (N,) int64 AffectNet code 0..10.
      va: (N, 2) float32 valence, arousal; -2 = not rated.
    """

    path: pathlib.Path
    images: np.ndarray
    lines: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    expression: np.ndarray
    va: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def find_list(root: str | os.PathLike, split: str) -> pathlib.Path:
    """The list file of `split` ("train" or "validation") in `root`, `root/Manually_Annotated_file_lists` or one
    folder below `root`."""
    if split not in LIST_FILES:
        raise ValueError(f"AffectNet split must be one of {list(LIST_FILES)}, got {split!r}")
    root, name = pathlib.Path(root), LIST_FILES[split]
    tried = [root / name, root / LISTS_DIR / name, *sorted(root.glob(f"*/{LISTS_DIR}/{name}"))]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no AffectNet {name} in {root}: looked for {[str(p) for p in tried[:2]]}")


def find_images_dir(root: str | os.PathLike) -> pathlib.Path:
    """`Manually_Annotated_Images` in `root`, or one or two folders below it (`Manually_Annotated/...`)."""
    root = pathlib.Path(root)
    found = [
        p for p in (root / IMAGES_DIR, *root.glob(f"*/{IMAGES_DIR}"), *root.glob(f"*/*/{IMAGES_DIR}")) if p.is_dir()
    ]
    if not found:
        raise FileNotFoundError(f"no {IMAGES_DIR} folder in {root} or below it (the AffectNet images)")
    return found[0]


def read_list(path: str | os.PathLike) -> AffectNetList:
    """Parses `training.csv` / `validation.csv`; a malformed row is an AnnotationError naming its line."""
    path = pathlib.Path(path)
    lines = read_release_text(path).splitlines()
    header = [f.strip() for f in lines[0].split(",")] if lines else []
    if tuple(header) != COLUMNS:
        raise AnnotationError(path, 1, f"the AffectNet header {','.join(COLUMNS)!r}", lines[0] if lines else "")
    images, numbers, boxes, landmarks, expression, va = [], [], [], [], [], []
    for number, fields in enumerate(csv.reader(lines[1:]), start=2):
        if not fields or not "".join(fields).strip():
            continue
        line = ",".join(fields)
        if len(fields) != len(COLUMNS):
            raise AnnotationError(path, number, f"{len(COLUMNS)} comma-separated fields ({', '.join(COLUMNS)})", line)
        name = fields[0].strip()
        if not name or name.startswith("/") or ".." in pathlib.PurePosixPath(name).parts:
            raise AnnotationError(path, number, "an image path relative to the images folder", name)
        box = _numbers(path, number, fields[1:5], "four numbers face_x, face_y, face_width, face_height")
        points = _numbers(path, number, fields[5].split(";"), f"{2 * NUM_LANDMARKS} ';'-separated landmark numbers")
        if len(points) != 2 * NUM_LANDMARKS:
            raise AnnotationError(
                path, number, f"{2 * NUM_LANDMARKS} ';'-separated landmark numbers", f"{len(points)} numbers"
            )
        code = fields[6].strip()
        if not code.isdigit() or int(code) >= NUM_CODES:
            raise AnnotationError(path, number, f"an expression code 0..{NUM_CODES - 1}", code)
        ratings = _numbers(path, number, fields[7:9], "valence and arousal in [-1, 1] or -2")
        if any(not (-1.0 <= v <= 1.0 or v == NO_RATING) for v in ratings):
            raise AnnotationError(path, number, "valence and arousal in [-1, 1] or -2", ",".join(fields[7:9]))
        images.append(name)
        numbers.append(number)
        boxes.append(box)
        landmarks.append(points)
        expression.append(int(code))
        va.append(ratings)
    if not images:
        raise AnnotationError(path, 2, "one row per image after the header", "no rows")
    return AffectNetList(
        path=path,
        images=np.array(images, object),
        lines=np.array(numbers, np.int64),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        landmarks=np.array(landmarks, np.float32).reshape(-1, NUM_LANDMARKS, 2),
        expression=np.array(expression, np.int64),
        va=np.array(va, np.float32).reshape(-1, 2),
    )


def _numbers(path: pathlib.Path, number: int, fields: list[str], expected: str) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise AnnotationError(path, number, expected, ",".join(fields)) from None
    if not np.isfinite(values).all():
        raise AnnotationError(path, number, expected, ",".join(fields))
    return values


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The five alignment points (left eye centre, right eye centre, nose tip, left and right mouth corner, as seen
    in the image) of 68 iBUG landmarks (68, 2)."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected ({NUM_LANDMARKS}, 2) landmarks, got shape {landmarks.shape}")
    return np.stack(
        [
            landmarks[_LEFT_EYE].mean(0),
            landmarks[_RIGHT_EYE].mean(0),
            landmarks[_NOSE_TIP],
            landmarks[_MOUTH_LEFT],
            landmarks[_MOUTH_RIGHT],
        ]
    )


def aligned_crop(image: np.ndarray, landmarks: np.ndarray, size: int = align.DEFAULT_SIZE) -> np.ndarray:
    """The Aff-Wild2-style aligned crop of a release image from its 68 landmarks."""
    return align.align_face(image, five_points(landmarks), size)


def crop_path(crops: str | os.PathLike, image: str) -> pathlib.Path:
    """Where `prepare_crops` writes the crop of `subDirectory_filePath` `image`: the same path, as a .jpg."""
    return (pathlib.Path(crops) / image).with_suffix(".jpg")


def _mapped(rows: AffectNetList, task: tasks.Task) -> tuple[np.ndarray, np.ndarray]:
    """(labels in the task's encoding, rows that have one) of a list for EXPR or VA."""
    if task.name == "EXPR":
        labels = tasks.get_source_labels("affectnet_expr").lookup()[rows.expression]
        return labels.astype(np.int32), labels >= 0
    if task.name == "VA":
        return rows.va, (rows.va != NO_RATING).all(axis=1)
    raise ValueError(f"AffectNet labels expressions and valence/arousal, not {task.name}")


def prepare_crops(
    root: str | os.PathLike,
    crops: str | os.PathLike,
    *,
    splits: tuple[str, ...] = tuple(LIST_FILES),
    size: int = align.DEFAULT_SIZE,
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> int:
    """Writes the aligned crop of every listed image that has an EXPR or VA label; returns how many it wrote.

    Existing crops are kept unless `overwrite` (so an interrupted run resumes). A listed image that is missing
    or cannot be decoded is an AnnotationError naming the list file and line.
    """
    images_dir = find_images_dir(root)
    written = 0
    for split in splits:
        rows = read_list(find_list(root, split))
        usable = _mapped(rows, tasks.EXPR)[1] | _mapped(rows, tasks.VA)[1]
        for i in np.flatnonzero(usable):
            out = crop_path(crops, rows.images[i])
            if out.exists() and not overwrite:
                continue
            source = images_dir / rows.images[i]
            image = cv2.imread(str(source), cv2.IMREAD_COLOR)
            if image is None:
                found = "a file OpenCV cannot decode" if source.exists() else "no such file"
                raise AnnotationError(rows.path, int(rows.lines[i]), f"the image {source}", found)
            out.parent.mkdir(parents=True, exist_ok=True)
            crop = aligned_crop(image, rows.landmarks[i], size)
            if not cv2.imwrite(str(out), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                raise OSError(f"{out}: could not write the crop")
            written += 1
        logging.info("AffectNet %s: %d crops written so far in %s", split, written, crops)
    return written


def labelled_frames(
    root: str | os.PathLike, crops: str | os.PathLike, task: str, split: str
) -> frame_pipeline.LabelledFrames:
    """The prepared crops of `split` ("train" or "validation") with their `task` labels (EXPR or VA).

    Images whose label does not map onto the task (Contempt, None, Uncertain, No-Face for EXPR; -2 for VA) are
    left out. A mapped image without its crop is an AnnotationError naming the list line (run `prepare_crops`).
    """
    task_info = tasks.get_task(task)
    rows = read_list(find_list(root, split))
    labels, keep = _mapped(rows, task_info)
    index = np.flatnonzero(keep)
    if not len(index):
        raise LayoutError(f"{rows.path}: none of its {len(rows)} images has a {task_info.name} label")
    paths = []
    for i in index:
        path = crop_path(crops, rows.images[i])
        if not path.is_file():
            raise AnnotationError(
                rows.path,
                int(rows.lines[i]),
                f"an aligned crop {path} (python -m data_prep.prepare_sources --source=affectnet writes them)",
                "no such file",
            )
        paths.append(str(path))
    logging.info("AffectNet %s %s: %d of %d images have a label", split, task_info.name, len(index), len(rows))
    return frame_pipeline.LabelledFrames(
        task=task_info.name,
        paths=np.array(paths, object),
        labels=labels[index],
        valid=np.ones(len(index), bool),
        names=np.array([pathlib.PurePosixPath(rows.images[i]).parent.as_posix() for i in index], object),
        frames=np.zeros(len(index), np.int64),
    )


def train_and_evaluation_frames(
    root: str | os.PathLike, crops: str | os.PathLike, task: str
) -> tuple[frame_pipeline.LabelledFrames, frame_pipeline.LabelledFrames]:
    """(training frames, evaluation frames): `training.csv` and `validation.csv`."""
    return labelled_frames(root, crops, task, "train"), labelled_frames(root, crops, task, "validation")
