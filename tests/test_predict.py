"""`python -m abaw_jax.predict` on the synthetic release's videos, against the pipeline's own outputs; bad inputs.

The micro pipeline run (conftest `micro_pipeline`) is the model. The reference is evaluate's `final/<track>.npz` for the
test track, computed from the release's own crops (aligned on the landmarks the generator drew); the CLI detects
faces in the mp4 with the default detector (CenterFace) and aligns them on its landmarks itself, so its outputs agree
within a looser, stated tolerance.
"""

import csv
import fractions
import pathlib
import subprocess
import sys
import types

import av
import cv2
import numpy as np
import pytest

from abaw_jax import predict, tasks
from abaw_jax.data import affwild2
from abaw_jax.media import faces
from abaw_jax.predictor import bundle as bundle_lib
from abaw_jax.predictor import predictor as predictor_lib

# Crops aligned on CenterFace's landmarks vs the release's crops aligned on the drawn ones (15.4/255 mean pixel
# difference: the detector reads a drawn face's landmarks 0.082 inter-ocular distances off on average), through the
# micro run's trained 16-pixel encoders: how far the CLI may be from the pipeline. VA regresses on the crops directly
# and moves most: its values may differ by 0.15 on average (of a [-1, 1] range) but must follow the pipeline's over
# time.
MEAN_PROBABILITY_TOLERANCE = 0.05
LABEL_AGREEMENT = 0.9
VA_MEAN_TOLERANCE = 0.15
VA_MIN_CORRELATION = 0.8


@pytest.fixture(scope="module")
def predictor(micro_dirs):
    return predictor_lib.Predictor(bundle_lib.load_bundle(micro_dirs.root))


@pytest.fixture(scope="module")
def detector():
    return faces.make_detector()


@pytest.fixture(scope="module")
def test_track(micro_dirs):
    names = sorted(p.stem for p in pathlib.Path(micro_dirs.evaluate("expr"), "final").glob("*.npz"))
    return next(n for n in names if not n.endswith(("_left", "_right")))


def _run(path, predictor, out_dir, detector=None, **kwargs):
    options = dict(scene="auto", draw_video=False, min_track_frames=5, log_every=0) | kwargs
    return predict.predict_video(
        pathlib.Path(path), predictor, detector or faces.make_detector(), pathlib.Path(out_dir), **options
    )


def _frames(path):
    return [frame for _, frame in faces.iter_video_frames(path)]


def _write_video(path, frames, fourcc="mp4v", fps=30):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_cli_on_a_release_video_agrees_with_the_pipeline(
    micro_dirs, micro_release, predictor, detector, test_track, tmp_path
):
    """(b) the default detection + the bundle's aligned crops on the mp4 vs evaluate's final outputs of that track."""
    video = affwild2.find_video_file(micro_release / "videos", test_track)
    summary = _run(video, predictor, tmp_path, detector, draw_video=True)
    assert [t["csv"] for t in summary["tracks"]] == [f"{video.stem}_0.csv"]
    assert summary["audio"] and not summary["partial"] and not summary["variable_frame_rate"]
    assert (tmp_path / f"{video.stem}_0.png").stat().st_size > 0
    assert len(_frames(tmp_path / f"{video.stem}_annotated.mp4")) == summary["frames"]
    with open(tmp_path / f"{video.stem}_0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == predict.columns(("au", "expr", "va"))
    assert [int(r["frame"]) for r in rows] == list(range(1, summary["frames"] + 1))
    np.testing.assert_allclose([float(r["time"]) for r in rows], np.arange(len(rows)) / 30.0, atol=1e-4)

    finals = {
        k: np.load(pathlib.Path(micro_dirs.evaluate(k), "final", f"{test_track}.npz")) for k in ("au", "expr", "va")
    }
    n = len(finals["au"]["scores"])
    assert len(rows) == n
    face = np.array([int(r["face_found"]) for r in rows], bool)
    assert (face == finals["au"]["face"]).mean() >= 0.95
    au = np.array([[float(r[c]) for c in tasks.AU.label_names] for r in rows])
    au_labels = np.array([[int(r[c + "_c"]) for c in tasks.AU.label_names] for r in rows])
    expr = np.array([[float(r[c]) for c in tasks.EXPR.label_names] for r in rows])
    expr_labels = np.array([tasks.EXPR.label_names.index(r["expression"]) for r in rows])
    va = np.array([[float(r[c]) for c in tasks.VA.label_names] for r in rows])
    assert np.abs(au - finals["au"]["scores"]).mean() < MEAN_PROBABILITY_TOLERANCE
    assert np.abs(expr - finals["expr"]["scores"]).mean() < MEAN_PROBABILITY_TOLERANCE
    assert (au_labels == finals["au"]["labels"]).mean() >= LABEL_AGREEMENT
    assert (expr_labels == finals["expr"]["labels"]).mean() >= LABEL_AGREEMENT
    assert np.abs(va - finals["va"]["labels"]).mean() < VA_MEAN_TOLERANCE
    for dim in range(2):
        assert np.corrcoef(va[:, dim], finals["va"]["labels"][:, dim])[0, 1] >= VA_MIN_CORRELATION
    # The CSV's probabilities are the predictor's: rows sum to one per expression, labels match the thresholds.
    np.testing.assert_allclose(expr.sum(1), 1.0, atol=1e-3)
    assert np.all(np.isnan([float(r["face_x"]) if r["face_x"] else np.nan for r in rows]) == ~face)


def test_video_without_a_face_or_audio_and_with_a_corrupt_tail(micro_release, predictor, test_track, tmp_path):
    """(c) partial results that say so."""
    frames = _frames(affwild2.find_video_file(micro_release / "videos", test_track))
    # No face: flat grey frames. A clear warning, no per-frame outputs.
    _write_video(tmp_path / "blank.mp4", [np.full_like(frames[0], 128)] * 20)
    summary = _run(tmp_path / "blank.mp4", predictor, tmp_path / "out")
    assert summary["tracks"] == [] and any("no face found in any of the 20 frames" in w for w in summary["warnings"])
    assert not list((tmp_path / "out").glob("blank_*.csv"))
    assert (tmp_path / "out" / "blank_summary.json").exists()

    # No audio stream (cv2 writes video only) and a corrupt tail (an MJPEG AVI cut at 60%).
    _write_video(tmp_path / "cut.avi", frames, fourcc="MJPG")
    data = (tmp_path / "cut.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(0.6 * len(data))])
    summary = _run(tmp_path / "cut.avi", predictor, tmp_path / "out")
    assert not summary["audio"] and summary["partial"]
    assert any(w.startswith("no audio stream") for w in summary["warnings"])
    assert any(w.startswith("corrupt tail") and "truncated or damaged" in w for w in summary["warnings"])
    with open(tmp_path / "out" / "cut_0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 0 < len(rows) == summary["frames"] < len(frames)


def test_cli_error_lines(micro_dirs, tmp_path):
    """(c) a file that is not a video, and a model folder without a bundle: one `error:` line each."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    for args, expected in (
        ([f"--model={micro_dirs.root}", f"--videos={bad}"], f"{bad}: OpenCV could not open"),
        ([f"--model={tmp_path}", f"--videos={bad}"], f"--model: {tmp_path}: neither a predictor"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "abaw_jax.predict", *args, f"--out_dir={tmp_path / 'out'}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, result.stderr
        assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr
        assert "Traceback" not in result.stderr


def _write_variable_rate_video(path, frames):
    """An mp4 whose frame intervals alternate between 33 ms (5 frames) and 66 ms (5 frames)."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=30)
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    millisecond = fractions.Fraction(1, 1000)  # the muxer may change stream.time_base once it writes
    stream.codec_context.time_base = stream.time_base = millisecond
    pts = np.cumsum([0] + [33 if i % 10 < 5 else 66 for i in range(len(frames) - 1)])
    for frame, t in zip(frames, pts):
        picture = av.VideoFrame.from_ndarray(frame, format="bgr24")
        picture.pts, picture.time_base = int(t), millisecond
        for packet in stream.encode(picture):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return pts / 1000.0


def test_variable_frame_rate_and_two_faces(micro_release, predictor, test_track, tmp_path):
    frames = _frames(affwild2.find_video_file(micro_release / "videos", test_track))[:40]
    times = _write_variable_rate_video(tmp_path / "vfr.mp4", frames)
    summary = _run(tmp_path / "vfr.mp4", predictor, tmp_path / "out")
    assert summary["variable_frame_rate"] and any(w.startswith("variable frame rate") for w in summary["warnings"])
    with open(tmp_path / "out" / "vfr_0.csv", newline="") as f:
        np.testing.assert_allclose([float(r["time"]) for r in csv.DictReader(f)], times, atol=1e-3)

    # A two-person video of the release (crops <video>_left / _right): two tracks, the left one first.
    video = next(
        p
        for p in sorted((micro_release / "videos").glob("*.mp4"))
        if (micro_release / "cropped_aligned" / f"{p.stem}_left").is_dir()
    )
    summary = _run(video, predictor, tmp_path / "two")
    assert len(summary["tracks"]) == 2, summary
    centres = []
    for track in summary["tracks"]:
        with open(tmp_path / "two" / track["csv"], newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["face_found"] == "1"]
        centres.append(np.median([float(r["face_x"]) + float(r["face_w"]) / 2 for r in rows]))
    width = frames[0].shape[1]
    assert centres[0] < width / 2 < centres[1], centres


def test_videos_of_the_same_name_get_distinct_output_names(tmp_path):
    paths = [
        tmp_path / "day1" / "clip.mp4",
        tmp_path / "day2" / "clip.mp4",
        tmp_path / "day2" / "other.mp4",
        tmp_path / "a" / "x" / "talk.mp4",
        tmp_path / "b" / "x" / "talk.mp4",
        tmp_path / "c" / "same.mp4",
        tmp_path / "c" / "same.avi",
        tmp_path / "d" / "CLIP.mp4",
    ]
    names = predict.output_names(paths)
    assert names == {
        paths[0]: "day1_clip",
        paths[1]: "day2_clip",
        paths[2]: "other",
        paths[3]: "a_x_talk",
        paths[4]: "b_x_talk",
        paths[5]: "same_mp4",
        paths[6]: "same_avi",
        paths[7]: "d_CLIP",
    }
    assert predict.output_names([paths[0]]) == {paths[0]: "clip"}


def test_cli_gives_each_folder_its_own_outputs(tmp_path, monkeypatch):
    """`--videos=day1/,day2/` with a clip.mp4 in each: both were processed into one set of files (day2's)."""
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "clip.mp4").write_bytes(b"")
    written = []
    monkeypatch.setattr(predict.bundle_lib, "load_bundle", lambda model: None)
    monkeypatch.setattr(predict.predictor_lib, "Predictor", lambda bundle, batch_size: None)
    monkeypatch.setattr(predict.faces, "make_detector", lambda *args: None)
    monkeypatch.setattr(
        predict,
        "predict_video",
        lambda path, *args, name, **kwargs: (
            written.append(name) or {"frames": 1, "tracks": [], "frames_per_second": 1.0, "warnings": []}
        ),
    )
    # The flag holders main reads (define_flags would clash with other modules' flags in the test session).
    values = dict(
        model="m",
        videos=[str(tmp_path / "day1"), str(tmp_path / "day2")],
        out_dir=str(tmp_path / "out"),
        batch_size=64,
        detector="haar",
        yunet_onnx=None,
        centerface_weights=None,
        scene="auto",
        draw_video=False,
        min_track_frames=5,
        log_every=0,
    )
    cli = types.SimpleNamespace(**{k: types.SimpleNamespace(name=k, value=v) for k, v in values.items()})
    predict.main(["predict"], cli)
    assert sorted(written) == ["day1_clip", "day2_clip"]


def test_out_dir_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "predictions"
    target.write_text("not a folder")
    for out_dir in (target, target / "sub"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "abaw_jax.predict",
                f"--model={tmp_path}",
                f"--videos={tmp_path}",
                f"--out_dir={out_dir}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0] == (
            f"error: --out_dir={out_dir}: {target} is a file, not a folder; give a folder for the "
            "CSV, PNG and summary files (it is created if missing)"
        )
    assert target.read_text() == "not a folder"
