"""The predictor bundle of the micro pipeline run (conftest `micro_pipeline`): contents, self-containment, reproduction.

The reference for the predictor is what the pipeline itself wrote: evaluate's `final/<track>.npz` (post-processed
scores and labels of its submitted test tracks) and the submission file, computed from the feature store and the
fusion job's predictions; the predictor recomputes everything from the release's crops and the video's audio.
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from test_audio import _tiny_encoder

from abaw_jax import tasks
from abaw_jax.data import affwild2, features
from abaw_jax.eval import scene_router
from abaw_jax.media import align, audio
from abaw_jax.models import fusion
from abaw_jax.predictor import bundle as bundle_lib
from abaw_jax.predictor import predictor as predictor_lib

TASK_KEYS = ("au", "expr", "va")


@pytest.fixture(scope="module")
def predictor(micro_dirs):
    return predictor_lib.Predictor(bundle_lib.load_bundle(micro_dirs.root))


def _test_track(dirs) -> str:
    """A submitted test track with one face in its video (the CLI test compares it with the video's one track)."""
    names = sorted(p.stem for p in pathlib.Path(dirs.evaluate("expr"), "final").glob("*.npz"))
    return next(n for n in names if not n.endswith(("_left", "_right")))


def test_bundle_is_self_contained_and_records_what_the_stages_chose(micro_dirs, micro_release):
    dirs = micro_dirs
    root = pathlib.Path(dirs.predictor)
    for path in root.rglob("*"):
        assert not path.is_symlink(), path
        if path.suffix == ".json":
            assert str(pathlib.Path(dirs.root).parent) not in path.read_text(), f"{path} points outside the bundle"
    description = json.loads((root / bundle_lib.BUNDLE_JSON).read_text())
    assert description["format_version"] == bundle_lib.FORMAT_VERSION
    assert description["crop"] == bundle_lib.DEFAULT_CROP
    assert description["crop"]["template"] == align.TEMPLATE_NAME and description["crop"]["size"] == 112
    np.testing.assert_allclose(description["crop"]["template_points"], align.template(112), atol=1e-4)
    manifests = {
        key: json.loads((pathlib.Path(dirs.features) / key / features.MANIFEST).read_text()) for key in TASK_KEYS
    }
    for key, manifest in manifests.items():
        assert description["visual_sets"][key]["sha256"] == manifest["encoder"]["sha256"]
        assert description["visual_sets"][key]["image_size"] == manifest["encoder"]["config"]["image_size"]
    assert description["audio_sets"] == {
        "logmel_mfcc": {"kind": "logmel_mfcc", "n_mels": 64, "n_mfcc": 20, "window": 1024}
    }
    loaded = bundle_lib.load_bundle(root)
    for key in TASK_KEYS:
        results = json.loads(pathlib.Path(dirs.evaluate(key), "results.json").read_text())
        post = loaded.tasks[key].post
        assert post.sigma == results["tuning"]["sigma"]
        assert post.thresholds == (
            None if results["tuning"]["thresholds"] is None else tuple(results["tuning"]["thresholds"])
        )
        assert post.bias == (None if results["tuning"]["bias"] is None else tuple(results["tuning"]["bias"]))
        scores = json.loads(pathlib.Path(dirs.fusion(key), "scores.json").read_text())
        ensemble = loaded.tasks[key].ensemble
        assert list(ensemble.members) == list(scores["members"])
        assert ensemble.feature_sets == {key: manifests[key]["dim"], "logmel_mfcc": 84}
        assert np.asarray(ensemble.feature_mean).shape == (len(ensemble.members), manifests[key]["dim"] + 84)
    # The router learnt the release's reaction list from the Train_Set videos' statistics; its accuracy is
    # measured on the Validation_Set videos no task trains on, recomputed here from the feature store.
    router = description["scene_router"]
    annotations = pathlib.Path(micro_release) / "annotations"
    split = lambda name: {
        p.stem for key in TASK_KEYS for p in (affwild2.find_task_dir(annotations, key) / name).glob("*.txt")
    }
    train, held_out = split("Train_Set"), split("Validation_Set") - split("Train_Set")
    listed = affwild2.read_video_list(pathlib.Path(micro_release) / "reaction_videos.txt")
    assert router["train_videos"] == len(train) and router["validation_videos"] == len(held_out) > 0
    assert router["train_reaction_videos"] == sum(affwild2.is_listed(v, listed) for v in train) > 0
    feature_set = features.open_set(pathlib.Path(dirs.features) / router["feature_set"], router["feature_set"])
    correct = [
        loaded.router.predict(scene_router.video_statistics(*feature_set.load(v)))[0] == affwild2.is_listed(v, listed)
        for v in sorted(held_out)
    ]
    assert router["validation_accuracy"] == pytest.approx(np.mean(correct))


def test_load_bundle_errors_name_the_folder(micro_dirs, tmp_path):
    with pytest.raises(bundle_lib.BundleError, match=f"{tmp_path}: neither a predictor bundle"):
        bundle_lib.load_bundle(tmp_path)
    copy = tmp_path / "bundle"
    shutil.copytree(micro_dirs.predictor, copy)
    description = json.loads((copy / bundle_lib.BUNDLE_JSON).read_text())
    description["format_version"] = 99
    (copy / bundle_lib.BUNDLE_JSON).write_text(json.dumps(description))
    with pytest.raises(bundle_lib.BundleError, match="format_version 99"):
        bundle_lib.load_bundle(copy)
    # Crops aligned on another template than this code's: the models would see unlike crops.
    description["format_version"] = bundle_lib.FORMAT_VERSION
    description["crop"]["template_points"][2] = [56.0, 60.0]
    (copy / bundle_lib.BUNDLE_JSON).write_text(json.dumps(description))
    with pytest.raises(bundle_lib.BundleError, match="aligned on template 'arcface_112'"):
        bundle_lib.load_bundle(copy)


def test_evaluate_final_outputs_are_the_submission(micro_dirs, micro_release):
    """The reference itself: final/ labels are what the submission file says for the track."""
    track = _test_track(micro_dirs)
    for key in TASK_KEYS:
        task = tasks.get_task(key)
        final = np.load(pathlib.Path(micro_dirs.evaluate(key), "final", f"{track}.npz"))
        lines = (pathlib.Path(micro_dirs.evaluate(key)) / "submissions" / f"{task.name}.txt").read_text().split()
        rows = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:] if line.startswith(f"{track}/")])
        assert rows.shape[0] == len(final["labels"])
        np.testing.assert_allclose(rows.reshape(final["labels"].shape), final["labels"], atol=1e-3)


def test_predictor_on_release_crops_reproduces_evaluate(micro_dirs, micro_release, predictor):
    """(a) the release's crops and the video's audio through the bundle = evaluate's final outputs, frame by frame."""
    track = _test_track(micro_dirs)
    crop_dir = micro_release / "cropped_aligned" / track
    crops = {int(p.stem): p.read_bytes() for p in crop_dir.glob("*.jpg")}
    video = affwild2.find_video_file(micro_release / "videos", track)
    waveform = audio.read_audio(video)
    _, fps = audio.video_frames(video)
    for key in TASK_KEYS:
        final = np.load(pathlib.Path(micro_dirs.evaluate(key), "final", f"{track}.npz"))
        scene = "reaction" if bool(final["is_reaction"]) else "other"
        out = predictor.predict(crops, len(final["scores"]), waveform, fps, scene=scene)
        np.testing.assert_array_equal(out.face, final["face"])
        np.testing.assert_allclose(out.tasks[key].scores, final["scores"], atol=1e-4, rtol=0)
        # Labels: identical (a tie at a threshold within float noise would be the only excuse; there is none here).
        np.testing.assert_array_equal(
            out.tasks[key].labels, final["labels"]
        ) if key != "va" else np.testing.assert_allclose(out.tasks[key].labels, final["labels"], atol=1e-4)


def test_ensemble_export_round_trip(micro_dirs, tmp_path):
    export = fusion.load_ensemble(os.path.join(micro_dirs.fusion("va"), "export"))
    fusion.save_ensemble(str(tmp_path), export)
    again = fusion.load_ensemble(str(tmp_path))
    assert again.config == export.config and again.members == export.members
    for a, b in zip(np.asarray(again.feature_std), np.asarray(export.feature_std)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["hubert", "vggish"])
def test_bundle_carries_the_model_of_an_encoder_audio_set(kind, synthetic_affwild2, weights_file, tmp_path):
    """The paper's audio (Hubert, VGGish): the bundle copies the model files that made the set, and its featurizer,
    with the original files gone, gives the stored features again."""
    source = tmp_path / "models"
    if kind == "hubert":
        model = {"model_dir": _tiny_encoder(source, "hubert", with_extractor=True)}
    else:
        source.mkdir()
        model = {"vggish_weights": shutil.copy(weights_file, source / "vggish.pth")}
    video = sorted((synthetic_affwild2 / "videos").glob("*.mp4"))[0]
    audio.extract_all([video], tmp_path / "wav", tmp_path / "store" / kind, audio.make_featurizer(kind, **model))
    target = tmp_path / "bundle" / "audio_models" / kind
    settings = bundle_lib._audio_settings(features.open_set(tmp_path / "store" / kind), target)
    shutil.rmtree(source)
    assert settings["kind"] == kind and target.is_dir()
    assert all(not str(v).startswith("/") for v in settings.values() if isinstance(v, str))
    loaded = bundle_lib.Bundle(tmp_path / "bundle", {}, {}, {kind: settings}, {}, None, None)
    description = json.loads((tmp_path / "store" / kind / f"{video.stem}.json").read_text())
    again = loaded.featurizer(kind)(audio.read_audio(video), description["num_frames"], description["fps"])
    np.testing.assert_allclose(again, np.load(tmp_path / "store" / kind / f"{video.stem}.npy"), rtol=1e-5, atol=1e-5)
