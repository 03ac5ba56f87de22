"""ABAW task metrics as pure, jittable functions over padded arrays with a validity mask.

  AU    mean of the 12 binary F1 scores (a probability above the AU's threshold, 0.5 by default, is 1).
  EXPR  mean F1 over all 8 classes; a class absent from both prediction and truth scores 0, as
        `sklearn.metrics.f1_score(labels=range(8), average=None, zero_division=0)`.
  VA    (CCC_valence + CCC_arousal) / 2, with population (biased) variances and covariance.

Inputs may have any leading shape (frames, or videos x frames); the last axis holds classes or
channels. `mask` has the leading shape (or the full shape for per-label masks) and is True where a
label is valid; masked frames never count. An AU label of -1 (not annotated: a whole invalid row, or an AU
the training source does not code, `tasks.SOURCE_LABELS`) is masked out too, never read as 0; `classes`
limits a task metric's mean to the labels a source has (e.g. the 7 expressions of RAF-DB).

Degenerate cases have defined values, never NaN: an F1 whose class has no true and no predicted positive
is 0, and a CCC whose denominator is 0 (no valid frame, or prediction and truth both constant) is 0.
`valid_count` lets a job refuse to report a metric over zero frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from abaw_jax import tasks


def _flat(x: jax.Array, trailing: int) -> jax.Array:
    x = jnp.asarray(x)
    return x.reshape((-1,) + x.shape[x.ndim - trailing :]) if trailing else x.reshape(-1)


def _label_mask(mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A (frames, labels) float mask from a per-frame or per-label mask."""
    mask = jnp.asarray(mask)
    if mask.ndim == len(shape):
        return mask.reshape(-1, shape[-1]).astype(jnp.float32)
    return jnp.broadcast_to(mask.reshape(-1, 1), (mask.size, shape[-1])).astype(jnp.float32)


def annotated_mask(mask: jax.Array, labels: jax.Array) -> jax.Array:
    """(frames, labels) float mask of binary labels: `mask` (per frame or per label) and the label is not -1."""
    labels = jnp.asarray(labels)
    annotated = _flat(labels, 1) >= 0
    return _label_mask(mask, jnp.shape(labels)) * annotated.astype(jnp.float32)


def f1_from_counts(tp: jax.Array, fp: jax.Array, fn: jax.Array) -> jax.Array:
    """F1 = 2tp / (2tp + fp + fn), 0 where the denominator is 0 (sklearn's zero_division=0)."""
    denominator = 2 * tp + fp + fn
    return jnp.where(denominator > 0, 2 * tp / jnp.maximum(denominator, 1e-12), 0.0)


def binary_f1(predictions: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-label F1 of 0/1 `predictions` against 0/1 `labels` (-1: not annotated), both (..., K): returns (K,)."""
    pred = _flat(predictions, 1).astype(jnp.float32)
    true = _flat(labels, 1).astype(jnp.float32)
    weight = annotated_mask(mask, labels)
    tp = jnp.sum(weight * pred * true, axis=0)
    fp = jnp.sum(weight * pred * (1 - true), axis=0)
    fn = jnp.sum(weight * (1 - pred) * true, axis=0)
    return f1_from_counts(tp, fp, fn)


def multiclass_f1(predictions: jax.Array, labels: jax.Array, mask: jax.Array, num_classes: int) -> jax.Array:
    """Per-class F1 of integer `predictions` against integer `labels`, both (...,): returns (num_classes,)."""
    pred = jax.nn.one_hot(_flat(predictions, 0), num_classes)
    true = jax.nn.one_hot(jnp.clip(_flat(labels, 0), 0, num_classes - 1), num_classes)
    weight = _flat(mask, 0).astype(jnp.float32)[:, None]
    tp = jnp.sum(weight * pred * true, axis=0)
    fp = jnp.sum(weight * pred * (1 - true), axis=0)
    fn = jnp.sum(weight * (1 - pred) * true, axis=0)
    return f1_from_counts(tp, fp, fn)


def ccc(predictions: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-channel concordance correlation coefficient, (..., K) inputs: returns (K,).

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), population statistics.
    """
    shape = jnp.shape(labels)
    x = _flat(predictions, 1).astype(jnp.float32)
    y = _flat(labels, 1).astype(jnp.float32)
    weight = _label_mask(mask, shape)
    count = jnp.maximum(weight.sum(axis=0), 1.0)
    mean_x = (weight * x).sum(axis=0) / count
    mean_y = (weight * y).sum(axis=0) / count
    dx, dy = x - mean_x, y - mean_y
    var_x = (weight * dx * dx).sum(axis=0) / count
    var_y = (weight * dy * dy).sum(axis=0) / count
    cov = (weight * dx * dy).sum(axis=0) / count
    denominator = var_x + var_y + (mean_x - mean_y) ** 2
    return jnp.where(denominator > 0, 2 * cov / jnp.maximum(denominator, 1e-12), 0.0)


def valid_count(mask: jax.Array) -> jax.Array:
    """How many valid labels (frames, or frame-label pairs for a per-label mask) a metric would use."""
    return jnp.sum(jnp.asarray(mask).astype(jnp.int32))


def label_scores(
    task: str | tasks.Task, final: jax.Array, labels: jax.Array, mask: jax.Array, classes: Sequence[int] | None = None
) -> tuple[jax.Array, jax.Array]:
    """(task metric, per-class scores) of final per-frame labels: AU 0/1 per AU, EXPR class indices, VA values.

    The metric is the mean of the per-class scores over `classes` (label indices; None: all of the task's).
    """
    task = task if isinstance(task, tasks.Task) else tasks.get_task(task)
    if task.kind == "binary":
        per_class = binary_f1(final, labels, mask)
    elif task.kind == "multiclass":
        per_class = multiclass_f1(final, labels, mask, task.num_outputs)
    else:
        per_class = ccc(final, labels, mask)
    chosen = per_class if classes is None else per_class[jnp.asarray(tuple(classes), jnp.int32)]
    return chosen.mean(), per_class


def task_scores(
    task: str | tasks.Task,
    outputs: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    thresholds: jax.Array | float = 0.5,
    classes: Sequence[int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(task metric, per-class scores) for a task's per-frame outputs.

    AU outputs are probabilities (thresholded per AU), EXPR outputs per-class scores (arg-max), VA outputs values;
    labels are in the annotation files' encoding (AU 0/1 per AU, EXPR class index, VA two floats); `classes` as in
    `label_scores`.
    """
    task = task if isinstance(task, tasks.Task) else tasks.get_task(task)
    if task.kind == "binary":
        final = outputs >= jnp.asarray(thresholds, jnp.float32)
    elif task.kind == "multiclass":
        final = jnp.argmax(outputs, axis=-1)
    else:
        final = outputs
    return label_scores(task, final, labels, mask, classes)
