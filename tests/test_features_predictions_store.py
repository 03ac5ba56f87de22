"""The feature store (visual + audio sets aligned per frame) and the predictions folder format."""

import json

import numpy as np
import pytest

from abaw_jax.data import features, predictions


def _visual(tmp_path, name="vit", dim=4, encoder=None):
    return features.VisualSetWriter(tmp_path / name, dim=dim, dtype="float32", encoder=encoder or {"sha256": "ab"})


def _audio(tmp_path, video, rows, dim=3):
    folder = tmp_path / "logmel"
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{video}.npy", rows.astype(np.float32))
    (folder / f"{video}.json").write_text(json.dumps({"video": video, "dim": dim, "num_frames": len(rows)}))


def test_store_aligns_visual_and_audio_rows_by_frame(tmp_path):
    writer = _visual(tmp_path)
    frames = np.array([1, 2, 4])
    vis = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    writer.write("10-60-1280x720_left", frames, vis, num_frames=5, corrupt_frames=[3])
    audio_rows = np.arange(18, dtype=np.float32).reshape(6, 3)
    _audio(tmp_path, "10-60-1280x720", audio_rows)

    store = features.FeatureStore({"vit": tmp_path / "vit", "logmel": tmp_path / "logmel"})
    assert store.check(["vit", "logmel"], ["10-60-1280x720_left"]) == 7
    x, face = store.load("10-60-1280x720_left", ["vit", "logmel"], num_frames=6)
    assert x.shape == (6, 7)
    np.testing.assert_array_equal(face, [True, True, False, True, False, False])
    np.testing.assert_array_equal(x[[0, 1, 3], :4], vis)  # frame k is row k-1
    np.testing.assert_array_equal(x[[2, 4, 5], :4], 0)
    np.testing.assert_array_equal(x[:, 4:], audio_rows)  # the pair's half reads the video's audio
    manifest = json.loads((tmp_path / "vit" / "manifest.json").read_text())
    assert manifest["tracks"]["10-60-1280x720_left"] == {"num_frames": 5, "num_faces": 3, "corrupt_frames": [3]}


def test_store_errors_name_the_missing_set_or_track(tmp_path):
    _visual(tmp_path).write("a", np.array([1]), np.ones((1, 4), np.float32), num_frames=1)
    store = features.FeatureStore({"vit": tmp_path / "vit"})
    with pytest.raises(features.FeatureStoreError, match=r"\['hubert'\] are not in the store"):
        store.check(["hubert"])
    with pytest.raises(features.FeatureStoreError, match="lacks 1 tracks, e.g. \\['b'\\]"):
        store.check(["vit"], ["a", "b"])
    with pytest.raises(features.FeatureStoreError, match="does not exist"):
        features.FeatureStore({"x": tmp_path / "nowhere"})


def test_writer_resumes_and_refuses_another_encoder(tmp_path):
    writer = _visual(tmp_path)
    writer.write("a", np.array([1, 2]), np.ones((2, 4), np.float32), num_frames=2)
    again = _visual(tmp_path)
    assert again.done("a") and not again.done("b")
    with pytest.raises(features.FeatureStoreError, match="encoder"):
        _visual(tmp_path, encoder={"sha256": "other"})
    with pytest.raises(features.FeatureStoreError, match="frames must lie in 1..2"):
        again.write("b", np.array([0, 1]), np.ones((2, 4), np.float32), num_frames=2)


def test_predictions_round_trip_and_out_of_fold(tmp_path):
    writer = predictions.PredictionWriter(tmp_path, "EXPR")
    rng = np.random.default_rng(0)
    for track, split in [("v1", "Train_Set"), ("v2", "Validation_Set"), ("t1", "test")]:
        writer.add_track(track, split, rng.uniform(size=7) < 0.8)
    out = {m: rng.dirichlet(np.ones(8), size=7).astype(np.float32) for m in ("fold1", "fold2")}
    writer.write("fold1", "v1", out["fold1"], "heldout")
    writer.write("fold2", "v1", out["fold2"], "train")
    writer.write("fold1", "t1", out["fold1"], "test")
    with pytest.raises(predictions.PredictionsError, match=r"expected outputs of shape \(7, 8\)"):
        writer.write("fold1", "v2", np.zeros((7, 2)), "heldout")
    writer.flush()

    read = predictions.Predictions(tmp_path)
    assert read.task.name == "EXPR" and read.members == ("fold1", "fold2")
    assert read.tracks("test") == ("t1",) and read.num_frames("v2") == 7
    np.testing.assert_array_equal(read.outputs("fold2", "v1"), out["fold2"])
    assert read.out_of_fold_member("v1", ["fold1", "fold2"]) == "fold1"
    with pytest.raises(predictions.PredictionsError, match="held out by no member"):
        read.out_of_fold_member("v2", ["fold1", "fold2"])
    with pytest.raises(predictions.PredictionsError, match=r"no predictions of members \['whole'\]"):
        read.require_members(["fold1", "whole"])
    with pytest.raises(predictions.PredictionsError, match="holds EXPR predictions, not VA"):
        predictions.PredictionWriter(tmp_path, "VA")


def test_visual_track_cut_short_or_not_finite_stops_naming_file_track_and_frames(tmp_path):
    _visual(tmp_path).write("v", np.arange(1, 6), np.ones((5, 4), np.float32), num_frames=5)
    store = features.FeatureStore({"vit": tmp_path / "vit"})
    path = tmp_path / "vit" / "v.npy"
    np.save(path, np.ones((3, 4), np.float32))  # cut short: frames 4 and 5 must not read as "no face"
    with pytest.raises(features.FeatureStoreError, match=rf"{path}: expected shape \(5, 4\).*found \(3, 4\)"):
        store.load("v", ["vit"], num_frames=5)
    values = np.ones((5, 4), np.float32)
    values[1, 0], values[2, 3] = np.nan, np.inf
    np.save(path, values)
    with pytest.raises(
        features.FeatureStoreError, match=r"2 of 5 rows hold NaN or infinity \(track 'v', frames 2, 3\)"
    ):
        store.load("v", ["vit"], num_frames=5)
    np.save(tmp_path / "vit" / "v.mask.npy", np.ones(4, bool))
    with pytest.raises(features.FeatureStoreError, match=r"v.mask.npy: expected shape \(5,\)"):
        store.load("v", ["vit"], num_frames=5)


def test_audio_row_with_infinity_stops_naming_the_video_file(tmp_path):
    rows = np.zeros((6, 3), np.float32)
    rows[4, 1] = -np.inf
    _audio(tmp_path, "clip", rows)
    store = features.FeatureStore({"logmel": tmp_path / "logmel"})
    with pytest.raises(
        features.FeatureStoreError, match=r"logmel/clip.npy: 1 of 6 rows .*track 'clip_left', frame 5\)"
    ):
        store.load("clip_left", ["logmel"], num_frames=6)


def test_predictions_refuse_non_finite_outputs_and_check_what_they_read(tmp_path):
    writer = predictions.PredictionWriter(tmp_path, "AU")
    writer.add_track("v", "Validation_Set", np.ones(4, bool))
    diverged = np.full((4, 12), 0.5, np.float32)
    diverged[2:] = np.nan
    with pytest.raises(predictions.PredictionsError, match=r"member 'fold1' predicted NaN .*track 'v' at frames 3, 4"):
        writer.write("fold1", "v", diverged, "heldout")
    assert not (tmp_path / "fold1").exists()
    writer.write("fold1", "v", np.full((4, 12), 0.5, np.float32), "heldout")
    writer.flush()
    read = predictions.Predictions(tmp_path)
    path = tmp_path / "fold1" / "v.npy"
    for values, match in [
        (np.full((3, 12), 0.5), r"expected shape \(4, 12\).*4 frames of track 'v'.*found \(3, 12\)"),
        (diverged, r"NaN or infinity at frames 3, 4 of track 'v'"),
        (np.full((4, 12), 1.5), r"probabilities outside \[0, 1\] at frames 1, 2, 3, 4"),
    ]:
        np.save(path, values.astype(np.float32))
        with pytest.raises(predictions.PredictionsError, match=match):
            read.outputs("fold1", "v")
    np.save(tmp_path / "faces" / "v.npy", np.ones(7, bool))
    with pytest.raises(predictions.PredictionsError, match=r"faces/v.npy: expected shape \(4,\)"):
        read.face_mask("v")
