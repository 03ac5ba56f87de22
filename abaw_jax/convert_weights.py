r"""Converts MAE / ViT weights between PyTorch checkpoints and our Flax format (`params_io`), both ways.

PyTorch -> ours (`--direction=to_flax`):

    python -m abaw_jax.convert_weights --direction=to_flax --source=official \
        --input=mae_pretrain_vit_base.pth --model=encoder --size=base --output=/tmp/vit_b_encoder

  --source=official  a facebookresearch/mae `.pth` (`torch.load(p)['model']`): encoder-only, full MAE with
                     decoder, or fine-tuned (`fc_norm.*`, `head.*`); timm ViT state dicts share this layout,
                     and so do the face MAEs built on the MAE code (MAE-Face, FMAE). The state dict may be
                     bare or under 'state_dict', its keys prefixed `module.` (DistributedDataParallel).
  --source=hf        a transformers `ViTMAEForPreTraining` / `ViTMAEModel` state dict: a `.bin`/`.pt` file
                     read with torch.load, or a model folder holding `model.safetensors` (read without torch)
                     or `pytorch_model.bin`. Nothing is downloaded.
  --model            mae (encoder + decoder), encoder (ViT pool='token', final `norm`), or encoder_gap
                     (ViT pool='gap': mean of patch tokens + `fc_norm`, and a `head` when --num_classes > 0).
  --strict=false     loads what fits and keeps a fresh init (seeded by --seed) for the rest, e.g. a pretrained
                     encoder (no `fc_norm`/`head`) into --model=encoder_gap, as the official fine-tuning does.

Ours -> official PyTorch layout (`--direction=to_official`):

    python -m abaw_jax.convert_weights --direction=to_official --input=/tmp/vit_b_encoder \
        --output=vit_b_encoder.pth

writes `{'model': state_dict}` with torch.save, loadable by the official MAE code and by timm.

`--output` of to_flax is a directory with `model.json` (the model config) and `params/` (orbax). Every run
prints one summary line; a checkpoint that does not fit the model exits with an error naming each missing,
unexpected or wrongly shaped key. Every failure is one line `error: ...` (see abaw_jax/runtime/errors.py):
a damaged or git-lfs-pointer file, a state dict without tensors or with NaN, an existing output.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags

from abaw_jax.models import params_io
from abaw_jax.models import torch_weights as tw
from abaw_jax.models.mae import mae_config
from abaw_jax.models.vit import VIT_SIZES, ViTConfig
from abaw_jax.runtime import errors
from abaw_jax.runtime.errors import ConfigError

_DIRECTION = flags.DEFINE_enum("direction", None, ["to_flax", "to_official"], "Which way to convert.")
_SOURCE = flags.DEFINE_enum("source", "official", ["official", "hf"], "to_flax: layout of the PyTorch input.")
_INPUT = flags.DEFINE_string(
    "input", None, "to_flax: .pth/.bin/.pt file or HF model folder; to_official: our params directory."
)
_OUTPUT = flags.DEFINE_string("output", None, "to_flax: new params directory; to_official: .pth file.")
_MODEL = flags.DEFINE_enum("model", "mae", ["mae", "encoder", "encoder_gap"], "to_flax: the model to fill.")
_SIZE = flags.DEFINE_enum("size", "base", sorted(VIT_SIZES), "to_flax: model size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "to_flax: input resolution.")
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 16, "to_flax: patch size.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 0, "to_flax, encoder_gap: classes of the linear head (0: none).")
_MASK_RATIO = flags.DEFINE_float("mask_ratio", 0.75, "to_flax, mae: masking ratio stored in the config.")
_NORM_PIX_LOSS = flags.DEFINE_boolean("norm_pix_loss", True, "to_flax, mae: loss target stored in the config.")
_STRICT = flags.DEFINE_boolean("strict", True, "to_flax: fail on any missing or unexpected key.")
_SEED = flags.DEFINE_integer("seed", 0, "to_flax with --strict=false: seed of the fresh init of missing keys.")


def build_config(
    model: str,
    size: str,
    *,
    image_size: int = 224,
    patch_size: int = 16,
    num_classes: int = 0,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = True,
) -> params_io.ModelConfig:
    """The config for --model: 'mae', 'encoder' (pool='token') or 'encoder_gap' (pool='gap', optional head)."""
    if model == "mae":
        return mae_config(
            size, image_size=image_size, patch_size=patch_size, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss
        )
    if model not in ("encoder", "encoder_gap"):
        raise ValueError(f"model must be 'mae', 'encoder' or 'encoder_gap', got {model!r}")
    if size not in VIT_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(VIT_SIZES)}")
    if model == "encoder" and num_classes:
        raise ConfigError("--num_classes needs --model=encoder_gap (the official head sits on the pooled feature)")
    pool = "gap" if model == "encoder_gap" else "token"
    return ViTConfig(
        image_size=image_size, patch_size=patch_size, pool=pool, num_classes=num_classes, **VIT_SIZES[size]
    )


def state_to_params(
    state: tw.StateDict, config: params_io.ModelConfig, *, strict: bool = True, seed: int = 0
) -> tuple[dict, dict[str, list[str]]]:
    """Fills the parameters of `config`'s model from `state`; with strict=False, a seeded init fills the rest."""
    template = params_io.abstract_params(config) if strict else params_io.init_params(config, seed)
    return tw.official_to_flax(state, template, strict=strict)


def _count(arrays) -> tuple[int, int]:
    leaves = jax.tree.leaves(arrays)
    return len(leaves), sum(int(np.prod(np.shape(leaf))) for leaf in leaves)


def convert_to_flax(
    input_path: str, output_dir: str, *, source: str, config: params_io.ModelConfig, strict: bool = True, seed: int = 0
) -> str:
    """PyTorch checkpoint -> our params directory. Returns the summary line."""
    state = tw.read_state_dict(input_path, source)
    params, report = state_to_params(state, config, strict=strict, seed=seed)
    params_io.save_params(output_dir, params, config)
    tensors, count = _count({k: v for k, v in state.items() if k not in report["unexpected"]})
    summary = (
        f"loaded {tensors} tensors ({count:,} values) from {input_path} ({source} layout) into a "
        f"{params_io.config_kind(config)} model with {_count(params)[1]:,} parameters; wrote {output_dir}"
    )
    if report["missing"]:
        summary += f"; kept fresh init for {len(report['missing'])}: {', '.join(report['missing'])}"
    if report["unexpected"]:
        summary += f"; ignored {len(report['unexpected'])} checkpoint keys: {', '.join(report['unexpected'])}"
    return summary


def convert_to_official(input_dir: str, output_path: str) -> str:
    """Our params directory -> official `.pth`. Returns the summary line."""
    if os.path.isdir(output_path):
        raise IsADirectoryError(
            errno.EISDIR, "is a directory; --output of to_official names the .pth file to write", output_path
        )
    params, config = params_io.load_params(input_dir)
    state = tw.flax_to_official(params)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    tw.save_official_checkpoint(state, output_path)
    tensors, count = _count(state)
    return (
        f"wrote {tensors} tensors ({count:,} values) of the {params_io.config_kind(config)} model in "
        f"{input_dir} to {output_path} (official MAE layout)"
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _DIRECTION.value or not _INPUT.value or not _OUTPUT.value:
        raise app.UsageError("--direction, --input and --output are required")
    if _DIRECTION.value == "to_flax":
        try:
            config = build_config(
                _MODEL.value,
                _SIZE.value,
                image_size=_IMAGE_SIZE.value,
                patch_size=_PATCH_SIZE.value,
                num_classes=_NUM_CLASSES.value,
                mask_ratio=_MASK_RATIO.value,
                norm_pix_loss=_NORM_PIX_LOSS.value,
            )
        except ValueError as e:  # the model's own checks, e.g. an image size the patch size does not divide
            raise ConfigError(str(e)) from e
        summary = convert_to_flax(
            _INPUT.value, _OUTPUT.value, source=_SOURCE.value, config=config, strict=_STRICT.value, seed=_SEED.value
        )
    else:
        summary = convert_to_official(_INPUT.value, _OUTPUT.value)
    print(summary)


if __name__ == "__main__":
    errors.run(main)
