"""The paper's task losses (eq. 1, 2, 4) with invalid labels masked out, and the class-weight rule.

  AU    eq. 1: binary cross-entropy on 12 logits, each AU's positive term weighted by its class weight.
  EXPR  eq. 2: cross-entropy on 8 logits, each frame weighted by the weight of its true class.
  VA    eq. 4: (1 - CCC_valence) + (1 - CCC_arousal) over all valid frames of the batch.

Weights follow the seed team's code: `max count / count` over the training labels (for AUs the count
of positives per AU, for expressions the count per class). Losses average over valid frames only; a
batch with no valid frame gives 0 (and so a zero gradient), never NaN. The AU loss also masks single AU
labels of -1 (an AU the training source does not code, `tasks.SOURCE_LABELS`): they never count as 0.

They live beside `metrics`: like the metrics, they are masked-array functions over labels in the annotation
encoding (VA's loss is 1 - the metric's CCC), and models stay below evaluation (no import runs back up).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax import tasks
from abaw_jax.eval import metrics


def class_weights(task: str | tasks.Task, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`max count / count` per AU (positives) or per class; a class never seen gets the largest weight."""
    task = task if isinstance(task, tasks.Task) else tasks.get_task(task)
    labels, valid = np.asarray(labels), np.asarray(valid, bool)
    if task.kind == "continuous":
        raise ValueError("VA has no class weights (its loss is 1 - CCC)")
    if task.kind == "binary":
        counts = (labels[valid] == 1).sum(axis=0).astype(np.float64)
    else:
        counts = np.bincount(labels[valid].astype(np.int64), minlength=task.num_outputs).astype(np.float64)
    if counts.max() == 0:
        raise ValueError(f"no positive {task.name} labels among {int(valid.sum())} valid frames: cannot weight")
    weights = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0)
    return np.where(counts > 0, weights, weights.max()).astype(np.float32)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def au_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, pos_weight: jax.Array) -> jax.Array:
    """Eq. 1: mean over valid (frame, AU) pairs of -(w y log s(x) + (1 - y) log(1 - s(x))); (..., 12) inputs.

    `mask` is per frame (...) or per AU (..., 12); AU labels of -1 are masked as well. With every AU of a frame
    annotated this is the mean over valid frames of the mean over the 12 AUs.
    """
    y = labels.reshape(-1, labels.shape[-1]).astype(jnp.float32)
    logits = logits.reshape(y.shape).astype(jnp.float32)
    per = -(pos_weight * y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))
    return _masked_mean(per, metrics.annotated_mask(mask, labels))


def expr_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, class_weight: jax.Array) -> jax.Array:
    """Eq. 2: -w_y log softmax(x)_y averaged over valid frames (torch's weighted-CE normalisation:
    divided by the sum of the valid frames' weights)."""
    labels = jnp.clip(labels, 0, logits.shape[-1] - 1)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    weight = class_weight[labels] * mask.astype(jnp.float32)
    return -jnp.sum(weight * picked) / jnp.maximum(jnp.sum(weight), 1e-12)


def va_loss(values: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Eq. 4: (1 - CCC_V) + (1 - CCC_A) over the valid frames of the whole batch; (..., 2) inputs."""
    return jnp.sum(1.0 - metrics.ccc(values, labels, mask))


def task_loss(
    task: str | tasks.Task, outputs: jax.Array, labels: jax.Array, mask: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """The task's loss on model outputs (AU/EXPR logits, VA values already bounded to [-1, 1])."""
    task = task if isinstance(task, tasks.Task) else tasks.get_task(task)
    if task.kind == "binary":
        return au_loss(outputs, labels, mask, jnp.ones(task.num_outputs) if weights is None else weights)
    if task.kind == "multiclass":
        return expr_loss(outputs, labels, mask, jnp.ones(task.num_outputs) if weights is None else weights)
    return va_loss(outputs, labels, mask)
