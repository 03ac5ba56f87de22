"""The feature-extraction job on the synthetic release: faithful features, static predictions, audio, resume,
corrupt crops and bad input.

One module-level run extracts two visual sets from random tiny ViTs (32 px): `vit`, our params folder with
an AU head, and `timm`, a timm ViT (global_pool='avg', fc_norm=True) saved as an official-layout .pth;
plus the `logmel_mfcc` audio set. Its crops are a copy of the release's with one crop overwritten by
garbage, one track's crop folder removed and a stray folder added.
"""

import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from abaw_jax import tasks
from abaw_jax.data import affwild2, device_images, features, predictions, release
from abaw_jax.jobs import extract_features
from abaw_jax.media import audio
from abaw_jax.models import params_io
from abaw_jax.models.vit import ViT, ViTConfig
from abaw_jax.runtime.errors import JobError
from abaw_jax.torch_compat import import_torchvision
from configs import extract_features as extract_config

SMALL_VIT = dict(image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, pool="gap")
CORRUPT = ("1-30-320x240", 7)  # (track, frame) overwritten with garbage bytes
NO_CROPS = "105"  # a track whose crop folder is removed


def make_config(root: pathlib.Path, crops: pathlib.Path, encoders: dict, *, heads=None, audio=()):
    config = extract_config.get_config("tiny")
    config.data.root = str(root)
    config.data.crops = str(crops)
    for name, path in encoders.items():
        config.encoders[name] = str(path)
        config.head_tasks[name] = (heads or {}).get(name, "")
    config.sets = tuple(encoders)
    config.audio = tuple(audio)
    config.model.dtype = "float32"
    config.storage_dtype = "float32"
    config.batch_size = 48
    config.decode_threads = 2
    config.log_every = 5
    return config


def save_vit(directory: pathlib.Path, num_classes: int, seed: int) -> tuple[dict, ViTConfig]:
    """A params folder of a small ViT with random weights, LayerNorms and head included (an untrained
    fc_norm, ones and zeros, would hide a skipped fc_norm)."""
    config = ViTConfig(**SMALL_VIT, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (path[-1].key == "scale") + rng.normal(0, 0.2, x.shape).astype(np.float32),
        params_io.abstract_params(config),
    )
    params_io.save_params(str(directory), params, config)
    return params, config


def save_timm_vit(path: pathlib.Path):
    import_torchvision()
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=192,
        depth=2,
        num_heads=3,
        mlp_ratio=4.0,
        global_pool="avg",
        fc_norm=True,
        num_classes=0,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    torch.save({"model": model.state_dict()}, path)
    return model


@pytest.fixture(scope="module")
def extracted(synthetic_affwild2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract")
    crops = tmp / "crops"
    shutil.copytree(synthetic_affwild2 / "cropped_aligned", crops)
    (crops / CORRUPT[0] / f"{CORRUPT[1]:05d}.jpg").write_bytes(b"\x00garbage" * 50)
    shutil.rmtree(crops / NO_CROPS)
    (crops / "stray_track").mkdir()
    shutil.copy(crops / CORRUPT[0] / "00001.jpg", crops / "stray_track" / "00001.jpg")
    vit_params, vit_config = save_vit(tmp / "vit", num_classes=tasks.AU.num_outputs, seed=1)
    timm_model = save_timm_vit(tmp / "timm.pth")
    config = make_config(
        synthetic_affwild2,
        crops,
        {"vit": tmp / "vit", "timm": tmp / "timm.pth"},
        heads={"vit": "AU"},
        audio=("logmel_mfcc",),
    )
    workdir = tmp / "features"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        extract_features.run(config, str(workdir))
    return dict(
        workdir=workdir,
        crops=crops,
        root=synthetic_affwild2,
        config=config,
        log=out.getvalue(),
        vit=(vit_params, vit_config),
        timm=timm_model,
        tmp=tmp,
    )


def decoded(crops: pathlib.Path, track: str, frames) -> np.ndarray:
    """The crops as the job's step sees them (float32 NHWC): decoded at their stored size, resized and normalised
    by `device_images.prepare_images` (checked against PIL and PyTorch in tests/test_device_images.py)."""
    pixels, boxes = device_images.empty_batch(len(frames), 112)
    for row, k in enumerate(frames):
        boxes[row] = device_images.decode_stored((crops / track / f"{k:05d}.jpg").read_bytes(), pixels[row])
    return np.asarray(device_images.prepare_images(pixels, boxes, image_size=32))


def expected_frames(root: pathlib.Path, crops: pathlib.Path, track: str) -> int:
    """The largest of the track's annotation rows, test example frames and last crop index."""
    counts = [
        len(affwild2.parse_annotation_file(p, t.name)[0])
        for t in tasks.TASKS.values()
        for p in root.glob(f"annotations/{t.folders[0]}/*/{track}.txt")
    ]
    counts += [
        int(affwild2.read_submission_template(p, t.name).frames_of(track).max(initial=0))
        for t in tasks.TASKS.values()
        for p in root.glob(f"test_set/prediction_files_format/{t.example_file}")
    ]
    crop_frames = affwild2.list_crops(crops / track) if (crops / track).is_dir() else [0]
    return max(counts + [int(max(crop_frames, default=0))])


def test_features_equal_the_models_own_pooled_feature_of_each_crop(extracted):
    params, config = extracted["vit"]
    visual = features.VisualSet(extracted["workdir"] / "vit")
    feature_of_one_crop = jax.jit(lambda x: ViT(config).apply({"params": params}, x[None], method=ViT.features)[0])
    for track in ("1-30-320x240", "11-30-320x240_left", "101", "21-30-320x240"):
        stored, mask = visual.load(track)
        frames = affwild2.list_crops(extracted["crops"] / track)
        frames = frames[frames != CORRUPT[1]] if track == CORRUPT[0] else frames
        assert stored.shape == (expected_frames(extracted["root"], extracted["crops"], track), 64)
        np.testing.assert_array_equal(np.flatnonzero(mask) + 1, frames)
        assert not stored[~mask].any()
        direct = np.stack([feature_of_one_crop(x) for x in decoded(extracted["crops"], track, frames)])
        np.testing.assert_allclose(stored[frames - 1], direct, atol=2e-5, rtol=1e-5)


def test_official_checkpoint_features_equal_timm_pooled_fc_norm(extracted):
    import torch

    visual = features.VisualSet(extracted["workdir"] / "timm")
    assert visual.manifest["encoder"]["kind"] == "official"
    track = "11-30-320x240_right"
    stored, mask = visual.load(track)
    frames = np.flatnonzero(mask) + 1
    x = torch.from_numpy(decoded(extracted["crops"], track, frames)).permute(0, 3, 1, 2)
    model = extracted["timm"]
    with torch.no_grad():
        tokens = model.forward_features(x)
        reference = model.fc_norm(tokens[:, model.num_prefix_tokens :].mean(dim=1)).numpy()
    assert np.abs(reference).max() > 0.5
    np.testing.assert_allclose(stored[frames - 1], reference, atol=1e-4)


def test_static_predictions_are_the_heads_sigmoid_with_roles(extracted):
    params, config = extracted["vit"]
    preds = predictions.Predictions(extracted["workdir"] / "predictions_vit")
    assert preds.task is tasks.AU and preds.members == ("static",)
    au_dir = extracted["root"] / "annotations" / tasks.AU.folders[0]
    train = sorted(p.stem for p in (au_dir / "Train_Set").glob("*.txt"))
    heldout = sorted(p.stem for p in (au_dir / "Validation_Set").glob("*.txt"))
    assert preds.tracks_with_role("static", "train") == tuple(train)
    assert preds.tracks_with_role("static", "heldout") == tuple(heldout)
    assert len(preds.tracks_with_role("static", "test")) == 1
    track = heldout[0]
    face = preds.face_mask(track)
    assert len(face) == len(affwild2.parse_annotation_file(au_dir / "Validation_Set" / f"{track}.txt", "AU")[0])
    frames = np.flatnonzero(face) + 1
    logits = jax.jit(lambda x: ViT(config).apply({"params": params}, x))(decoded(extracted["crops"], track, frames))
    np.testing.assert_allclose(preds.outputs("static", track)[face], jax.nn.sigmoid(logits), atol=2e-5)
    assert not preds.outputs("static", track)[~face].any()


def test_audio_set_reads_with_the_visual_set_aligned_by_frame(extracted):
    workdir = extracted["workdir"]
    store = features.FeatureStore({"vit": workdir / "vit", "logmel_mfcc": workdir / "logmel_mfcc"})
    track = "11-30-320x240_left"
    num_frames = features.VisualSet(workdir / "vit").manifest["tracks"][track]["num_frames"]
    assert store.check(["vit", "logmel_mfcc"], [track, "11-30-320x240_right"]) == 64 + 84
    x, face = store.load(track, ["vit", "logmel_mfcc"], num_frames)
    audio_rows = np.load(workdir / "logmel_mfcc" / "11-30-320x240.npy")
    visual, mask = features.VisualSet(workdir / "vit").load(track)
    rows = min(num_frames, len(audio_rows))
    assert rows > 70
    np.testing.assert_array_equal(x[:rows, 64:], audio_rows[:rows])
    np.testing.assert_array_equal(x[:, :64], visual)
    np.testing.assert_array_equal(face, mask)


def test_corrupt_crop_is_counted_masked_and_reported(extracted):
    track, frame = CORRUPT
    manifest = features.VisualSet(extracted["workdir"] / "vit").manifest
    assert manifest["tracks"][track]["corrupt_frames"] == [frame]
    _, mask = features.VisualSet(extracted["workdir"] / "vit").load(track)
    assert not mask[frame - 1] and mask[frame - 2]
    assert f"corrupt crop {extracted['crops'] / track / f'{frame:05d}.jpg'}" in extracted["log"]
    assert "1 corrupt and masked" in extracted["log"]
    assert sum(len(t["corrupt_frames"]) for t in manifest["tracks"].values()) == 1


def test_tracks_without_crops_and_stray_folders_are_reported(extracted):
    manifest = features.VisualSet(extracted["workdir"] / "vit").manifest
    assert manifest["tracks"][NO_CROPS]["num_faces"] == 0
    assert (
        manifest["tracks"][NO_CROPS]["num_frames"]
        == expected_frames(extracted["root"], extracted["crops"], NO_CROPS)
        > 0
    )
    assert f"tracks have no crops at all (written with every frame masked): ['{NO_CROPS}']" in extracted["log"]
    assert "stray_track" not in manifest["tracks"] and "e.g. ['stray_track']" in extracted["log"]
    assert "frames/s" in extracted["log"]


def test_rerun_writes_nothing_and_a_track_removed_from_the_manifest_is_redone(extracted, tmp_path, capsys):
    workdir = tmp_path / "features"
    shutil.copytree(extracted["workdir"], workdir)
    config = make_config(
        extracted["root"],
        extracted["crops"],
        {"vit": extracted["tmp"] / "vit"},
        heads={"vit": "AU"},
        audio=("logmel_mfcc",),
    )
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    extract_features.run(config, str(workdir))
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
    assert "0 crops to go" in capsys.readouterr().out

    manifest_path = workdir / "vit" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    redo = "11-30-320x240_left"
    del manifest["tracks"][redo]
    manifest_path.write_text(json.dumps(manifest))
    (workdir / "vit" / f"{redo}.npy").unlink()
    extract_features.run(config, str(workdir))
    assert (
        f"{len(json.loads((extracted['workdir'] / 'vit' / 'manifest.json').read_text())['tracks']) - 1} of"
        in capsys.readouterr().out
    )
    np.testing.assert_array_equal(
        features.VisualSet(workdir / "vit").load(redo)[0],
        features.VisualSet(extracted["workdir"] / "vit").load(redo)[0],
    )
    assert json.loads(manifest_path.read_text()) == json.loads(
        (extracted["workdir"] / "vit" / "manifest.json").read_text()
    )


def test_bad_encoders_are_named(extracted, tmp_path, monkeypatch):
    root, crops = extracted["root"], extracted["crops"]
    with pytest.raises(JobError, match=r"config.encoders.vit: .*nothing.pth: no such file"):
        extract_features.run(make_config(root, crops, {"vit": tmp_path / "nothing.pth"}), str(tmp_path / "w"))
    (tmp_path / "pretrain" / "checkpoints").mkdir(parents=True)
    with pytest.raises(JobError, match="config.encoders.vit: .*without export/encoder"):
        extract_features.run(make_config(root, crops, {"vit": tmp_path / "pretrain"}), str(tmp_path / "w"))
    absent = str(tmp_path / "abaw_mae_tiny")
    monkeypatch.setitem(extract_features._TINY_WORKDIRS, absent, "configs/mae.py:tiny")
    with pytest.raises(JobError, match=f"python -m abaw_jax.main --config=configs/mae.py:tiny --workdir={absent}"):
        extract_features.run(make_config(root, crops, {"mae": absent}), str(tmp_path / "w"))
    shutil.copytree(extracted["tmp"] / "vit", tmp_path / "finetune_expr" / "export" / "encoder")
    (tmp_path / "finetune_expr" / "export" / "finetune.json").write_text(json.dumps({"task": "EXPR"}))
    with pytest.raises(
        JobError,
        match=r"config.head_tasks.vit='AU', but .*finetune_expr/export/encoder was "
        r"fine-tuned for EXPR",
    ):
        extract_features.run(
            make_config(root, crops, {"vit": tmp_path / "finetune_expr"}, heads={"vit": "AU"}), str(tmp_path / "w")
        )
    # A set folder written for another encoder is refused before anything is written.
    save_vit(tmp_path / "other", num_classes=0, seed=5)
    manifest = (extracted["workdir"] / "vit" / "manifest.json").read_text()
    with pytest.raises(
        JobError,
        match="feature set 'vit': .*was written with dim=64.*use another output folder|"
        "feature set 'vit': .*was written with encoder=",
    ):
        extract_features.run(make_config(root, crops, {"vit": tmp_path / "other"}), str(extracted["workdir"]))
    assert (extracted["workdir"] / "vit" / "manifest.json").read_text() == manifest


def test_bad_release_and_config_values_are_named(extracted, tmp_path):
    root, vit = extracted["root"], extracted["tmp"] / "vit"
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match=r"config.data.crops: .*empty holds no <track>/<k:05d>.jpg crops"):
        extract_features.run(make_config(root, tmp_path / "empty", {"vit": vit}), str(tmp_path / "w"))
    config = make_config(root, extracted["crops"], {"vit": vit})
    config.sets = ("vit", "nope")
    with pytest.raises(JobError, match=r"config.sets names 'nope', which has no entry in config.encoders"):
        extract_features.run(config, str(tmp_path / "w"))
    config = make_config(root, extracted["crops"], {"vit": vit})
    config.storage_dtype = "int8"
    with pytest.raises(JobError, match="config.storage_dtype must be"):
        extract_features.run(config, str(tmp_path / "w"))
    config = make_config(root, extracted["crops"], {"vit": vit}, audio=("vit",))
    with pytest.raises(JobError, match=r"feature set names \['vit'\] appear twice"):
        extract_features.run(config, str(tmp_path / "w"))
    config = make_config(root, extracted["crops"], {"vit": vit})
    config.encoders.vit = ""
    with pytest.raises(JobError, match="config.encoders.vit is empty"):
        extract_features.run(config, str(tmp_path / "w"))
    config = make_config(root, extracted["crops"], {"vit": vit}, audio=("logmel_mfcc", "vggish"))
    with pytest.raises(JobError, match=r"config.audio names 'vggish', whose model config.audio_models.vggish is empty"):
        extract_features.run(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_vggish_audio_set_from_the_configured_weights(extracted, weights_file, tmp_path):
    """The paper's VGGish audio through the job's config: the weights file named in config.audio_models."""
    config = make_config(extracted["root"], extracted["crops"], {}, audio=("vggish",))
    config.audio_models.vggish = str(weights_file)
    paths = release.resolve(config.data)
    name, track = sorted(extract_features.collect_tracks(paths).items())[0]
    assert extract_features.extract_audio_sets(("vggish",), config, {name: track}, paths, str(tmp_path)) == []
    video = affwild2.source_video(name)
    description = json.loads((tmp_path / "vggish" / f"{video}.json").read_text())
    assert description["weights"] == str(weights_file) and description["dim"] == 128
    waveform = audio.read_audio(next(paths.videos.glob(f"{video}.*")))
    expected = audio.VGGishFeatures(weights_file)(waveform, description["num_frames"], description["fps"])
    np.testing.assert_allclose(np.load(tmp_path / "vggish" / f"{video}.npy"), expected, rtol=1e-5, atol=1e-6)


def test_cli_on_4_devices_writes_the_same_features_and_predictions(extracted, tmp_path):
    """Batches sharded over 4 devices (the last one padded) give the single-device run's numbers."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    overrides = {
        "data.root": extracted["root"],
        "data.crops": extracted["crops"],
        "sets": "mae",
        "encoders.mae": extracted["tmp"] / "vit",
        "head_tasks.mae": "AU",
        "audio": "()",
        "model.dtype": "float32",
        "storage_dtype": "float32",
        "batch_size": 44,
        "decode_threads": 2,
    }
    args = [
        sys.executable,
        "-m",
        "abaw_jax.main",
        f"--config={repo}/configs/extract_features.py:tiny",
        f"--workdir={tmp_path}",
    ] + [f"--config.{k}={v}" for k, v in overrides.items()]
    result = subprocess.run(args, env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ours, reference = features.VisualSet(tmp_path / "mae"), features.VisualSet(extracted["workdir"] / "vit")
    assert ours.tracks() == reference.tracks()
    for track in ours.tracks():
        np.testing.assert_array_equal(ours.load(track)[1], reference.load(track)[1])
        np.testing.assert_allclose(ours.load(track)[0], reference.load(track)[0], atol=2e-5, rtol=1e-5)
    ours, reference = (
        predictions.Predictions(tmp_path / "predictions_mae"),
        predictions.Predictions(extracted["workdir"] / "predictions_vit"),
    )
    assert ours.manifest["members"] == reference.manifest["members"]
    for track in ours.tracks():
        np.testing.assert_allclose(ours.outputs("static", track), reference.outputs("static", track), atol=2e-5)
