"""PyTorch MAE weights in and out: official MAE checkpoints and transformers ViTMAE state dicts.

The official key layout (`torch.load(p)['model']` of the facebookresearch MAE release, also timm's ViT
layout) is the one exchange format: transformers state dicts are first renamed into it, Flax parameters
are exported to it. Mapping to Flax is a rename (`blocks.3.attn.qkv.weight` <-> `blocks_3/attn/qkv/kernel`)
plus a layout change (Linear weights transposed, the patch conv kernel permuted (2, 3, 1, 0)).

Official checkpoints come in three kinds, all handled: encoder-only (no `decoder*`/`mask_token` keys),
full MAE with decoder, and fine-tuned (`fc_norm.*` and `head.*` instead of `norm.*`). A `.pth` holds the state
dict bare or under 'model' (the official release, MAE-Face, FMAE) or 'state_dict', its keys possibly prefixed
`module.` (saved from DistributedDataParallel) or `_orig_mod.` (from torch.compile).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from abaw_jax.runtime.errors import ExplainedError

StateDict = dict[str, np.ndarray]

# transformers (v5 and v4 names) -> official, applied to keys after the model prefix is removed.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:layers|encoder\.layer)\.(\d+)\.", r"blocks.\1."),
    # v4 / hub files say `decoder_layers`; v5's save_pretrained writes `decoder_encoder.layer`.
    (r"^decoder_(?:layers|encoder\.layer)\.(\d+)\.", r"decoder_blocks.\1."),
    (r"^layernorm\.", "norm."),
    (r"\.attention\.(?:o_proj|output\.dense)\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)
_HF_QKV = re.compile(r"^(.*)\.attention\.(?:(q|k|v)_proj|attention\.(query|key|value))\.(weight|bias)$")
_QKV_ORDER = {"q": 0, "k": 1, "v": 2, "query": 0, "key": 1, "value": 2}


class WeightMismatchError(ExplainedError, ValueError):
    """A checkpoint does not fit the model: lists missing, unexpected and wrongly shaped keys."""


class WeightFileError(ExplainedError, ValueError):
    """A weight file that cannot be read as one: corrupt, cut short, a git-lfs pointer, non-finite values."""


_LFS_POINTER = b"version https://git-lfs"
# Where training scripts put the weights in a checkpoint that holds more (optimizer, epoch, args).
_WRAPPERS = ("model", "state_dict")
# Key prefixes that record how a model was wrapped when saved, not what it is.
_SAVE_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)+")
# The official MAE training loop (`misc.save_model`) saves its argparse arguments beside the weights; a
# Namespace unpickles to plain attributes and runs no code. Any other pickled object is refused.
_SAFE_GLOBALS = [argparse.Namespace]
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def check_weight_file(path: str) -> None:
    """Raises WeightFileError for an empty file or a git-lfs pointer (the weights were never fetched)."""
    with open(path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if not head:
        raise WeightFileError(f"{path}: the file is empty; expected PyTorch or safetensors weights")
    if head == _LFS_POINTER:
        raise WeightFileError(
            f"{path}: a git-lfs pointer, not the weights; fetch them with `git lfs pull` in that repository"
        )


def check_finite(state: StateDict, path: str) -> StateDict:
    """Raises WeightFileError naming the tensors that hold NaN or infinity."""
    bad = [k for k, v in state.items() if not np.all(np.isfinite(v))]
    if bad:
        raise WeightFileError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinity ({', '.join(sorted(bad)[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); the checkpoint is broken"
        )
    return state


def load_torch_checkpoint(path: str) -> StateDict:
    """Reads a PyTorch state dict file as float32 numpy arrays: an official MAE `.pth` (state under 'model'),
    a training checkpoint with the state under 'state_dict', or a bare state dict (timm, transformers
    `pytorch_model.bin`). Keys are kept as they are, less a `module.` / `_orig_mod.` save prefix."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs PyTorch: pip install torch==2.13.0") from e
    check_weight_file(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types (pickle, zip, EOF) for a damaged file
        text = " ".join(str(e).split())
        pickled = _UNSUPPORTED_GLOBAL.search(text)
        if pickled:
            raise WeightFileError(
                f"{path}: holds a pickled {pickled.group(1)} besides tensors, which is not unpickled (that could "
                "run code); expected a state dict of tensors, or one under 'model': save model.state_dict(), "
                "not the model"
            ) from e
        reason = text.split(". ")[0][:200]  # torch's advice after that does not apply
        raise WeightFileError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {reason}); "
            "is it complete, and a .pth/.bin state dict?"
        ) from e
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        state = next((checkpoint[k] for k in _WRAPPERS if isinstance(checkpoint.get(k), Mapping)), checkpoint)
    expected = "a state dict of tensors, or one under 'model'"
    if not isinstance(state, Mapping) or not state:
        raise WeightFileError(f"{path}: expected {expected}, found {type(checkpoint).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise WeightFileError(
            f"{path}: expected {expected}, found entries that are not tensors "
            f"({', '.join(not_tensors[:5])}); top-level keys: {sorted(map(str, checkpoint))[:8]}"
        )
    arrays = {_SAVE_PREFIX.sub("", k): v.detach().float().numpy() for k, v in state.items()}
    if len(arrays) != len(state):
        raise WeightFileError(f"{path}: keys collide once the module./_orig_mod. save prefixes are removed")
    return check_finite(arrays, path)


def read_state_dict(path: str, source: str) -> StateDict:
    """A PyTorch checkpoint as an official-layout state dict of float32 numpy arrays.

    `source='official'`: an official MAE `.pth` or any state dict in its layout (timm). `source='hf'`: a
    transformers ViTMAE state dict file, or a model folder with `model.safetensors` (read without torch)
    or `pytorch_model.bin`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if source == "official":
        return load_torch_checkpoint(path)
    if source != "hf":
        raise ValueError(f"source must be 'official' or 'hf', got {source!r}")
    if os.path.isdir(path):
        safetensors_file = os.path.join(path, "model.safetensors")
        if os.path.exists(safetensors_file):
            return hf_to_official(read_safetensors(safetensors_file))
        bin_file = os.path.join(path, "pytorch_model.bin")
        if not os.path.exists(bin_file):
            raise FileNotFoundError(
                f"{path}: a transformers model folder needs model.safetensors or pytorch_model.bin, found neither"
            )
        path = bin_file
    return hf_to_official(load_torch_checkpoint(path))


def read_safetensors(path: str) -> StateDict:
    """A safetensors file as numpy arrays; WeightFileError for a damaged file or non-finite values."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    check_weight_file(path)
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightFileError(f"{path}: not a readable safetensors file ({e}); is it complete?") from e
    return check_finite(state, path)


def save_official_checkpoint(state: StateDict, path: str) -> None:
    """Writes `{'model': state}` with torch.save, loadable by the official MAE code."""
    import torch

    torch.save({"model": {k: torch.from_numpy(np.array(v, np.float32, copy=True)) for k, v in state.items()}}, path)


def export_official(state: StateDict, path_stem: str) -> list[str]:
    """Writes `<stem>.safetensors` (official key names; needs no PyTorch) and, when PyTorch is installed,
    `<stem>.pth` as `{'model': state}` like the official release. Returns the paths written."""
    from safetensors.numpy import save_file

    paths = [path_stem + ".safetensors"]
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, paths[0])
    if importlib.util.find_spec("torch") is not None:
        paths.append(path_stem + ".pth")
        save_official_checkpoint(state, paths[1])
    return paths


def hf_to_official(state: Mapping[str, Any]) -> StateDict:
    """Renames a transformers `ViTMAEForPreTraining` or `ViTMAEModel` state dict to the official layout."""
    official: StateDict = {}
    qkv: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for key, value in state.items():
        array = np.asarray(value.detach().float().numpy() if hasattr(value, "detach") else value, np.float32)
        name = re.sub(r"^(?:vit|decoder)\.", "", key)
        match = _HF_QKV.match(name)
        if match:
            prefix, short, long, kind = match.groups()
            qkv.setdefault((prefix, kind), {})[_QKV_ORDER[short or long]] = array
            continue
        official[_rename_hf(name)] = array
    for (prefix, kind), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise WeightMismatchError(f"{prefix}: expected query, key and value {kind}s, found {sorted(parts)}")
        block = _rename_hf(prefix + ".").rstrip(".")
        official[f"{block}.attn.qkv.{kind}"] = np.concatenate([parts[0], parts[1], parts[2]], axis=0)
    return official


def _rename_hf(name: str) -> str:
    for pattern, replacement in _HF_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _official_name(flax_path: tuple[str, ...]) -> str:
    parts = [p for p in flax_path if p != "encoder"]
    name = ".".join(parts)
    name = re.sub(r"^(decoder_blocks|blocks)_(\d+)", r"\1.\2", name)
    name = re.sub(r"^patch_embed\.", "patch_embed.proj.", name)
    return re.sub(r"\.(kernel|scale)$", ".weight", name)


def _to_torch_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if flax_path[-1] != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value.T


def _to_flax_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if flax_path[-1] != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T


def flax_to_official(params: Mapping[str, Any]) -> StateDict:
    """Flax MAE or ViT parameters -> official key layout (numpy, PyTorch tensor layouts)."""
    flat = traverse_util.flatten_dict(params)
    return {
        _official_name(path): np.ascontiguousarray(_to_torch_layout(path, np.asarray(v, np.float32)))
        for path, v in flat.items()
    }


def official_to_flax(
    state: Mapping[str, np.ndarray], template: Mapping[str, Any], *, strict: bool = True
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Fills a Flax parameter tree shaped like `template` from an official-layout state dict.

    `template` gives the expected paths and shapes (from `model.init` or `jax.eval_shape`). With
    `strict=True`, any missing key, unexpected key or shape mismatch raises `WeightMismatchError` naming
    them all. With `strict=False` (how the official fine-tuning loads a pretrained encoder: `norm.*` and the
    decoder are left out, `fc_norm.*`/`head.*` keep their fresh init), missing keys keep the template's
    values, which must then be concrete arrays; shape mismatches still raise. Returns the parameters and a
    report {'missing': [...], 'unexpected': [...]} of official key names.
    """
    flat_template = traverse_util.flatten_dict(template)
    expected = {_official_name(path): path for path in flat_template}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = []
    filled = {}
    for name, path in expected.items():
        want = tuple(flat_template[path].shape)
        if name not in state:
            filled[path] = flat_template[path]
            continue
        value = _to_flax_layout(path, np.asarray(state[name], np.float32))
        if value.shape != want:
            expected_shape = _to_torch_layout(path, np.empty(want, np.bool_)).shape
            wrong_shape.append(f"{name}: expected {expected_shape}, found {tuple(np.shape(state[name]))}")
        filled[path] = value
    problems = []
    if wrong_shape:
        problems.append("wrong shapes: " + "; ".join(wrong_shape))
    if strict and missing:
        problems.append("missing from the checkpoint: " + ", ".join(missing))
    if strict and unexpected:
        problems.append("not in the model: " + ", ".join(unexpected))
    if problems:
        raise WeightMismatchError("checkpoint does not fit the model; " + " | ".join(problems))
    abstract = [name for name in missing if isinstance(flat_template[expected[name]], jax.ShapeDtypeStruct)]
    if abstract:
        raise WeightMismatchError(
            "missing from the checkpoint and no initial value to keep (pass concrete "
            "initial parameters as template): " + ", ".join(abstract)
        )
    return traverse_util.unflatten_dict(filled), {"missing": missing, "unexpected": unexpected}


def resample_pos_embed(table: np.ndarray, grid: int) -> np.ndarray:
    """A (1, 1 + g*g, width) position table for a square g x g patch grid, resampled to `grid` x `grid`: the
    cls row kept, the patch rows resized bicubically with antialiasing, as timm's `resample_abs_pos_embed`
    (which this matches to float32 rounding; jax's cubic is the same Keys kernel, a = -0.5, that torch uses
    when antialiasing)."""
    old = int(round((table.shape[1] - 1) ** 0.5))
    width = table.shape[2]
    patches = table[0, 1:].reshape(old, old, width)
    resized = jax.image.resize(jnp.asarray(patches), (grid, grid, width), method="cubic", antialias=True)
    rows = np.asarray(resized, np.float32).reshape(1, grid * grid, width)
    return np.concatenate([table[:, :1], rows], axis=1)
