"""Aff-Wild2 readers: annotation trees, crop alignment, clips, folds and test-set lists.

On-disk layout (the official ABAW release; `<any name>` is whatever the user unpacked):

  <root>/<any name>/{AU_Detection_Challenge, EXPR_Recognition_Challenge (older release:
      EXPR_Classification_Challenge), VA_Estimation_Challenge}/{Train_Set, Validation_Set}/<name>.txt
  <crops>/<name>/<k:05d>.jpg      k is the 1-based frame index; frames without a detected face have
                                  no file, and annotation files may be longer than the crop list.

`<name>` is a video name or `<video>_left` / `<video>_right` when two people share one video (and
its audio track). Each annotation file has one header line, then row k labels frame k:

  AU    `AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26`, 12 values in {0, 1}; -1 = invalid.
  EXPR  `Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other`, one integer 0..7; -1 = invalid.
  VA    `valence,arousal`, two floats in [-1, 1]; -5 = invalid.

Alignment rule: a `VideoLabels` holds only the frames that have BOTH an annotation row and a crop
(frames without a crop cannot be fed to a visual model, so they are excluded, and counted in
`num_rows - len(frames)`). Invalid rows are kept and masked out by `valid`, so per-frame arrays stay
aligned with the crops for feature extraction and temporal models.

Readers stop (`LayoutError`, `AnnotationError`, FileNotFoundError, each naming the path, what was
expected and what was found) on anything that would make a dataset empty or shift its frames: a crop
folder numbered from 00000.jpg, crops named in another scheme (`1.jpg`, `.JPG`, `.png`, 6 digits), an
empty crop folder or crops tree, a misspelled split folder, a split folder without annotation files, an
annotation file without rows, a video none of whose crops is annotated. Annotation files may be named
`*.txt` in any case. Text files are read as UTF-8 (with or without a byte-order mark), UTF-16 with a byte-order
mark (what Windows editors save as "Unicode"), or else Latin-1 (`read_release_text`); tasks may be named in any
case ("au" or "AU").

Test set: a plain list of names per task and an example submission file per task whose first line
is the submission header and whose rows start with `<name>/<k:05d>.jpg`, every frame in order.
"""

from __future__ import annotations

import codecs
import dataclasses
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

from abaw_jax import tasks
from abaw_jax.media.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from abaw_jax.runtime.errors import ExplainedError

SPLITS = ("Train_Set", "Validation_Set")
PAIR_SUFFIXES = ("_left", "_right")
CROP_PATTERN = re.compile(r"^(\d{5})\.jpg$")
_SUBMISSION_ROW = re.compile(r"^(.+)/(\d{5})\.jpg$")


class LayoutError(ExplainedError, ValueError):
    """Files or folders that do not follow the release's layout; names the path, expected and found."""


class AnnotationError(ExplainedError, ValueError):
    """A malformed Aff-Wild2 file: names the file, the 1-based line, what was expected and found."""

    def __init__(self, path: str | pathlib.Path, line: int, expected: str, found: str):
        super().__init__(f"{path}:{line}: expected {expected}, found {found!r}")
        self.path, self.line, self.expected, self.found = pathlib.Path(path), line, expected, found


@dataclasses.dataclass(frozen=True)
class VideoLabels:
    """One annotation file aligned with its crops; every array has one row per kept frame.

    Attributes:
      name: annotation name, e.g. `10-60-1280x720_right`.
      task: "AU", "EXPR" or "VA".
      split: the folder it came from, "Train_Set" or "Validation_Set".
      source_video: the video (and audio track) the name refers to, `_left`/`_right` stripped.
      frames: (N,) 1-based frame indices that have both an annotation row and a crop.
      labels: AU (N, 12) int8 in {0, 1, -1}; EXPR (N,) int64 in 0..7 or -1; VA (N, 2) float32.
      valid: (N,) bool, False where the row holds the invalid marker.
      crop_paths: the N crop files, in frame order.
      num_rows: annotated rows in the file (frames without a crop make this larger than N).
      path: the annotation file.
    """

    name: str
    task: str
    split: str
    source_video: str
    frames: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    crop_paths: tuple[pathlib.Path, ...]
    num_rows: int
    path: pathlib.Path

    def __len__(self) -> int:
        return len(self.frames)


@dataclasses.dataclass(frozen=True)
class Clips:
    """Fixed-length windows over a video: `index` (C, L) row indices, `mask` (C, L) False on padding."""

    index: np.ndarray
    mask: np.ndarray

    def gather(self, values: np.ndarray) -> np.ndarray:
        """(C, L, ...) clips of a per-frame array; padded positions are zero."""
        clips = np.asarray(values)[self.index]
        return np.where(self.mask.reshape(self.mask.shape + (1,) * (clips.ndim - 2)), clips, 0)


@dataclasses.dataclass(frozen=True)
class FoldSplit:
    train: tuple[str, ...]
    validation: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SubmissionTemplate:
    """An example submission file: its header line and the (name, frame) of every row, in order."""

    task: str
    header: str
    names: tuple[str, ...]
    frames: np.ndarray

    def frames_of(self, name: str) -> np.ndarray:
        return self.frames[np.asarray(self.names) == name]


def source_video(name: str) -> str:
    """The video (and audio) of an annotation name: `10-60-1280x720_right` -> `10-60-1280x720`."""
    for suffix in PAIR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_release_text(path: str | pathlib.Path) -> str:
    """The text of an annotation, list or example submission file, whichever encoding a tool saved it in.

    UTF-8 (a BOM is dropped), UTF-16 with its byte-order mark, otherwise Latin-1, which decodes any byte: the
    rows hold digits and ASCII names, so a stray byte then fails the row's own check, which names the line.
    UTF-16 without a byte-order mark cannot be told from binary data and is an AnnotationError.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise AnnotationError(
                path, 1, "UTF-16 text after its byte-order mark", f"undecodable bytes at offset {e.start}"
            ) from e
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise AnnotationError(
            path,
            line,
            "a text file (UTF-8, Latin-1, or UTF-16 with a byte-order mark)",
            "NUL bytes (UTF-16 without a byte-order mark, or not a text file): save it as UTF-8",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def find_task_dir(root: str | pathlib.Path, task: str) -> pathlib.Path:
    """The `<task>_Challenge` folder under `root` or under any folder directly inside it."""
    root = pathlib.Path(root)
    folders = tasks.get_task(task).folders
    candidates = [d for folder in folders for d in (root / folder, *root.glob(f"*/{folder}")) if d.is_dir()]
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"expected exactly one of {folders} in {root} or one level below, found {[str(c) for c in candidates]}"
        )
    return candidates[0]


def parse_annotation_file(path: str | pathlib.Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, valid) for every row of an annotation file; row k is frame k + 1."""
    path = pathlib.Path(path)
    task = tasks.get_task(task).name
    header = tasks.get_task(task).header
    lines = read_release_text(path).splitlines()
    if not lines or lines[0].strip() != header:
        raise AnnotationError(path, 1, f"the {task} header {header!r}", lines[0] if lines else "")
    parse_row = {"AU": _parse_au_row, "EXPR": _parse_expr_row, "VA": _parse_va_row}[task]
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise AnnotationError(path, 2, f"one row of {task} labels per frame after the header", "")
    rows = [parse_row(path, number, line.strip()) for number, line in enumerate(lines[1:], start=2)]
    dtype, width = {
        "AU": (np.int8, (tasks.AU.values_per_row,)),
        "EXPR": (np.int64, ()),
        "VA": (np.float32, (tasks.VA.values_per_row,)),
    }[task]
    labels = np.array([r for r, _ in rows], dtype).reshape((len(rows),) + width)
    return labels, np.array([v for _, v in rows], bool)


def _parse_au_row(path: pathlib.Path, number: int, line: str) -> tuple[list[int], bool]:
    fields = line.split(",")
    expected = f"{tasks.AU.values_per_row} comma-separated values in {{0, 1, -1}}"
    if len(fields) != tasks.AU.values_per_row:
        raise AnnotationError(path, number, expected, line)
    try:
        values = [int(f) for f in fields]
    except ValueError:
        raise AnnotationError(path, number, expected, line) from None
    if any(v not in (0, 1, -1) for v in values):
        raise AnnotationError(path, number, expected, line)
    return values, -1 not in values


def _parse_expr_row(path: pathlib.Path, number: int, line: str) -> tuple[int, bool]:
    expected = f"one integer in 0..{tasks.EXPR.num_outputs - 1} or -1"
    try:
        value = int(line)
    except ValueError:
        raise AnnotationError(path, number, expected, line) from None
    if not -1 <= value < tasks.EXPR.num_outputs:
        raise AnnotationError(path, number, expected, line)
    return value, value != -1


def _parse_va_row(path: pathlib.Path, number: int, line: str) -> tuple[list[float], bool]:
    expected = "two comma-separated floats in [-1, 1] (or -5 for invalid)"
    fields = line.split(",")
    if len(fields) != 2:
        raise AnnotationError(path, number, expected, line)
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise AnnotationError(path, number, expected, line) from None
    if any(not (-1.0 <= v <= 1.0 or v == -5.0) for v in values):
        raise AnnotationError(path, number, expected, line)
    return values, -5.0 not in values


def list_crops(crop_dir: str | pathlib.Path) -> np.ndarray:
    """Sorted 1-based frame indices of the `<k:05d>.jpg` crops in `crop_dir`.

    Files that are not images are ignored. Raises LayoutError when the folder holds no crop, a frame 0
    (a 0-based folder would shift every label by one) or images named in another scheme.
    """
    crop_dir = pathlib.Path(crop_dir)
    frames, others = [], []
    for p in crop_dir.iterdir():
        if m := CROP_PATTERN.match(p.name):
            frames.append(int(m.group(1)))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            others.append(p.name)
    expected = "crops named <k:05d>.jpg with k the 1-based frame index (00001.jpg, 00002.jpg, ...)"
    if others:
        examples = ", ".join(sorted(others)[:3])
        raise LayoutError(
            f"{crop_dir}: expected {expected}, found {len(others)} image(s) named otherwise "
            f"({examples}{', ...' if len(others) > 3 else ''}); rename them"
        )
    if not frames:
        raise LayoutError(f"{crop_dir}: expected {expected}, found no crop in this folder")
    if 0 in frames:
        raise LayoutError(
            f"{crop_dir / '00000.jpg'}: expected {expected}; frame 0 does not exist, so this "
            "folder looks numbered from 0: renumber its files from 00001.jpg"
        )
    return np.array(sorted(frames), np.int64)


def load_video_labels(
    path: str | pathlib.Path, task: str, crops_root: str | pathlib.Path, split: str = ""
) -> VideoLabels:
    """Parses one annotation file and keeps the frames that have a crop in `crops_root/<name>/`."""
    path = pathlib.Path(path)
    task = tasks.get_task(task).name
    name = path.stem
    crop_dir = pathlib.Path(crops_root) / name
    if not crop_dir.is_dir():
        raise FileNotFoundError(f"{path}: no crop folder {crop_dir} for this annotation file")
    labels, valid = parse_annotation_file(path, task)
    crops = list_crops(crop_dir)
    frames = crops[crops <= len(labels)]
    if not len(frames):
        raise LayoutError(
            f"{path}: its {len(labels)} rows label frames 1..{len(labels)}, but the crops in "
            f"{crop_dir} are frames {crops[0]}..{crops[-1]}: no frame has both"
        )
    return VideoLabels(
        name=name,
        task=task,
        split=split,
        source_video=source_video(name),
        frames=frames,
        labels=labels[frames - 1],
        valid=valid[frames - 1],
        crop_paths=tuple(crop_dir / f"{k:05d}.jpg" for k in frames),
        num_rows=len(labels),
        path=path,
    )


def load_task(
    root: str | pathlib.Path, task: str, crops_root: str | pathlib.Path, splits: Sequence[str] | None = None
) -> dict[str, VideoLabels]:
    """All videos of a task in `splits`, keyed by annotation name (sorted by split, then name).

    `splits` None reads whichever of SPLITS exist (at least one must); named splits must all exist.
    """
    if isinstance(splits, str):
        raise TypeError(
            f"splits must be a list of split folder names such as {list(SPLITS)}, got the string "
            f"{splits!r} (write [{splits!r}])"
        )
    task = tasks.get_task(task).name  # "au" as well as "AU"
    task_dir = find_task_dir(root, task)
    crops_root = pathlib.Path(crops_root)
    if crops_root.is_dir() and not any(p.is_dir() for p in crops_root.iterdir()):
        raise LayoutError(
            f"{crops_root}: expected one crop folder per video (<crops>/<name>/<k:05d>.jpg), found no folder"
        )
    if splits is None:
        splits = [split for split in SPLITS if (task_dir / split).is_dir()] or list(SPLITS)
    videos: dict[str, VideoLabels] = {}
    for split in splits:
        split_dir = task_dir / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in task_dir.iterdir() if p.is_dir())
            raise LayoutError(f"{split_dir}: no such split folder; {task_dir} holds {present}, expected {list(SPLITS)}")
        paths = sorted(p for p in split_dir.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
        if not paths:
            found = sorted(p.name for p in split_dir.iterdir())[:5]
            raise LayoutError(
                f"{split_dir}: expected one <name>.txt annotation file per video, found none (holds {found})"
            )
        for path in paths:
            if path.stem in videos:
                raise AnnotationError(
                    path, 1, "each video in one split only", f"{path.stem} also in {videos[path.stem].path}"
                )
            videos[path.stem] = load_video_labels(path, task, crops_root, split)
    return videos


def make_clips(num_frames: int, clip_len: int = 100, stride: int | None = None) -> Clips:
    """Windows of `clip_len` rows every `stride` (default `clip_len`) rows, the last one padded.

    Windows start at 0, stride, 2 stride, ... until one reaches the last frame, so every frame is in
    at least one clip; positions past the end repeat the last row index and are masked out.
    """
    stride = stride or clip_len
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be positive, got {clip_len} and {stride}")
    starts = []
    for start in range(0, num_frames, stride):
        starts.append(start)
        if start + clip_len >= num_frames:
            break
    positions = np.asarray(starts, np.int64)[:, None] + np.arange(clip_len)[None, :]
    positions = positions.reshape(len(starts), clip_len)
    mask = positions < num_frames
    return Clips(index=np.minimum(positions, max(num_frames - 1, 0)), mask=mask)


def kfold_splits(names: Iterable[str], num_folds: int = 5, seed: int = 0) -> list[FoldSplit]:
    """Seeded video-level K-fold: `_left`/`_right` of one video always fall in the same fold."""
    names = sorted(set(names))
    videos = sorted({source_video(n) for n in names})
    if len(videos) < num_folds:
        raise ValueError(f"{num_folds} folds need at least {num_folds} videos, got {len(videos)}")
    order = np.random.default_rng(seed).permutation(len(videos))
    fold_of = {videos[i]: rank % num_folds for rank, i in enumerate(order)}
    return [
        FoldSplit(
            train=tuple(n for n in names if fold_of[source_video(n)] != k),
            validation=tuple(n for n in names if fold_of[source_video(n)] == k),
        )
        for k in range(num_folds)
    ]


def read_video_list(path: str | pathlib.Path) -> tuple[str, ...]:
    """A list of video names, one per line (reaction-video list, test-set list); blank lines skipped."""
    path = pathlib.Path(path)
    names: list[str] = []
    for number, line in enumerate(read_release_text(path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if any(c.isspace() or c in ",/" for c in name):
            raise AnnotationError(path, number, "one video name per line (no spaces, commas or slashes)", line)
        if name in names:
            raise AnnotationError(path, number, "each name once", f"{name} repeated")
        names.append(name)
    return tuple(names)


def is_listed(name: str, videos: Iterable[str]) -> bool:
    """Whether an annotation name or its source video is in a list such as the reaction videos."""
    videos = set(videos)
    return name in videos or source_video(name) in videos


def find_video_file(videos_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    """The raw video (mp4, avi, ...: media.video.VIDEO_EXTENSIONS) holding annotation name `name`; its audio track
    is the same file."""
    tried = [pathlib.Path(videos_dir) / (source_video(name) + ext) for ext in VIDEO_EXTENSIONS]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no video for {name!r}: tried {[str(p) for p in tried]}")


def read_submission_template(path: str | pathlib.Path, task: str) -> SubmissionTemplate:
    """Reads an example submission file: header line, then `<name>/<k:05d>.jpg[,values]` rows.

    Rows carry the location alone or with the task's values (12 AUs, one EXPR class, or valence and
    arousal); only the locations are kept.
    """
    path = pathlib.Path(path)
    task = tasks.get_task(task).name
    lines = read_release_text(path).splitlines()
    header = tasks.get_task(task).submission_header
    if not lines or lines[0].strip() != header:
        raise AnnotationError(path, 1, f"the {task} submission header {header!r}", lines[0] if lines else "")
    num_values = tasks.get_task(task).values_per_row
    names, frames = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        match = _SUBMISSION_ROW.match(fields[0])
        if match is None or len(fields) not in (1, 1 + num_values):
            raise AnnotationError(path, number, f"'<name>/<k:05d>.jpg' then {num_values} value(s) or none", line)
        names.append(match.group(1))
        frames.append(int(match.group(2)))
    return SubmissionTemplate(task=task, header=header, names=tuple(names), frames=np.array(frames, np.int64))
