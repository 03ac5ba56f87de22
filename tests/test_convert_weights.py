"""`python -m abaw_jax.convert_weights` end to end on small checkpoints, and our params format."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from abaw_jax import convert_weights
from abaw_jax.models import params_io
from abaw_jax.models import torch_weights as tw
from abaw_jax.models.mae import mae_config
from abaw_jax.models.vit import ViTConfig
from abaw_jax.torch_compat import prepare_torch_imports

prepare_torch_imports()
import torch  # noqa: E402
from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402

# The 'tiny' size (width 192, depth 4; decoder 128 x 2) at 32x32 pixels, patch 8.
TINY = ["--size=tiny", "--image_size=32", "--patch_size=8"]


@pytest.fixture(scope="module")
def hf_model() -> ViTMAEForPreTraining:
    torch.manual_seed(0)
    config = ViTMAEConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        decoder_hidden_size=128,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=512,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-6,
    )
    model = ViTMAEForPreTraining(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)  # distinct values everywhere, so any mix-up of tensors shows
    return model


@pytest.fixture(scope="module")
def official(hf_model) -> dict[str, np.ndarray]:
    return tw.hf_to_official(hf_model.state_dict())


def run_cli(capsys, *args: str) -> str:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["convert_weights", *args])
    try:
        convert_weights.main(["convert_weights"])
    finally:
        flags.FLAGS.unparse_flags()
    return capsys.readouterr().out


def write_official(state: dict[str, np.ndarray], path) -> str:
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 399}, path)
    return str(path)


def assert_tree_equal(params, official_state):
    exported = tw.flax_to_official(params)
    assert sorted(exported) == sorted(official_state)
    for key, value in official_state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_official_mae_to_flax_and_back(official, tmp_path, capsys):
    source = write_official(official, tmp_path / "checkpoint.pth")
    out = run_cli(
        capsys,
        "--direction=to_flax",
        "--source=official",
        f"--input={source}",
        "--model=mae",
        *TINY,
        f"--output={tmp_path / 'ours'}",
    )
    assert f"loaded {len(official)} tensors" in out and "kept fresh init" not in out
    params, config = params_io.load_params(str(tmp_path / "ours"))
    assert config == mae_config("tiny", image_size=32, patch_size=8)
    assert_tree_equal(params, official)

    out = run_cli(
        capsys, "--direction=to_official", f"--input={tmp_path / 'ours'}", f"--output={tmp_path / 'back' / 'mae.pth'}"
    )
    assert f"wrote {len(official)} tensors" in out
    written = torch.load(tmp_path / "back" / "mae.pth", weights_only=True)["model"]
    assert sorted(written) == sorted(official)
    for key, value in official.items():
        np.testing.assert_array_equal(written[key].numpy(), value, err_msg=key)


def test_transformers_folder_and_state_dict(hf_model, official, tmp_path, capsys):
    hf_model.save_pretrained(tmp_path / "hf")
    torch.save(hf_model.state_dict(), tmp_path / "state.bin")
    for source in (tmp_path / "hf", tmp_path / "state.bin"):
        output = tmp_path / f"ours_{source.name}"
        run_cli(
            capsys,
            "--direction=to_flax",
            "--source=hf",
            f"--input={source}",
            "--model=mae",
            *TINY,
            f"--output={output}",
        )
        assert_tree_equal(params_io.load_params(str(output))[0], official)


def test_pretrained_encoder_into_gap_model_non_strict(official, tmp_path, capsys):
    encoder_only = {k: v for k, v in official.items() if not k.startswith(("decoder", "mask_token"))}
    source = write_official(encoder_only, tmp_path / "mae_pretrain.pth")
    out = run_cli(
        capsys,
        "--direction=to_flax",
        f"--input={source}",
        "--model=encoder_gap",
        "--num_classes=5",
        "--strict=false",
        *TINY,
        f"--output={tmp_path / 'gap'}",
    )
    assert "kept fresh init for 4: fc_norm.bias, fc_norm.weight, head.bias, head.weight" in out
    assert "ignored 2 checkpoint keys: norm.bias, norm.weight" in out
    params, config = params_io.load_params(str(tmp_path / "gap"))
    assert config == ViTConfig(
        image_size=32, patch_size=8, width=192, depth=4, num_heads=3, mlp_dim=768, pool="gap", num_classes=5
    )
    np.testing.assert_array_equal(params["blocks_3"]["attn"]["qkv"]["kernel"], official["blocks.3.attn.qkv.weight"].T)
    # Fresh init as the official fine-tuning has it: LayerNorm (1, 0), zero head bias, head weights ~N(0, 2e-5).
    np.testing.assert_array_equal(params["fc_norm"]["scale"], np.ones(192, np.float32))
    np.testing.assert_array_equal(params["fc_norm"]["bias"], np.zeros(192, np.float32))
    np.testing.assert_array_equal(params["head"]["bias"], np.zeros(5, np.float32))
    assert 0 < np.abs(params["head"]["kernel"]).max() < 1e-4


def test_mismatched_checkpoint_exits_naming_keys(official, tmp_path, capsys):
    source = write_official(official, tmp_path / "full.pth")
    with pytest.raises(tw.WeightMismatchError, match=r"not in the model: decoder_blocks\.0\.attn\.proj\.bias"):
        run_cli(
            capsys, "--direction=to_flax", f"--input={source}", "--model=encoder", *TINY, f"--output={tmp_path / 'enc'}"
        )
    with pytest.raises(tw.WeightMismatchError, match=r"cls_token: expected \(1, 1, 768\), found \(1, 1, 192\)"):
        run_cli(
            capsys,
            "--direction=to_flax",
            f"--input={source}",
            "--model=mae",
            "--size=base",
            "--image_size=32",
            "--patch_size=8",
            f"--output={tmp_path / 'base'}",
        )
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_cli(
            capsys, "--direction=to_flax", f"--input={tmp_path / 'absent.pth'}", *TINY, f"--output={tmp_path / 'x'}"
        )
    assert not (tmp_path / "enc").exists() and not (tmp_path / "base").exists()


def test_params_format_round_trip_and_bad_description(tmp_path):
    config = ViTConfig(
        image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, pool="gap", num_classes=3
    )
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), params_io.abstract_params(config)
    )
    params_io.save_params(str(tmp_path / "vit"), params, config)
    restored, restored_config = params_io.load_params(str(tmp_path / "vit"))
    assert restored_config == config
    jax.tree.map(np.testing.assert_array_equal, restored, params)
    with pytest.raises(FileExistsError, match="already exists"):
        params_io.save_params(str(tmp_path / "vit"), params, config)

    description = json.loads((tmp_path / "vit" / "model.json").read_text())
    description["config"]["heads"] = 4
    (tmp_path / "vit" / "model.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"model\.json: ViTConfig has no fields \['heads'\]"):
        params_io.load_params(str(tmp_path / "vit"))
    with pytest.raises(FileNotFoundError, match="model.json"):
        params_io.load_params(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format_version": 1, "kind": "vit", "config": {"width": ', r"model\.json:1: not valid JSON"),
        ("[1, 2]", r"model\.json: found a JSON list; expected the"),
        (
            '{"format_version": 1, "kind": "vit", "config": {"width": "x"}}',
            r"model\.json: ViTConfig\.width must be an integer, found 'x'",
        ),
        ('{"format_version": 1, "kind": "vit", "config": [1]}', r"model\.json: 'config' must be an object"),
    ],
)
def test_to_official_with_a_damaged_model_json_is_one_line_naming_it(tmp_path, text, message):
    """Was a 45-line traceback (json.decoder.JSONDecodeError, AttributeError) naming no file."""
    config = ViTConfig(image_size=32, patch_size=16, width=16, depth=1, num_heads=2, mlp_dim=32)
    params_io.save_params(str(tmp_path / "enc"), params_io.init_params(config), config)
    (tmp_path / "enc" / "model.json").write_text(text)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "abaw_jax.convert_weights",
            "--direction=to_official",
            f"--input={tmp_path / 'enc'}",
            f"--output={tmp_path / 'enc.pth'}",
        ],
        capture_output=True,
        text=True,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert re.search(r"^error: .*" + message, lines[0]), lines[0]
    assert not (tmp_path / "enc.pth").exists()
