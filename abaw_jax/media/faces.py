"""Face detection and square face crops in Aff-Wild2's `cropped_aligned/<video>/<k:05d>.jpg` layout.

Frames come from video files (decoded with `cv2.VideoCapture`) or from folders of images (the k-th image
in natural name order, so `2.jpg` before `10.jpg`, is frame k). Each frame is searched for faces with

* OpenCV's Haar frontal-face cascade (default; the cascade file ships with opencv-python 4.x), or
* OpenCV's YuNet (`cv2.FaceDetectorYN`), which needs an ONNX model file that no wheel ships, so it is only
  used when the user names that file.

The largest face is kept and written as `<out>/<video>/<k:05d>.jpg`, k the 1-based frame index. With
`two_faces=True` (videos with two people, annotated as `<video>_left` / `<video>_right`), the two largest
faces are ordered by the x position of their centres and written under `<video>_left` and `<video>_right`;
when only one face is found its side is the half of the frame its centre lies in. Frames without a face
get no file, as in the real release.

A crop is the square of side `margin * max(w, h)` centred on the detected box; parts outside the frame
are filled with black, then the square is resized to `size` x `size`.

A folder under the output root is always complete: crops are written to `<out>/.partial_crops/<name>/`
and moved into place (replacing an older folder of that name) once every frame of the source is done;
a source that fails part-way (an unreadable image, a video that decodes fewer frames than its header
announces, i.e. a truncated file) leaves nothing behind and is reported.
"""
from collections.abc import Collection, Iterator, Sequence
import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import time
from typing import Protocol

from absl import logging
import cv2
import numpy as np

from abaw_jax.media.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
PARTIAL_DIR = ".partial_crops"


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

    def __call__(self, image: np.ndarray) -> list[Box]:
        ...


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
            _to_gray(image),
            scaleFactor=self._scale_factor,
            minNeighbors=self._min_neighbors,
            minSize=self._min_size,
        )
        return [Box(float(x), float(y), float(w), float(h)) for x, y, w, h in found]


class YuNetDetector:
    """OpenCV's YuNet CNN detector loaded from a user-supplied ONNX file."""

    def __init__(
        self, onnx_path: str | os.PathLike, *, score_threshold: float = 0.7, nms_threshold: float = 0.3
    ):
        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(
                f"YuNet model {onnx_path} does not exist; expected the face_detection_yunet ONNX file from "
                "the OpenCV model zoo (no package ships it). Use the Haar detector or download the file."
            )
        self._detector = cv2.FaceDetectorYN.create(
            os.fspath(onnx_path), "", (320, 320), score_threshold, nms_threshold
        )

    def __call__(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        self._detector.setInputSize((width, height))
        _, faces = self._detector.detect(_to_bgr(image))
        if faces is None:
            return []
        # Each row: x, y, w, h, five landmark (x, y) pairs, score.
        return [Box(*map(float, row[:4]), score=float(row[-1])) for row in faces]


def make_detector(kind: str = "haar", yunet_onnx: str | os.PathLike | None = None) -> FaceDetector:
    """Builds the detector named by `kind` ('haar' or 'yunet'; 'yunet' needs `yunet_onnx`)."""
    if kind == "haar":
        return HaarDetector()
    if kind == "yunet":
        if not yunet_onnx:
            raise ValueError("The yunet detector needs the path of its ONNX model file (--yunet_onnx).")
        return YuNetDetector(yunet_onnx)
    raise ValueError(f"Unknown face detector {kind!r}; expected 'haar' or 'yunet'.")


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
    inside = image[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
    square = cv2.copyMakeBorder(
        inside, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_CONSTANT, value=0
    )
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
        raise TruncatedVideoError(f"{path}: truncated or damaged: decoded {k} of the {announced} frames its header "
                                  "announces (re-encode or fetch the file again)")


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
        image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
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
                raise FileNotFoundError(f"{path}: no video with a supported extension {list(VIDEO_EXTENSIONS)} "
                                        f"in this folder; found {others or 'nothing'}")
            videos.extend(found)
        elif path.is_file():
            videos.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such video file or folder.")
    return sorted(videos, key=_natural_key)


@dataclasses.dataclass
class CropSummary:
    """What one video (or image folder) gave: frames read, crops written per output name."""

    name: str
    frames: int = 0
    frames_without_face: int = 0
    crops: dict[str, int] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        crops = ", ".join(f"{name}: {n}" for name, n in sorted(self.crops.items())) or "none"
        return (
            f"{self.name}: {self.frames} frames read, {self.frames - self.frames_without_face} with a "
            f"face, {self.frames_without_face} without; crops written ({crops})"
        )


def crop_frames(
    frames: Iterator[tuple[int, np.ndarray]],
    name: str,
    out_dir: str | os.PathLike,
    detector: FaceDetector,
    *,
    size: int = 224,
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
        for k, frame in frames:
            summary.frames += 1
            chosen = select_faces(detector(frame), frame.shape[1], two_faces=two_faces)
            if not chosen:
                summary.frames_without_face += 1
            for suffix, box in chosen.items():
                target = staging / f"{name}{suffix}"
                target.mkdir(parents=True, exist_ok=True)
                crop = square_crop(frame, box, margin=margin, size=size)
                path = target / f"{k:05d}.jpg"
                if not cv2.imwrite(os.fspath(path), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                    raise IOError(f"{out_dir / path.relative_to(staging)}: OpenCV could not write this crop.")
                summary.crops[name + suffix] = summary.crops.get(name + suffix, 0) + 1
            if log_every and summary.frames % log_every == 0:
                rate = summary.frames / (time.perf_counter() - start)
                logging.info(
                    "%s: %d frames, %d without a face, %.1f frames/s",
                    name, summary.frames, summary.frames_without_face, rate,
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
            report.failed[name] = str(error) + ("; no crops written for it" if isinstance(error, TruncatedVideoError)
                                                else "")
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


@dataclasses.dataclass
class FaceTrack:
    """One person's boxes by 1-based frame index."""

    boxes: dict[int, Box] = dataclasses.field(default_factory=dict)

    def last(self) -> tuple[int, Box]:
        k = max(self.boxes)
        return k, self.boxes[k]


class FaceTracker:
    """Greedy IoU tracking: each frame's boxes, largest first, join the track whose last box overlaps most
    (IoU >= `min_iou`, seen within `max_gap` frames), else start a new track. A box whose centre lies inside a
    larger box of the same frame is a second detection of that face (the Haar cascade gives some) and is dropped."""

    def __init__(self, *, min_iou: float = 0.3, max_gap: int = 30):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.tracks: list[FaceTrack] = []

    def update(self, k: int, boxes: Sequence[Box]) -> None:
        taken: set[int] = set()
        kept: list[Box] = []
        for box in sorted(boxes, key=lambda b: b.area, reverse=True):
            cx, cy = box.center
            if any(o.x <= cx <= o.x + o.w and o.y <= cy <= o.y + o.h for o in kept):
                continue
            kept.append(box)
            best, best_iou = None, self.min_iou
            for i, track in enumerate(self.tracks):
                last_k, last_box = track.last()
                overlap = iou(box, last_box)
                if i not in taken and last_k < k and k - last_k <= self.max_gap and overlap >= best_iou:
                    best, best_iou = i, overlap
            if best is None:
                self.tracks.append(FaceTrack())
                best = len(self.tracks) - 1
            self.tracks[best].boxes[k] = box
            taken.add(best)

    def result(self, min_frames: int = 1) -> list[FaceTrack]:
        """Tracks with at least `min_frames` boxes, ordered by their first frame, then by x."""
        kept = [t for t in self.tracks if len(t.boxes) >= min_frames]
        return sorted(kept, key=lambda t: (min(t.boxes), t.boxes[min(t.boxes)].x))
