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
        "00001.jpg", "00002.jpg", "00003.jpg"]

    (frames / "2.png").write_bytes(b"not a png")  # the source breaks; a rerun must not half-replace it
    cv2.imwrite(str(frames / "4.png"), face_frame)
    second = faces.crop_sources([], [frames], out, detector, size=64)
    assert f"{frames / '2.png'}: not a readable image (frame 2 of {frames})" in second.failed["clip"]
    assert sorted(p.name for p in (out / "clip").iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["clip"]


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
    result = subprocess.run([sys.executable, "-m", "data_prep.crop_faces", f"--videos={videos}",
                             f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=REPO,
                            env={k: v for k, v in os.environ.items() if k != "ABAW_JAX_TRACEBACK"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {videos}: no video with a supported extension {list(faces.VIDEO_EXTENSIONS)} in this folder; "
        "found ['.mpg']")
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
