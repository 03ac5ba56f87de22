"""Loading a ViT encoder for fine-tuning or feature extraction from anything a researcher has on disk.

`load_encoder(path)` accepts:
  - a pretraining workdir (its `export/encoder`), or any `params_io` folder (`model.json` + `params/`)
    of an MAE, a ViT encoder or a fine-tuned ViT;
  - a `.pth` (or `.bin`, `.safetensors`) in the official MAE / timm key layout: the facebookresearch MAE
    release and the public face MAEs built on its code (MAE-Face, FMAE), pretrained (with or without the
    decoder) or fine-tuned, the state dict bare or under 'model' / 'state_dict', keys possibly prefixed
    `module.`;
  - a transformers ViTMAE model folder (`config.json` + `model.safetensors` or `pytorch_model.bin`).

Whatever the source, the result is a `pool='gap'` ViT (mean of patch tokens + `fc_norm`, the official
fine-tuning model), with a linear `head` when `num_classes > 0`. As in the official fine-tuning code, a
pretrained encoder's final `norm` and its decoder are left out, and `fc_norm` / `head` keep a fresh
(seeded) init when the source has none; every other encoder weight must be present with its shape. The
position table may lack the cls row (timm's `no_embed_class`; the cls token then gets none) or be for
another grid (resampled bicubically to `image_size`, as timm's `resample_abs_pos_embed`); a file without
one gets the MAE's fixed 2-D sin-cos table. What was adapted is listed in `LoadedEncoder.notes`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import numpy as np

from abaw_jax.data.features import MANIFEST as FEATURE_MANIFEST
from abaw_jax.models import params_io
from abaw_jax.models import torch_weights as tw
from abaw_jax.models.fusion import EXPORT_DIR as FUSION_EXPORT_DIR
from abaw_jax.models.fusion import EXPORT_JSON as FUSION_EXPORT_JSON
from abaw_jax.models.mae import MAEConfig
from abaw_jax.models.vit import VIT_SIZES, ViTConfig, sincos_pos_embed_2d
from abaw_jax.runtime.artefacts import BEST_FILE, RESULTS_FILE, SCORES_FILE
from abaw_jax.runtime.errors import ExplainedError
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
    ("fusion", SCORES_FILE),
    ("evaluate", RESULTS_FILE),
    ("finetune", BEST_FILE),
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

# The MAE decoder: pretraining only.
_DECODER = re.compile(r"^(decoder|mask_token$)")
# Classifier heads: timm's `head`, and those of other fine-tuning code (FMAE-IAT's `AU_head`, `ID_head`).
_HEAD = re.compile(r"^(\w*head\w*)\.")
# Keys a fine-tuning model may have that a pretrained source lacks (fresh init).
_FRESH = re.compile(r"^(fc_norm\.|head\.)")
# Attention heads by width, which the weights do not record: the standard ViT sizes of timm, the MAE and
# MAE-Face (tiny, small, base, large, huge, giant, gigantic).
_HEADS_BY_WIDTH = {s["width"]: s["num_heads"] for s in VIT_SIZES.values()} | {384: 6, 1280: 16, 1408: 16, 1664: 16}
# The MAE's input size, for a file without a position table to read it from.
_DEFAULT_IMAGE_SIZE = 224


class EncoderLoadError(ExplainedError, ValueError):
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
    # What was left out of or adapted from the source, for the log; not part of `description()`, whose
    # equality a resumed feature set checks, so rewording a note never invalidates one.
    notes: tuple[str, ...] = ()

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


def _fit_state(
    state: tw.StateDict, path: str, *, num_heads: int | None, num_classes: int, image_size: int | None
) -> tuple[tw.StateDict, ViTConfig, list[str]]:
    """The encoder part of an official-layout state dict, fitted to a `pool='gap'` model: (state, the ViT
    shape it implies, notes on what was left out or adapted)."""
    notes = []
    decoder = sorted(k for k in state if _DECODER.match(k))
    if decoder:
        notes.append(f"left out the MAE decoder ({len(decoder)} tensors); fine-tuning starts from the encoder")
    state = {k: v for k, v in state.items() if k not in decoder}
    try:
        width, channels, patch, _ = state["patch_embed.proj.weight"].shape
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        found = ", ".join(sorted(state)[:6]) + (", ..." if len(state) > 6 else "")
        raise EncoderLoadError(
            f"{path}: not a ViT encoder in the MAE / timm layout (no {str(e) or 'blocks.0.*'}; expected keys like "
            f"patch_embed.proj.weight, cls_token, pos_embed, blocks.0.attn.qkv.weight; found {found})"
        ) from None
    if num_heads is None:
        if width not in _HEADS_BY_WIDTH:
            raise EncoderLoadError(
                f"{path}: width {width} is not a standard ViT size ({sorted(_HEADS_BY_WIDTH)}); the number of "
                "attention heads cannot be read from the weights"
            )
        num_heads = _HEADS_BY_WIDTH[width]
    state, heads_note = _fit_head(state, width, num_classes)
    notes += heads_note
    if "norm.weight" in state:
        fc_norm = "the file's fc_norm" if "fc_norm.weight" in state else "a fresh fc_norm"
        notes.append(
            f"left out the final norm: the model pools the patch tokens into {fc_norm}, as the official "
            "fine-tuning does"
        )
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    state, grid, table_notes = _fit_pos_embed(state, path, width=width, patch=patch, image_size=image_size)
    config = ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        channels=channels,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
    )
    return state, config, notes + table_notes


def _fit_head(state: tw.StateDict, width: int, num_classes: int) -> tuple[tw.StateDict, list[str]]:
    """The state without the classifier heads that the model cannot use, and a note naming them.

    Only `head.*` of a global-pool model (one with `fc_norm`) of the asked size is kept: a head trained on
    the cls token's final norm does not fit pooled patch tokens."""
    names = {match.group(1) for key in state if (match := _HEAD.match(key))}
    heads = {name: tuple(np.shape(state.get(f"{name}.weight", ()))) for name in names}
    keep = (
        num_classes > 0
        and "fc_norm.weight" in state
        and heads.get("head") == (num_classes, width)
        and "head.bias" in state
    )
    dropped = sorted(name for name in heads if not (keep and name == "head"))
    if not dropped:
        return state, []
    described = ", ".join(f"{name} ({heads[name][0] if heads[name] else '?'} outputs)" for name in dropped)
    reason = "no head asked" if num_classes == 0 else f"the task's {num_classes}-output head starts fresh"
    state = {k: v for k, v in state.items() if not ((m := _HEAD.match(k)) and m.group(1) in dropped)}
    return state, [f"left out the file's classifier heads {described}: {reason}"]


def _fit_pos_embed(
    state: tw.StateDict, path: str, *, width: int, patch: int, image_size: int | None
) -> tuple[tw.StateDict, int, list[str]]:
    """The state with a (1, 1 + grid**2, width) `pos_embed` for `image_size` (default: the file's own grid),
    the grid, and notes on how the file's table was adapted."""
    if image_size is not None and (image_size <= 0 or image_size % patch):
        raise EncoderLoadError(f"{path}: image size {image_size} is not a positive multiple of the patch size {patch}")
    table = state.get("pos_embed")
    if table is None:
        grid = (image_size or _DEFAULT_IMAGE_SIZE) // patch
        note = (
            f"the file has no pos_embed (a fixed table its code recomputes): using the MAE's fixed 2-D sin-cos "
            f"table for {grid}x{grid} patches"
        )
        return {**state, "pos_embed": sincos_pos_embed_2d(width, grid)[None]}, grid, [note]
    table = table[None] if table.ndim == 2 else table
    tokens = table.shape[1] if table.ndim == 3 else 0
    root, root_less_cls = round(tokens**0.5), round(max(tokens - 1, 0) ** 0.5)
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != width or tokens < 1:
        raise EncoderLoadError(
            f"{path}: pos_embed: expected shape (1, tokens, {width}), found {tuple(state['pos_embed'].shape)}"
        )
    notes = []
    if root * root == tokens:
        notes.append("the position table has no cls row (timm's no_embed_class): the cls token gets no position")
        table = np.concatenate([np.zeros((1, 1, width), np.float32), table], axis=1)
        grid = root
    elif root_less_cls * root_less_cls == tokens - 1:
        grid = root_less_cls
    else:
        raise EncoderLoadError(
            f"{path}: pos_embed has {tokens} positions; expected a square grid of patches, with or without one "
            "cls position (grid**2 or 1 + grid**2)"
        )
    sincos = np.allclose(table[0, 1:], sincos_pos_embed_2d(width, grid)[1:], atol=1e-5)
    kind = "fixed 2-D sin-cos" if sincos else "learned"
    new_grid = grid if image_size is None else image_size // patch
    if new_grid != grid:
        table = tw.resample_pos_embed(table, new_grid)
        notes.append(
            f"resampled the {kind} position table bicubically from {grid}x{grid} to {new_grid}x{new_grid} patches "
            f"({grid * patch} -> {new_grid * patch} pixels), as timm's resample_abs_pos_embed"
        )
    return {**state, "pos_embed": table}, new_grid, notes


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
    path: str,
    *,
    num_classes: int = 0,
    drop_path_rate: float = 0.0,
    seed: int = 0,
    pos_embed_trainable: bool = True,
    image_size: int | None = None,
) -> LoadedEncoder:
    """A `pool='gap'` ViT (with a `num_classes` head when > 0) initialised from the encoder at `path`, for
    `image_size` pixels (default: the encoder's own; another size resamples the position table)."""
    # Hash and record the encoder files only: a workdir's logs and checkpoints change between runs.
    path = resolve_source(path)
    state, heads, kind = _read_source(path)
    state, shape, notes = _fit_state(state, path, num_heads=heads, num_classes=num_classes, image_size=image_size)
    config = dataclasses.replace(
        shape,
        pool="gap",
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        pos_embed_trainable=pos_embed_trainable,
    )
    try:
        params, report = tw.official_to_flax(state, params_io.init_params(config, seed), strict=False)
    except tw.WeightMismatchError as e:
        raise EncoderLoadError(f"{path}: {e} (the shapes the file's patch_embed and blocks.0 imply)") from e
    absent = [k for k in report["missing"] if not _FRESH.match(k)]
    if absent or report["unexpected"]:
        problems = [f"missing {', '.join(absent)}"] if absent else []
        if report["unexpected"]:
            problems.append(f"keys not in the MAE / timm ViT layout: {', '.join(report['unexpected'])}")
        raise EncoderLoadError(f"{path}: not a complete ViT encoder; {'; '.join(problems)}")
    return LoadedEncoder(
        params=params,
        config=config,
        source=path,
        kind=kind,
        sha256=_hash_path(path),
        fresh_keys=tuple(report["missing"]),
        notes=tuple(notes),
    )
