"""Loading an encoder for fine-tuning / features from our folders, official .pth files and pretraining workdirs."""

import os

import jax
import numpy as np
import pytest

from abaw_jax.models import encoders, params_io
from abaw_jax.models import torch_weights as tw
from abaw_jax.models.mae import mae_config


@pytest.fixture(scope="module")
def mae_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    config = mae_config("tiny", image_size=32, patch_size=8)
    params = params_io.init_params(config, seed=3)
    params_io.save_params(str(root / "workdir" / "export" / "encoder"), params["encoder"], config.encoder)
    return root, config, params


def test_workdir_and_official_pth_give_the_same_encoder(mae_dir):
    root, config, params = mae_dir
    from_workdir = encoders.load_encoder(str(root / "workdir"), num_classes=8)
    pth = str(root / "encoder.pth")
    tw.save_official_checkpoint(tw.flax_to_official(params["encoder"]), pth)
    from_pth = encoders.load_encoder(pth, num_classes=8)
    assert from_workdir.config == from_pth.config
    assert from_workdir.config.pool == "gap" and from_workdir.config.num_classes == 8
    assert from_workdir.config.width == 192 and from_workdir.config.image_size == 32
    assert set(from_workdir.fresh_keys) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    for a, b, c in zip(
        jax.tree.leaves(from_workdir.params["blocks_1"]),
        jax.tree.leaves(from_pth.params["blocks_1"]),
        jax.tree.leaves(params["encoder"]["blocks_1"]),
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert from_workdir.kind == "abaw_jax" and from_pth.kind == "official"
    assert len(from_pth.sha256) == 64
    assert from_workdir.source.endswith("export/encoder")
    (root / "workdir" / "train.log").write_text("a log line changes nothing")
    assert encoders.load_encoder(str(root / "workdir"), num_classes=8).sha256 == from_workdir.sha256


def test_bad_sources_are_named(mae_dir, tmp_path):
    root, _, params = mae_dir
    os.makedirs(tmp_path / "run" / "checkpoints")
    with pytest.raises(encoders.EncoderLoadError, match="without export/encoder"):
        encoders.load_encoder(str(tmp_path / "run"))
    state = tw.flax_to_official(params["encoder"])
    del state["blocks.2.mlp.fc1.weight"]
    tw.save_official_checkpoint(state, str(tmp_path / "cut.pth"))
    with pytest.raises(
        encoders.EncoderLoadError, match=r"cut\.pth: not a complete ViT encoder; missing blocks\.2\.mlp\.fc1\.weight$"
    ):
        encoders.load_encoder(str(tmp_path / "cut.pth"))
    with pytest.raises(encoders.EncoderLoadError, match="no such file"):
        encoders.load_encoder(str(tmp_path / "nothing.pth"))


def _make_files(root, files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not name.endswith("/"):
            path.write_text('{"job": "fusion"}' if path.name == "stage.json" else "{}")


@pytest.mark.parametrize(
    "files, says",
    [
        (
            ["checkpoints/", "export/export.json", "export/ensemble.msgpack", "scores.json", "predictions/"],
            "is a fusion workdir: its export/ holds TMF ensemble members",
        ),
        (["checkpoints/", "stage.json"], "is a fusion workdir"),  # a pipeline's fusion stage
        (["expr/manifest.json", "logmel_mfcc/"], "is a feature-extraction workdir"),
        (["results.json", "submissions/"], "is an evaluation workdir"),
        (["mae/stage.json", "finetune_au/"], "is a pipeline workdir: give one of its stage folders"),
    ],
)
def test_a_workdir_of_another_job_is_named_for_what_it_is(tmp_path, files, says):
    """A fusion workdir was called "a pretraining workdir without export/encoder" with advice to rerun it."""
    _make_files(tmp_path / "run", files)
    with pytest.raises(encoders.EncoderLoadError) as caught:
        encoders.load_encoder(str(tmp_path / "run"))
    message = str(caught.value)
    assert says in message and "expected a pretraining or fine-tuning workdir" in message
    assert "rerun" not in message and "pretraining workdir without" not in message


def test_an_unfinished_finetuning_run_is_not_called_pretraining(tmp_path):
    _make_files(tmp_path / "run", ["checkpoints/", "best.json"])
    with pytest.raises(
        encoders.EncoderLoadError,
        match="is a fine-tuning workdir without export/encoder: the run has not finished; rerun its command",
    ):
        encoders.load_encoder(str(tmp_path / "run"))
