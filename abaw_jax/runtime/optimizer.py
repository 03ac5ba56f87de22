"""MAE pretraining optimizer: AdamW, linear warmup then per-step cosine, decay off biases/norms/tokens."""
from __future__ import annotations

from typing import Any

import jax
import optax
from flax import traverse_util

# Official MAE: no weight decay on 1-d parameters (biases, norm scales) nor on tokens / position tables.
_NO_DECAY_NAMES = {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}


def weight_decay_mask(params: Any) -> Any:
    flat = traverse_util.flatten_dict(params)
    mask = {path: (value.ndim > 1 and path[-1] not in _NO_DECAY_NAMES) for path, value in flat.items()}
    return traverse_util.unflatten_dict(mask)


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then a cosine to 0 at `total_steps` (updated every step)."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, max(total_steps, warmup_steps + 1),
                                              end_value=0.0)


def make_optimizer(schedule: optax.Schedule, *, b1: float, b2: float, weight_decay: float,
                   grad_clip: float = 0.0) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=weight_decay_mask)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw


def peak_learning_rate(base_lr: float, batch_size: int) -> float:
    """The MAE linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


def tree_size(tree: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))
