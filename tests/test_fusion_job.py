"""The fusion job end to end on the synthetic release, with a feature store built here from its crops and videos."""

import json
import pathlib
import re
import shutil

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_jax import tasks
from abaw_jax.data import affwild2, features, predictions
from abaw_jax.jobs import fusion as fusion_job
from abaw_jax.media import audio
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.errors import JobError
from configs import fusion as fusion_configs
from conftest import damage_newest_checkpoint, finished_checkpoints, stop_requested_after

PIXELS = 16


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Each run jits the job's steps anew; the persistent cache lets reruns of the same program skip XLA."""
    saved = {
        k: getattr(jax.config, k)
        for k in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes",
        )
    }
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for key, value in saved.items():
        jax.config.update(key, value)


@pytest.fixture(scope="module")
def feature_store(synthetic_affwild2, tmp_path_factory) -> pathlib.Path:
    """`pix`: 16x16 grayscale pixels of every crop (a cheap visual set); `logmel_mfcc`: abaw_jax.media.audio's
    spectral features of every video."""
    store = tmp_path_factory.mktemp("fusion_store")
    writer = features.VisualSetWriter(
        store / "pix", dim=PIXELS * PIXELS, dtype="float32", encoder={"kind": f"gray{PIXELS}"}
    )
    for crop_dir in sorted((synthetic_affwild2 / "cropped_aligned").iterdir()):
        frames = affwild2.list_crops(crop_dir)
        pixels = [
            cv2.resize(
                cv2.imread(str(crop_dir / f"{k:05d}.jpg"), cv2.IMREAD_GRAYSCALE),
                (PIXELS, PIXELS),
                interpolation=cv2.INTER_AREA,
            ).reshape(-1)
            / 255.0
            for k in frames
        ]
        writer.write(crop_dir.name, frames, np.stack(pixels).astype(np.float32), num_frames=int(frames.max()))
    report = audio.extract_all(
        sorted((synthetic_affwild2 / "videos").glob("*.mp4")),
        store / "wav",
        store / "logmel_mfcc",
        audio.SpectralFeatures(),
    )
    assert not report.failed and not report.no_audio
    shutil.rmtree(store / "wav")
    return store


def _config(task, store, root, **overrides):
    config = fusion_configs.get_config(f"{task.lower()}_tiny")
    config.features_dir = str(store)
    config.visual_sets = "pix"
    config.data.root = str(root)
    config.clip_len, config.eval_stride, config.batch_clips = 32, 16, 8
    config.num_epochs = 12
    config.model.depth, config.model.width, config.model.mlp_dim, config.model.proj_dim = 1, 32, 32, 64
    config.log_every = 1000
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        assert leaf in target, key
        target[leaf] = value
    return config


def _labels(root, task, tracks):
    """Valid labels of `tracks`, read from the release and aligned with the predictions' face masks."""
    task_dir = affwild2.find_task_dir(root / "annotations", task.name)
    values = []
    for track in tracks:
        path = next(p for split in affwild2.SPLITS for p in [task_dir / split / f"{track}.txt"] if p.exists())
        labels, valid = affwild2.parse_annotation_file(path, task.name)
        values.append((labels, valid))
    return values


def _constant_baseline(task, labels):
    """The best constant prediction's metric on these frames (sklearn for F1; a constant has CCC 0)."""
    if task.kind == "continuous":
        return 0.0
    if task.kind == "multiclass":
        return max(
            f1_score(labels, np.full_like(labels, c), labels=range(8), average="macro", zero_division=0)
            for c in range(8)
        )
    return float(
        np.mean(
            [
                max(f1_score(labels[:, j], np.full(len(labels), c), zero_division=0) for c in (0, 1))
                for j in range(labels.shape[1])
            ]
        )
    )


@pytest.mark.parametrize("task_name", ["AU", "EXPR", "VA"])
def test_tiny_members_beat_a_constant_and_write_predictions(task_name, feature_store, synthetic_affwild2, tmp_path):
    task = tasks.get_task(task_name)
    result = fusion_job.run(_config(task_name, feature_store, synthetic_affwild2), str(tmp_path))
    read = predictions.Predictions(tmp_path / "predictions")
    fold_members = [f"fold{k}" for k in range(1, 6)]
    assert set(read.members) == {"official", *fold_members, "whole", "reaction"}

    # Out-of-fold predictions cover every labelled track exactly once; rows = annotation rows.
    labelled = read.tracks("Train_Set") + read.tracks("Validation_Set")
    assert sorted(labelled) == sorted(
        p.stem
        for s in affwild2.SPLITS
        for p in (affwild2.find_task_dir(synthetic_affwild2 / "annotations", task_name) / s).glob("*.txt")
    )
    for track, (labels, valid) in zip(labelled, _labels(synthetic_affwild2, task, labelled)):
        read.out_of_fold_member(track, fold_members)
        assert read.num_frames(track) == len(labels)
    template = affwild2.read_submission_template(
        synthetic_affwild2 / "test_set/prediction_files_format" / task.example_file, task_name
    )
    for track in read.tracks("test"):
        assert read.num_frames(track) == len(template.frames_of(track))
        assert read.role("whole", track) == "test"

    # Each member with held-out videos beats the best constant on them (frames with a face and a label).
    for member in ["official", *fold_members]:
        tracks = read.tracks_with_role(member, "heldout")
        assert sorted(tracks) == sorted(result["members"][member]["heldout"])
        outputs, labels = [], []
        for track, (track_labels, valid) in zip(tracks, _labels(synthetic_affwild2, task, tracks)):
            keep = valid & read.face_mask(track)
            outputs.append(read.outputs(member, track)[keep])
            labels.append(track_labels[keep])
        outputs, labels = np.concatenate(outputs), np.concatenate(labels)
        if task.kind == "multiclass":
            np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
            ours = f1_score(labels, outputs.argmax(axis=1), labels=range(8), average="macro", zero_division=0)
        elif task.kind == "binary":
            ours = np.mean([f1_score(labels[:, j], outputs[:, j] >= 0.5, zero_division=0) for j in range(12)])
        else:
            assert np.abs(outputs).max() <= 1.0
            ccc = [
                2
                * np.cov(outputs[:, j], labels[:, j], bias=True)[0, 1]
                / (outputs[:, j].var() + labels[:, j].var() + (outputs[:, j].mean() - labels[:, j].mean()) ** 2)
                for j in range(2)
            ]
            ours = np.mean(ccc)
        np.testing.assert_allclose(ours, result["heldout"][member]["metric"], rtol=1e-4, atol=1e-6)
        assert ours > _constant_baseline(task, labels) + 0.01, (member, ours, _constant_baseline(task, labels))
    assert (tmp_path / "tables.txt").read_text().count("official") >= 1


def test_resume_and_checkpoints_of_another_feature_dimension(feature_store, synthetic_affwild2, tmp_path, capsys):
    config = _config("EXPR", feature_store, synthetic_affwild2, num_epochs=1, members="official,whole")
    fusion_job.run(config, str(tmp_path))
    steps = int(re.search(r"(\d+) steps/epoch", capsys.readouterr().out).group(1))
    config.num_epochs = 2
    fusion_job.run(config, str(tmp_path))  # resumes after epoch 1 and trains epoch 2 only
    out = capsys.readouterr().out
    assert f"at step {steps}\n" in out and "epoch 1/2" not in out and "epoch 2/2" in out
    straight = tmp_path / "straight"
    fusion_job.run(config, str(straight))
    resumed = predictions.Predictions(tmp_path / "predictions")
    fresh = predictions.Predictions(straight / "predictions")
    for track in fresh.tracks():
        np.testing.assert_allclose(resumed.outputs("whole", track), fresh.outputs("whole", track), rtol=1e-5, atol=1e-6)
    config.audio_sets = ""  # 256 features: the checkpoint's model took 256 + 84
    with pytest.raises(JobError, match="different model"):
        fusion_job.run(config, str(tmp_path))


def test_bad_inputs_are_named(feature_store, synthetic_affwild2, tmp_path, monkeypatch):
    with pytest.raises(JobError, match=r"name \['hubert'\], which the store .* lacks; it has \['logmel_mfcc', 'pix'\]"):
        fusion_job.run(_config("EXPR", feature_store, synthetic_affwild2, audio_sets="hubert"), str(tmp_path))
    with pytest.raises(JobError, match="config.visual_sets names \\['logmel_mfcc'\\], which are not visual"):
        fusion_job.run(_config("EXPR", feature_store, synthetic_affwild2, visual_sets="logmel_mfcc"), str(tmp_path))
    absent = str(tmp_path / "absent_store")
    with pytest.raises(
        JobError,
        match=f"make it with: python -m abaw_jax.main --config=configs/extract_features.py --workdir={absent}$",
    ):
        fusion_job.run(_config("EXPR", absent, synthetic_affwild2), str(tmp_path))
    monkeypatch.setattr(fusion_job, "TINY_FEATURES_DIR", absent)  # the tiny presets' store, not built yet
    with pytest.raises(JobError, match=f"--config=configs/extract_features.py:tiny --workdir={absent}$"):
        fusion_job.run(_config("EXPR", absent, synthetic_affwild2), str(tmp_path))

    # A feature track whose array has another width than its set's manifest says.
    broken = tmp_path / "broken_store"
    shutil.copytree(feature_store / "pix", broken / "pix")
    track = json.loads((broken / "pix" / "manifest.json").read_text())["tracks"]
    name = sorted(track)[0]
    np.save(broken / "pix" / f"{name}.npy", np.zeros((5, PIXELS * PIXELS + 1), np.float32))
    with pytest.raises(JobError, match=rf"{name}.npy: expected shape \(\d+, 256\) .*found \(5, 257\)"):
        fusion_job.run(_config("EXPR", broken, synthetic_affwild2, audio_sets=""), str(tmp_path))

    no_reaction = tmp_path / "reaction.txt"
    no_reaction.write_text("21-30-320x240\nunknown_video\n")  # the test video only: no training video
    with pytest.raises(JobError, match="the reaction list names none of the .* labelled videos"):
        fusion_job.run(
            _config("EXPR", feature_store, synthetic_affwild2, **{"data.reaction_list": str(no_reaction)}),
            str(tmp_path),
        )

    # Validation_Set with every EXPR row invalid: the official member has nothing to be evaluated on.
    annotations = tmp_path / "annotations"
    shutil.copytree(synthetic_affwild2 / "annotations", annotations)
    for path in (annotations / tasks.EXPR.folders[0] / "Validation_Set").glob("*.txt"):
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0]] + ["-1"] * (len(lines) - 1)) + "\n")
    with pytest.raises(JobError, match="member 'official': its .* held-out videos have no labelled EXPR frames"):
        fusion_job.run(
            _config("EXPR", feature_store, synthetic_affwild2, **{"data.annotations": str(annotations)}), str(tmp_path)
        )
    with pytest.raises(JobError, match="config.rng_impl must be one of"):
        fusion_job.run(_config("EXPR", feature_store, synthetic_affwild2, rng_impl="philox"), str(tmp_path))
    with pytest.raises(JobError, match="config.member_learning_rates"):
        fusion_job.run(
            _config("EXPR", feature_store, synthetic_affwild2, member_learning_rates="fold9=1e-3"), str(tmp_path)
        )


def test_non_finite_features_or_training_stop_before_anything_is_exported(
    feature_store, synthetic_affwild2, tmp_path, monkeypatch
):
    store = tmp_path / "nan_store"
    shutil.copytree(feature_store / "pix", store / "pix")
    name = sorted(json.loads((store / "pix" / "manifest.json").read_text())["tracks"])[3]
    values = np.load(store / "pix" / f"{name}.npy")
    values[10:20] = np.nan  # ten bad rows in one file once poisoned every member's every prediction
    np.save(store / "pix" / f"{name}.npy", values)
    with pytest.raises(
        JobError,
        match=rf"{name}.npy: 10 of \d+ rows hold NaN or infinity \(track '{name}', "
        r"frames 11, 12, .*\(10 frames\)\)",
    ):
        fusion_job.run(_config("EXPR", store, synthetic_affwild2, audio_sets=""), str(tmp_path / "run1"))
    assert not (tmp_path / "run1" / "predictions").exists()

    monkeypatch.setattr(fusion_job.losses, "task_loss", lambda *args, **kwargs: jnp.float32(np.nan))
    with pytest.raises(
        JobError,
        match=r"non-finite loss or gradient in \d+ step\(s\) of member\(s\) official "
        r"\(\d+\), whole \(\d+\) at or before step \d+ .*nothing of this run is exported",
    ):
        fusion_job.run(
            _config("EXPR", feature_store, synthetic_affwild2, num_epochs=1, members="official,whole"),
            str(tmp_path / "run2"),
        )
    assert not (tmp_path / "run2" / "predictions").exists() and not (tmp_path / "run2" / "export").exists()


def test_stop_request_saves_a_checkpoint_and_a_damaged_one_falls_back(
    feature_store, synthetic_affwild2, tmp_path, monkeypatch, capsys
):
    config = _config("EXPR", feature_store, synthetic_affwild2, num_epochs=3, members="official,whole")
    fusion_job.run(config, str(tmp_path / "straight"))
    steps = int(re.search(r"(\d+) steps/epoch", capsys.readouterr().out).group(1))
    workdir = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(workdir_lib, "session", stop_requested_after(steps + 1))
        with pytest.raises(
            JobError,
            match=rf"stopped by SIGTERM at step {steps + 1}; saved checkpoint step "
            rf"{steps + 1} in {workdir / 'checkpoints'}: rerun",
        ):
            fusion_job.run(config, str(workdir))
    assert finished_checkpoints(workdir) == [steps, steps + 1]
    assert damage_newest_checkpoint(workdir) == steps + 1
    capsys.readouterr()
    fusion_job.run(config, str(workdir))
    out = capsys.readouterr().out
    assert f"Checkpoint step {steps + 1} in {workdir / 'checkpoints'} is damaged" in out
    assert f"Resumed from {workdir / 'checkpoints'} at step {steps}\n" in out
    resumed, straight = (predictions.Predictions(d / "predictions") for d in (workdir, tmp_path / "straight"))
    for track in straight.tracks():
        np.testing.assert_allclose(
            resumed.outputs("whole", track), straight.outputs("whole", track), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_folds": 1}, "config.num_folds must be an integer >= 2, got 1"),
        ({"learning_rate": -1e-4}, "config.learning_rate must be a finite number > 0, got -0.0001"),
        ({"model.dropout": 1.5}, "config.model.dropout must be a finite number >= 0 and <= 1, got 1.5"),
        ({"model.width": 0}, "config.model.width must be an integer >= 1, got 0"),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(overrides, message, feature_store, synthetic_affwild2):
    with pytest.raises(JobError) as caught:
        fusion_job.validate_config(_config("EXPR", feature_store, synthetic_affwild2, **overrides))
    assert message in str(caught.value)
