"""Loading a ViT encoder for fine-tuning or feature extraction from anything a researcher has on disk.

`load_encoder(path)` accepts:
  - a pretraining workdir (its `export/encoder`), or any `params_io` folder (`model.json` + `params/`)
    of an MAE, a ViT encoder or a fine-tuned ViT;
  - an official MAE / timm `.pth` (or `.bin`, `.safetensors`) state dict in the official key layout;
  - a transformers ViTMAE model folder (`config.json` + `model.safetensors` or `pytorch_model.bin`).

Whatever the source, the result is a `pool='gap'` ViT (mean of patch tokens + `fc_norm`, the official
fine-tuning model), with a linear `head` when `num_classes > 0`. As in the official fine-tuning code, a
pretrained encoder's final `norm` and its decoder are left out, and `fc_norm` / `head` keep a fresh
(seeded) init when the source has none; every other encoder weight must be present with its shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

from abaw_jax.data.features import MANIFEST as FEATURE_MANIFEST
from abaw_jax.models import params_io
from abaw_jax.models import torch_weights as tw
from abaw_jax.models.fusion import EXPORT_DIR as FUSION_EXPORT_DIR
from abaw_jax.models.fusion import EXPORT_JSON as FUSION_EXPORT_JSON
from abaw_jax.models.mae import MAEConfig
from abaw_jax.models.vit import VIT_SIZES, ViTConfig
from abaw_jax.runtime.pipeline_dirs import STAGE_FILE

# What an encoder path may be given, for errors about a folder that is none of them.
EXPECTED_SOURCES = (
    "a pretraining or fine-tuning workdir (its export/encoder), a params folder with model.json, an "
    "official MAE / timm .pth or .safetensors, or a transformers folder with config.json"
)
# Files each job writes in its workdir (jobs/*.py), by which a workdir without an encoder is recognised when it
# has no stage.json (a job run on its own rather than by the pipeline).
_WORKDIR_MARKERS = (
    ("fusion", os.path.join(FUSION_EXPORT_DIR, FUSION_EXPORT_JSON)),
    ("fusion", "scores.json"),
    ("evaluate", "results.json"),
    ("finetune", "best.json"),
    ("mae_pretrain", "reconstructions"),
)
_WORKDIR_KINDS = {
    "fusion": "a fusion workdir: its export/ holds TMF ensemble members trained on per-frame features, not a ViT "
    "encoder",
    "extract_features": "a feature-extraction workdir: per-frame features of frozen encoders, not an encoder",
    "evaluate": "an evaluation workdir: tuned post-processing and submission files, not an encoder",
    "pipeline": "a pipeline workdir: give one of its stage folders, {path}/mae (the pretrained encoder) or "
    "{path}/finetune_<task> (a fine-tuned one)",
}

# Keys a pretrained source may have that a fine-tuning model does not use.
_DROPPED = re.compile(r"^(norm\.|decoder|mask_token)")
# Keys a fine-tuning model may have that a pretrained source lacks (fresh init).
_FRESH = re.compile(r"^(fc_norm\.|head\.)")


class EncoderLoadError(ValueError):
    """The path holds no encoder we can read, or one that does not fit what was asked."""


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
    """A `pool='gap'` ViT's parameters and config, and where they came from."""

    params: dict[str, Any]
    config: ViTConfig
    source: str
    kind: str
    sha256: str
    fresh_keys: tuple[str, ...]

    def description(self) -> dict[str, Any]:
        """JSON-ready: what a feature set or checkpoint records about the encoder it used."""
        return {
            "source": self.source,
            "kind": self.kind,
            "sha256": self.sha256,
            "config": dataclasses.asdict(self.config),
            "fresh_keys": list(self.fresh_keys),
        }


def _hash_path(path: str) -> str:
    """SHA-256 of a file, or of every file under a folder (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = (
        [path]
        if os.path.isfile(path)
        else sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    )
    for file in files:
        digest.update(os.path.relpath(file, path).encode() if file != path else b"")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _config_from_state(state: tw.StateDict, num_heads: int | None) -> ViTConfig:
    """The ViT shape an official-layout state dict implies (heads from the standard sizes if not given)."""
    try:
        width, channels, patch, _ = state["patch_embed.proj.weight"].shape
        tokens = state["pos_embed"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise EncoderLoadError(f"not a ViT state dict in the official layout (missing {e})") from e
    if num_heads is None:
        sizes = [s for s in VIT_SIZES.values() if s["width"] == width]
        if not sizes:
            raise EncoderLoadError(
                f"width {width} is not a standard ViT size ({sorted(VIT_SIZES)}); the number "
                "of attention heads cannot be read from the weights"
            )
        num_heads = sizes[0]["num_heads"]
    grid = int(round((tokens - 1) ** 0.5))
    return ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        channels=channels,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
    )


def resolve_source(path: str) -> str:
    """The encoder files `path` names: a workdir's `export/encoder`, else `path` itself."""
    path = os.path.abspath(os.path.expanduser(path))
    exported = os.path.join(path, "export", "encoder")
    return exported if os.path.isdir(exported) else path


def workdir_kind(path: str) -> str | None:
    """The job that made a folder ("mae_pretrain", "finetune", "extract_features", "fusion", "evaluate", or
    "pipeline" for a pipeline's root), from its stage.json or the files the job writes; None if unknown."""
    try:
        with open(os.path.join(path, STAGE_FILE), encoding="utf-8") as f:
            return str(json.load(f)["job"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not a pipeline stage (or a damaged record): look at the files
    for kind, marker in _WORKDIR_MARKERS:
        if os.path.exists(os.path.join(path, marker)):
            return kind
    folders = [entry.path for entry in os.scandir(path) if entry.is_dir()]
    if any(os.path.exists(os.path.join(folder, STAGE_FILE)) for folder in folders):
        return "pipeline"
    if any(os.path.exists(os.path.join(folder, FEATURE_MANIFEST)) for folder in folders):
        return "extract_features"
    return None


def _read_source(path: str) -> tuple[tw.StateDict, int | None, str]:
    """(official-layout state dict, heads if the source states them, kind of source) of a resolved path."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, params_io.MODEL_FILE)):
        params, config = params_io.load_params(path)
        vit = config.encoder if isinstance(config, MAEConfig) else config
        encoder_params = params["encoder"] if isinstance(config, MAEConfig) else params
        return tw.flax_to_official(encoder_params), vit.num_heads, "abaw_jax"
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            heads = json.load(f).get("num_attention_heads")
        return tw.read_state_dict(path, "hf"), heads, "transformers"
    if os.path.isdir(path):
        kind = workdir_kind(path)
        if kind in _WORKDIR_KINDS:
            raise EncoderLoadError(f"{path} is {_WORKDIR_KINDS[kind].format(path=path)}; expected {EXPECTED_SOURCES}")
        if kind in ("mae_pretrain", "finetune") or os.path.isdir(os.path.join(path, "checkpoints")):
            run = "a fine-tuning" if kind == "finetune" else "a pretraining"
            raise EncoderLoadError(
                f"{path} is {run} workdir without export/encoder: the run has not finished; "
                "rerun its command with the same --workdir to complete it"
            )
        raise EncoderLoadError(f"{path}: expected {EXPECTED_SOURCES}")
    if not os.path.exists(path):
        raise EncoderLoadError(f"{path}: no such file or directory")
    if path.endswith(".safetensors"):
        state = tw.read_safetensors(path)
    else:
        state = tw.load_torch_checkpoint(path)
    if any(k.startswith(("vit.", "embeddings.", "encoder.layer.")) for k in state):
        return tw.hf_to_official(state), None, "transformers"
    return state, None, "official"


def load_encoder(
    path: str, *, num_classes: int = 0, drop_path_rate: float = 0.0, seed: int = 0, pos_embed_trainable: bool = True
) -> LoadedEncoder:
    """A `pool='gap'` ViT (with a `num_classes` head when > 0) initialised from the encoder at `path`."""
    # Hash and record the encoder files only: a workdir's logs and checkpoints change between runs.
    path = resolve_source(path)
    state, heads, kind = _read_source(path)
    shape = _config_from_state(state, heads)
    config = dataclasses.replace(
        shape,
        pool="gap",
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        pos_embed_trainable=pos_embed_trainable,
    )
    if num_classes == 0:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    elif "head.weight" in state and state["head.weight"].shape[0] != num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # another task's head
    state = {k: v for k, v in state.items() if not _DROPPED.match(k)}
    try:
        params, report = tw.official_to_flax(state, params_io.init_params(config, seed), strict=False)
    except tw.WeightMismatchError as e:
        raise EncoderLoadError(f"{path}: {e}") from e
    absent = [k for k in report["missing"] if not _FRESH.match(k)]
    if absent or report["unexpected"]:
        raise EncoderLoadError(
            f"{path}: not a complete ViT encoder; missing {absent}, unexpected {report['unexpected']}"
        )
    return LoadedEncoder(
        params=params,
        config=config,
        source=path,
        kind=kind,
        sha256=_hash_path(path),
        fresh_keys=tuple(report["missing"]),
    )
