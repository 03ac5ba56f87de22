"""Bad inputs to face cropping: a truncated video, an unreadable frame, a folder without supported videos.

A failing source must leave no crops behind (a folder under the output root always holds every frame),
be reported with what was found, and make the command line end with one `error:` line.
"""

import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from abaw_jax.media import faces

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    return cv2.resize(skdata.astronaut()[:, :, ::-1], (256, 256))


@pytest.fixture(scope="module")
def detector():
    return faces.make_detector("haar")


def write_avi(path: pathlib.Path, frames: list[np.ndarray]) -> None:
    """MJPG in AVI: the frame count is in the header, and a cut file still decodes its first frames."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_truncated_video_is_reported_and_leaves_no_crops(tmp_path, face_frame, detector):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_avi(videos / "whole.avi", [face_frame] * 12)
    data = (videos / "whole.avi").read_bytes()
    (videos / "cut.avi").write_bytes(data[: len(data) // 2])
    out = tmp_path / "cropped_aligned"

    report = faces.crop_sources(faces.find_videos([videos]), [], out, detector, size=64)
    assert [s.name for s in report.summaries] == ["whole"] and report.summaries[0].frames == 12
    assert list(report.failed) == ["cut"]
    assert f"{videos / 'cut.avi'}: truncated or damaged: decoded " in report.failed["cut"]
    assert "of the 12 frames its header announces" in report.failed["cut"]
    assert sorted(p.name for p in out.iterdir()) == ["whole"]  # no cut/, no staging folder
    assert len(list((out / "whole").iterdir())) == 12


def test_unreadable_frame_keeps_the_older_complete_folder(tmp_path, face_frame, detector):
    frames = tmp_path / "frames" / "clip"
    frames.mkdir(parents=True)
    for k in (1, 2, 3):
        cv2.imwrite(str(frames / f"{k}.png"), face_frame)
    out = tmp_path / "cropped_aligned"
    first = faces.crop_sources([], [frames], out, detector, size=64)
    assert not first.failed and sorted(p.name for p in (out / "clip").iterdir()) == [
        "00001.jpg",
        "00002.jpg",
        "00003.jpg",
    ]

    (frames / "2.png").write_bytes(b"not a png")  # the source breaks; a rerun must not half-replace it
    cv2.imwrite(str(frames / "4.png"), face_frame)
    second = faces.crop_sources([], [frames], out, detector, size=64)
    assert f"{frames / '2.png'}: not a readable image (frame 2 of {frames})" in second.failed["clip"]
    assert sorted(p.name for p in (out / "clip").iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["clip"]


def test_jpeg_cut_short_with_an_end_marker_is_not_cropped(tmp_path, face_frame, detector):
    """OpenCV decodes such a file with a grey band where its data ends; the strict check refuses it."""
    frames = tmp_path / "frames" / "clip"
    frames.mkdir(parents=True)
    for k in (1, 2):
        cv2.imwrite(str(frames / f"{k}.jpg"), face_frame)
    data = (frames / "2.jpg").read_bytes()
    (frames / "2.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    assert cv2.imread(str(frames / "2.jpg")) is not None  # what the crops would have been cut from
    report = faces.crop_sources([], [frames], tmp_path / "cropped_aligned", detector, size=64)
    assert f"{frames / '2.jpg'}: a damaged image (" in report.failed["clip"]
    assert "frame 2 of" in report.failed["clip"] and not (tmp_path / "cropped_aligned" / "clip").exists()


def test_folder_without_supported_videos_is_an_error(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mpg", "b.flv", "notes.txt"):
        (videos / name).write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as caught:
        faces.find_videos([videos])
    message = str(caught.value)
    assert f"{videos}: no video with a supported extension" in message and "'.mp4'" in message
    assert "found ['.flv', '.mpg', '.txt']" in message


def test_crop_faces_cli_ends_with_one_error_line(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mpg").write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.crop_faces", f"--videos={videos}", f"--out_dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "ABAW_JAX_TRACEBACK"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {videos}: no video with a supported extension {list(faces.VIDEO_EXTENSIONS)} in this folder; "
        "found ['.mpg']"
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def centerface(centerface_weights):
    return faces.make_detector()


def _astronaut_head(side: int) -> np.ndarray:
    """The astronaut's head and shoulders, scaled so her face is about `side` px wide."""
    image = skdata.astronaut()[:, :, ::-1]
    head = image[20:240, 120:330]  # her face spans about 90 px of these 210
    return cv2.resize(head, (round(side * 210 / 90), round(side * 220 / 90)), interpolation=cv2.INTER_AREA)


def test_ten_faces_small_faces_and_a_4k_frame(tmp_path, centerface):
    """Ten faces: the largest is written and the other nine are counted in the summary line; a 16 px face is written
    and counted as small; a 4K frame (shrunk to 640 px for the detector) gives the same aligned crop as a 1080p copy."""
    ten = np.full((260, 640, 3), 90, np.uint8)
    for i in range(10):
        row, col = divmod(i, 5)
        head = _astronaut_head(44 if i else 52)  # the first is the largest
        ten[10 + 125 * row : 10 + 125 * row + head.shape[0], 10 + 125 * col : 10 + 125 * col + head.shape[1]] = head
    assert len(centerface(ten)) == 10
    tiny = np.full((240, 320, 3), 90, np.uint8)
    head = _astronaut_head(16)
    tiny[100 : 100 + head.shape[0], 150 : 150 + head.shape[1]] = head
    summary = faces.crop_frames(iter([(1, ten), (2, tiny)]), "crowd", tmp_path, centerface, size=112)
    assert summary.crops == {"crowd": 2} and summary.faces_not_written == 9 and summary.small_faces == 1
    assert "9 more faces found than written" in str(summary) and "1 crops from faces under 20 px" in str(summary)
    first = max(centerface(ten), key=lambda b: b.area)
    assert first.x < 125 and first.y < 125  # the largest face (top-left) is the one written
    assert len(list((tmp_path / "crowd").iterdir())) == 2

    full_hd = np.full((1080, 1920, 3), 90, np.uint8)
    head = _astronaut_head(300)
    full_hd[200 : 200 + head.shape[0], 700 : 700 + head.shape[1]] = head
    uhd = cv2.resize(full_hd, (3840, 2160), interpolation=cv2.INTER_CUBIC)
    (hd_face,), (uhd_face,) = centerface(full_hd), centerface(uhd)
    np.testing.assert_allclose(np.array(uhd_face.landmarks) / 2, hd_face.landmarks, atol=3.0)
    a = faces.face_crop(full_hd, hd_face, size=112).astype(float)
    b = faces.face_crop(uhd, uhd_face, size=112).astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
