"""AdamW with linear warmup then per-step cosine, decay off biases/norms/tokens, optional layer-wise lr decay.

Layer-wise lr decay (BEiT / official MAE fine-tuning, `design.md` section 4) scales the whole AdamW update
of a ViT parameter, weight decay included (as PyTorch's per-group lr does), by `decay ** (depth + 1 -
layer_id)`: layer id 0 for `patch_embed`, `cls_token` and `pos_embed`, k + 1 for `blocks_k`, depth + 1
(scale 1) for everything after the blocks (`fc_norm`, `norm`, `head`).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import optax
from flax import traverse_util

# Official MAE: no weight decay on 1-d parameters (biases, norm scales) nor on tokens / position tables.
_NO_DECAY_NAMES = {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}
_STEM_NAMES = {"patch_embed", "cls_token", "pos_embed"}
_BLOCK = re.compile(r"^blocks_(\d+)$")


def weight_decay_mask(params: Any) -> Any:
    flat = traverse_util.flatten_dict(params)
    mask = {path: (value.ndim > 1 and path[-1] not in _NO_DECAY_NAMES) for path, value in flat.items()}
    return traverse_util.unflatten_dict(mask)


def vit_layer_id(path: tuple[str, ...], depth: int) -> int:
    """Layer id of a ViT parameter path (Flax names, e.g. ('blocks_3', 'attn', 'qkv', 'kernel'))."""
    top = path[0]
    if top in _STEM_NAMES:
        return 0
    match = _BLOCK.match(top)
    if match:
        return int(match.group(1)) + 1
    return depth + 1


def layer_decay_scales(params: Any, depth: int, decay: float) -> Any:
    """A tree like `params` of floats `decay ** (depth + 1 - layer_id)` (see the module docstring)."""
    flat = traverse_util.flatten_dict(params)
    scales = {path: float(decay ** (depth + 1 - vit_layer_id(path, depth))) for path in flat}
    return traverse_util.unflatten_dict(scales)


class _ScaleByTreeState(NamedTuple):
    pass


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update by the matching (constant) leaf of `scales`."""

    def init(params):
        del params
        return _ScaleByTreeState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(init, update)


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then a cosine to 0 at `total_steps` (updated every step)."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak_lr, warmup_steps, max(total_steps, warmup_steps + 1), end_value=0.0
    )


def make_optimizer(
    schedule: optax.Schedule,
    *,
    b1: float,
    b2: float,
    weight_decay: float,
    grad_clip: float = 0.0,
    lr_scales: Any = None,
) -> optax.GradientTransformation:
    """AdamW (decay masked by `weight_decay_mask`), optional global-norm clipping, and optional per-parameter
    lr scales (e.g. `layer_decay_scales(params, depth, 0.65)`) applied to the final update."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=weight_decay_mask))
    if lr_scales is not None:
        parts.append(scale_by_tree(lr_scales))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def peak_learning_rate(base_lr: float, batch_size: int) -> float:
    """The MAE linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


def tree_size(tree: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))
