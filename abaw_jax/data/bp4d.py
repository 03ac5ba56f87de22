"""BP4D-Spontaneous AU reader: per-session occurrence files, face crops of the coded frames, 3-fold split.

Layout read (the release's `AUCoding` and frame folders; checked against public readers of it: FERA 2015's
`extract_BP4D_labels` (frame column first, one column per AU, 9 = not coded), loaders that read the header
`0,1,...,99` (column N is AU N) or a header naming the AUs, and the subject-independent 3-fold split of JAA-Net /
ME-GraphAU's BP4D lists):

  <root>/AUCoding/AU_OCC/<subject>_<task>.csv    (or <root>/AU_OCC/, <root>/AUCoding/ or <root>/ itself)
      header: a frame column, then one column per AU named by its number (`0,1,2,...,99` in the original
      files, column N = AU N; re-released files name only the coded AUs); then one row per coded frame:
      the frame number and per AU 1 (present), 0 (absent) or 9 (not coded). Subjects F001-F023, M001-M018;
      tasks T1-T8.
  <frames>/<subject>/<task>/<frame>.jpg           the video frames, named by the frame number (3 or 4 digits)

The frames are whole camera images, so `prepare_crops` (`python -m data_prep.prepare_sources --source=bp4d`)
detects the face in each coded frame (`media.faces`, CenterFace by default), aligns it like the Aff-Wild2 crops
and writes `<crops>/<subject>_<task>/<frame:05d>.jpg`; frames where no face is found get no crop and are left
out, counted in the log.

Labels map onto Aff-Wild2's twelve AUs by `tasks.SOURCE_LABELS["bp4d_au"]`: AU1, 2, 4, 6, 7, 10, 12, 15, 23, 24
are read; AU14 and AU17 are dropped; AU25 and AU26 are not coded by BP4D and are -1 (masked out of the loss and
the metric, never read as 0), whatever columns 25 and 26 of a file hold; a 9 is -1 as well. Frames with none of
the read AUs coded are left out.

Split: fold k of `FOLDS` trains on two subject parts and tests on the third, as the public lists do (fold 1
tests part 3, fold 2 part 2, fold 3 part 1). Errors name the file and line, what was expected and what was found.
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
from abaw_jax.data.affwild2 import AnnotationError, LayoutError, read_release_text
from abaw_jax.media import align, faces
from abaw_jax.media.video import IMAGE_EXTENSIONS

# The subject parts of the subject-independent 3-fold protocol (JAA-Net, ME-GraphAU lists).
PARTS = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"),
)
# fold k: (training parts, test part), 0-based part indices.
FOLDS = {1: ((0, 1), 2), 2: ((0, 2), 1), 3: ((1, 2), 0)}
NOT_CODED = 9
OCCURRENCE_DIRS = ("AUCoding/AU_OCC", "AU_OCC", "AUCoding", ".")
_SESSION = re.compile(r"^([FM]\d{3})_(T\d+)\.csv$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Session:
    """One occurrence file: the coded frames that have at least one read AU coded.

    Attributes:
      name: `<subject>_<task>`, e.g. `F001_T1`.
      subject, task: its two parts.
      frames: (N,) frame numbers.
      labels: (N, 12) int8 in Aff-Wild2's AU order: 0, 1, or -1 (not coded, or an AU BP4D does not code).
      lines: (N,) 1-based line of each frame in the file.
      path: the occurrence file.
    """

    name: str
    subject: str
    task: str
    frames: np.ndarray
    labels: np.ndarray
    lines: np.ndarray
    path: pathlib.Path


def find_occurrence_dir(root: str | os.PathLike) -> pathlib.Path:
    """The folder of the `<subject>_<task>.csv` occurrence files (see OCCURRENCE_DIRS)."""
    root = pathlib.Path(root)
    for sub in OCCURRENCE_DIRS:
        folder = root / sub
        if folder.is_dir() and any(_SESSION.match(p.name) for p in folder.iterdir()):
            return folder
    raise FileNotFoundError(
        f"no BP4D occurrence files (<subject>_<task>.csv, e.g. F001_T1.csv) in {root} under {list(OCCURRENCE_DIRS)}"
    )


def read_session(path: str | os.PathLike) -> Session:
    """Parses one occurrence file; a malformed header or row is an AnnotationError naming its line."""
    path = pathlib.Path(path)
    match = _SESSION.match(path.name)
    if match is None:
        raise LayoutError(f"{path}: expected an occurrence file named <subject>_<task>.csv (F001_T1.csv)")
    subject, task = match.group(1).upper(), match.group(2).upper()
    lines = read_release_text(path).splitlines()
    header = [f.strip() for f in lines[0].split(",")] if lines else []
    mapping = tasks.get_source_labels("bp4d_au")
    wanted = {au: index for au, index in mapping.to_task.items() if index is not None}
    columns = {}
    for position, field in enumerate(header[1:], start=1):
        if field.isdigit() and int(field) in wanted:
            if int(field) in columns:
                raise AnnotationError(path, 1, "each AU column once", f"AU{field} twice")
            columns[int(field)] = position
    absent = [au for au in wanted if au not in columns]
    if not header or absent:
        raise AnnotationError(
            path,
            1,
            f"a frame column, then AU columns named by number including {sorted(wanted)}",
            f"{lines[0] if lines else ''} (no column for AU {', '.join(map(str, absent))})",
        )
    frames, labels, numbers, seen = [], [], [], {}
    expected = f"{len(header)} comma-separated integers: the frame number, then 0, 1 or {NOT_CODED} per AU"
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            values = [int(float(f)) for f in fields]
        except ValueError:
            raise AnnotationError(path, number, expected, line) from None
        if len(values) != len(header) or values[0] < 0:
            raise AnnotationError(path, number, expected, line)
        row = np.full(tasks.AU.num_outputs, -1, np.int8)
        for au, position in columns.items():
            value = values[position]
            if value not in (0, 1, NOT_CODED):
                raise AnnotationError(path, number, f"AU{au} 0, 1 or {NOT_CODED}", fields[position])
            row[wanted[au]] = -1 if value == NOT_CODED else value
        if values[0] in seen:
            raise AnnotationError(path, number, "each frame once", f"frame {values[0]} also on line {seen[values[0]]}")
        seen[values[0]] = number
        if (row >= 0).any():
            frames.append(values[0])
            labels.append(row)
            numbers.append(number)
    return Session(
        name=f"{subject}_{task}",
        subject=subject,
        task=task,
        frames=np.array(frames, np.int64),
        labels=np.array(labels, np.int8).reshape(-1, tasks.AU.num_outputs),
        lines=np.array(numbers, np.int64),
        path=path,
    )


def read_sessions(root: str | os.PathLike) -> list[Session]:
    """Every occurrence file of the release at `root`, sorted by name."""
    folder = find_occurrence_dir(root)
    return [read_session(p) for p in sorted(folder.iterdir()) if _SESSION.match(p.name)]


def fold_subjects(fold: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training subjects, test subjects) of fold 1, 2 or 3."""
    if fold not in FOLDS:
        raise ValueError(f"BP4D fold must be one of {sorted(FOLDS)}, got {fold!r}")
    train_parts, test_part = FOLDS[fold]
    return tuple(s for p in train_parts for s in PARTS[p]), PARTS[test_part]


def crop_path(crops: str | os.PathLike, session: str, frame: int) -> pathlib.Path:
    """Where `prepare_crops` writes the crop of `frame` of `session`."""
    return pathlib.Path(crops) / session / f"{frame:05d}.jpg"


def _frame_images(folder: pathlib.Path) -> dict[int, pathlib.Path]:
    """Frame number -> image of a `<subject>/<task>` folder whose images are named by number (any padding)."""
    return {int(p.stem): p for p in folder.iterdir() if p.stem.isdigit() and p.suffix.lower() in IMAGE_EXTENSIONS}


def prepare_crops(
    root: str | os.PathLike,
    frames: str | os.PathLike,
    crops: str | os.PathLike,
    detector: faces.FaceDetector,
    *,
    size: int = align.DEFAULT_SIZE,
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Detects, aligns and writes the face of every coded frame; returns (crops written, frames without a face).

    The largest face of a frame is cut (`media.faces.face_crop`: aligned on the detector's landmarks). A session
    without its frame folder, or a coded frame without its image, is an AnnotationError naming the occurrence
    file and line. Existing crops are kept unless `overwrite`.
    """
    written = without_face = 0
    for session in read_sessions(root):
        folder = pathlib.Path(frames) / session.subject / session.task
        if not folder.is_dir():
            raise AnnotationError(session.path, 1, f"the frame folder {folder} of this session", "no such folder")
        images = _frame_images(folder)
        for frame, number in zip(session.frames, session.lines):
            out = crop_path(crops, session.name, int(frame))
            if out.exists() and not overwrite:
                continue
            image = cv2.imread(str(images[frame]), cv2.IMREAD_COLOR) if frame in images else None
            if image is None:
                raise AnnotationError(
                    session.path, int(number), f"an image of frame {frame} in {folder}", "no such (readable) file"
                )
            chosen = faces.select_faces(detector(image), image.shape[1]).get("")
            if chosen is None:
                without_face += 1
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            crop = faces.face_crop(image, chosen, size=size)
            if not cv2.imwrite(str(out), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                raise OSError(f"{out}: could not write the crop")
            written += 1
        logging.info("BP4D %s: %d crops written so far, %d frames without a face", session.name, written, without_face)
    return written, without_face


def labelled_frames(
    root: str | os.PathLike, crops: str | os.PathLike, subjects: tuple[str, ...], task: str = "AU"
) -> frame_pipeline.LabelledFrames:
    """The cropped coded frames of `subjects` with AU labels (-1 where not coded: masked per AU).

    Coded frames without a crop (no face found) are left out and counted in the log; a session of these subjects
    without any crop folder is an AnnotationError (run `prepare_crops`).
    """
    if tasks.get_task(task).name != "AU":
        raise ValueError(f"BP4D labels action units, not {task}")
    sessions = read_sessions(root)
    known = {s for part in PARTS for s in part}
    for session in sessions:
        if session.subject not in known:
            raise LayoutError(f"{session.path}: subject {session.subject} is in none of the 3-fold parts {PARTS}")
    paths, labels, names, frames, without = [], [], [], [], 0
    for session in (s for s in sessions if s.subject in subjects and len(s.frames)):
        folder = pathlib.Path(crops) / session.name
        if not folder.is_dir():
            raise AnnotationError(
                session.path,
                1,
                f"a crop folder {folder} (python -m data_prep.prepare_sources --source=bp4d writes it)",
                "no such folder",
            )
        for frame, row in zip(session.frames, session.labels):
            path = crop_path(crops, session.name, int(frame))
            if not path.is_file():
                without += 1
                continue
            paths.append(str(path))
            labels.append(row)
            names.append(session.name)
            frames.append(int(frame))
    if not paths:
        raise LayoutError(f"no cropped coded frame of subjects {list(subjects)} in {crops}")
    logging.info(
        "BP4D: %d cropped coded frames of %d subjects, %d coded frames without a crop",
        len(paths),
        len(subjects),
        without,
    )
    return frame_pipeline.LabelledFrames(
        task="AU",
        paths=np.array(paths, object),
        labels=np.array(labels, np.int32),
        valid=np.ones(len(paths), bool),
        names=np.array(names, object),
        frames=np.array(frames, np.int64),
    )


def train_and_evaluation_frames(
    root: str | os.PathLike, crops: str | os.PathLike, fold: int = 1
) -> tuple[frame_pipeline.LabelledFrames, frame_pipeline.LabelledFrames]:
    """(training frames, evaluation frames) of fold 1, 2 or 3 (`FOLDS`)."""
    train, test = fold_subjects(fold)
    return labelled_frames(root, crops, train), labelled_frames(root, crops, test)
