"""Post-processing tuned on out-of-fold predictions: smoothing sigma, AU thresholds, EXPR class biases.

Every grid is evaluated in one jitted computation, vmapped over its values (the sigma grid is the output
channels of one convolution, see `smoothing`); videos stream through in chunks (`lax.map`) that each reduce to
the metric's sufficient statistics (F1: true/false positives and false negatives per class; CCC: moments), so
a grid over millions of frames never materialises (grid, frames, channels) at once.

The steps run in order, each on the result of the one before (the before/after table of the job):
  1. sigma (a grid including 0) for the task metric at the default decision rule (AU threshold 0.5, arg-max);
  2. AU: each AU's threshold on a grid, independently (the mean F1 is a sum over AUs);
     EXPR (optional): a per-class bias on log-probabilities, by coordinate ascent over the classes (a few
     rounds), each class's grid evaluated at once.
Ties go to the first grid value (the smallest sigma, the lowest threshold, the bias nearest the start).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax import tasks
from abaw_jax.eval import metrics, smoothing


def _counts(predictions: jax.Array, truth: jax.Array, weight: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """(3, ...) true positives, false positives and false negatives of 0/1 arrays summed over `axes`."""
    return jnp.stack([(weight * predictions * truth).sum(axes), (weight * predictions * (1 - truth)).sum(axes),
                      (weight * (1 - predictions) * truth).sum(axes)])


def _statistics(kind: str, outputs: jax.Array, labels: jax.Array, valid: jax.Array, thresholds: jax.Array,
                shift: jax.Array) -> jax.Array:
    """Sufficient statistics of the task metric for outputs (..., V, T, C), summed over V and T."""
    frame_axes = (outputs.ndim - 3, outputs.ndim - 2)
    weight = valid.astype(jnp.float32)[..., None]
    if kind == "binary":
        return _counts((outputs >= thresholds).astype(jnp.float32), labels.astype(jnp.float32), weight,
                       frame_axes)
    if kind == "multiclass":
        num_classes = outputs.shape[-1]
        predicted = jax.nn.one_hot(jnp.argmax(outputs, axis=-1), num_classes)
        return _counts(predicted, jax.nn.one_hot(labels, num_classes), weight, frame_axes)
    # Moments about the labels' mean keep float32 sums well conditioned.
    x = outputs - shift
    y = jnp.broadcast_to(labels.astype(jnp.float32) - shift, x.shape)
    count = jnp.broadcast_to(weight, x.shape)
    return jnp.stack([count.sum(frame_axes), (weight * x).sum(frame_axes), (weight * y).sum(frame_axes),
                      (weight * x * x).sum(frame_axes), (weight * y * y).sum(frame_axes),
                      (weight * x * y).sum(frame_axes)])


def _per_class(kind: str, statistics: jax.Array) -> jax.Array:
    """Per-class scores from `_statistics` (leading axis the statistic)."""
    if kind != "continuous":
        return metrics.f1_from_counts(statistics[0], statistics[1], statistics[2])
    count = jnp.maximum(statistics[0], 1.0)
    mean_x, mean_y = statistics[1] / count, statistics[2] / count
    var_x = statistics[3] / count - mean_x ** 2
    var_y = statistics[4] / count - mean_y ** 2
    cov = statistics[5] / count - mean_x * mean_y
    denominator = var_x + var_y + (mean_x - mean_y) ** 2
    return jnp.where(denominator > 0, 2 * cov / jnp.maximum(denominator, 1e-12), 0.0)


def _chunked(arrays: Sequence[jax.Array], chunk: int, fn) -> jax.Array:
    """Sum over video chunks of fn(*chunk_arrays); videos padded to a multiple of `chunk` with empty masks."""
    num_videos = arrays[0].shape[0]
    chunk = max(1, min(chunk, num_videos))
    extra = -num_videos % chunk
    padded = [jnp.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
    stacked = [a.reshape((-1, chunk) + a.shape[1:]) for a in padded]
    return jax.lax.map(lambda parts: fn(*parts), stacked).sum(0)


@functools.partial(jax.jit, static_argnames=("task", "chunk"))
def sigma_grid_scores(task: str, outputs: jax.Array, labels: jax.Array, valid: jax.Array, mask: jax.Array,
                      weights: jax.Array, thresholds: jax.Array | float = 0.5, chunk: int = 16) -> jax.Array:
    """(S, K) per-class scores of the outputs (V, T, C) smoothed with each kernel of `weights` (S, 2R+1).

    `valid` (V, T) marks the frames that count (valid annotated frames); AU frames use `thresholds`.
    """
    kind = tasks.get_task(task).kind
    thresholds = jnp.asarray(thresholds, jnp.float32)
    shift = _label_mean(labels, valid) if kind == "continuous" else 0.0

    def chunk_statistics(values, chunk_labels, chunk_valid, chunk_mask):
        smoothed = smoothing.smooth(values, chunk_mask, weights)
        return _statistics(kind, smoothed, chunk_labels, chunk_valid & chunk_mask, thresholds, shift)

    statistics = _chunked([outputs, labels, valid, mask], chunk, chunk_statistics)
    return _per_class(kind, statistics)


def _label_mean(labels: jax.Array, valid: jax.Array) -> jax.Array:
    weight = valid.astype(jnp.float32)[..., None]
    return (weight * labels).sum((0, 1)) / jnp.maximum(weight.sum((0, 1)), 1.0)


@functools.partial(jax.jit, static_argnames=("chunk",))
def threshold_grid_scores(probabilities: jax.Array, labels: jax.Array, valid: jax.Array, grid: jax.Array,
                          chunk: int = 16) -> jax.Array:
    """(G, 12) per-AU F1 of probabilities (V, T, 12) at each threshold of `grid` (G,) (the same for all AUs)."""
    def chunk_statistics(values, chunk_labels, chunk_valid):
        return jax.vmap(lambda t: _statistics("binary", values, chunk_labels, chunk_valid, t, 0.0))(grid)

    statistics = _chunked([probabilities, labels, valid], chunk, chunk_statistics)   # (G, 3, 12)
    return _per_class("binary", jnp.moveaxis(statistics, 1, 0))


@functools.partial(jax.jit, static_argnames=("chunk",))
def class_bias_grid_scores(log_probabilities: jax.Array, labels: jax.Array, valid: jax.Array, bias: jax.Array,
                           target: jax.Array, grid: jax.Array, chunk: int = 16) -> jax.Array:
    """(G, 8) per-class F1 of arg-max(log p + bias) with class `target`'s bias replaced by each `grid` value."""
    def chunk_statistics(values, chunk_labels, chunk_valid):
        def at(value):
            return _statistics("multiclass", values + bias.at[target].set(value), chunk_labels, chunk_valid,
                               0.0, 0.0)
        return jax.vmap(at)(grid)

    statistics = _chunked([log_probabilities, labels, valid], chunk, chunk_statistics)
    return _per_class("multiclass", jnp.moveaxis(statistics, 1, 0))


@dataclasses.dataclass
class Tuned:
    """What tuning chose and how the metric moved at each step.

    Attributes:
      sigma: the chosen smoothing sigma (0 = none).
      thresholds: AU per-AU thresholds (12,), else None.
      bias: EXPR per-class biases on log-probabilities (8,), else None.
      sigma_grid, sigma_metric: the grid and the metric at each sigma (default decision rule).
      steps: rows (step, chosen value, metric before, metric after).
    """

    task: str
    sigma: float
    thresholds: np.ndarray | None
    bias: np.ndarray | None
    sigma_grid: np.ndarray
    sigma_metric: np.ndarray
    steps: list[dict]

    def to_json(self) -> dict:
        return {"task": self.task, "sigma": self.sigma,
                "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
                "bias": None if self.bias is None else [float(b) for b in self.bias],
                "sigma_grid": [float(s) for s in self.sigma_grid],
                "sigma_metric": [float(m) for m in self.sigma_metric], "steps": self.steps}


def apply(task: str, outputs: jax.Array, mask: jax.Array, tuned: Tuned) -> jax.Array:
    """Outputs (V, T, C) post-processed as tuned: smoothed, then EXPR biased (log-probabilities)."""
    smoothed = smoothing.gaussian_smooth(outputs, mask, tuned.sigma)
    if tuned.bias is not None:
        smoothed = jnp.log(jnp.maximum(smoothed, 1e-12)) + jnp.asarray(tuned.bias, jnp.float32)
    return smoothed


def tune(task: str, outputs: jax.Array, labels: jax.Array, valid: jax.Array, mask: jax.Array,
         sigmas: Sequence[float], threshold_grid: Sequence[float] = (), bias_grid: Sequence[float] = (),
         bias_rounds: int = 2, chunk: int = 16) -> Tuned:
    """Tunes the post-processing of outputs (V, T, C) (faces already filled) against labels on `valid` frames.

    `sigmas` must include 0. An empty `threshold_grid` (AU) or `bias_grid` (EXPR) skips that step.
    """
    task_facts = tasks.get_task(task)
    if 0 not in list(sigmas):
        raise ValueError(f"the sigma grid must include 0 (no smoothing), got {list(sigmas)}")
    sigma_grid = np.asarray(sigmas, np.float64)
    per_class = sigma_grid_scores(task_facts.name, outputs, labels, valid, mask,
                                  jnp.asarray(smoothing.gaussian_weights(sigma_grid)), chunk=chunk)
    sigma_metric = np.asarray(per_class.mean(-1))
    best = int(np.argmax(sigma_metric))
    raw = float(sigma_metric[list(sigma_grid).index(0)])
    steps = [{"step": "smoothing sigma", "value": float(sigma_grid[best]), "before": raw,
              "after": float(sigma_metric[best])}]
    tuned = Tuned(task_facts.name, float(sigma_grid[best]), None, None, sigma_grid, sigma_metric, steps)
    if task_facts.kind == "binary" and len(threshold_grid):
        smoothed = smoothing.gaussian_smooth(outputs, mask, tuned.sigma)
        grid = np.asarray(threshold_grid, np.float32)
        scores = np.asarray(threshold_grid_scores(smoothed, labels, valid & mask, jnp.asarray(grid), chunk=chunk))
        tuned.thresholds = grid[np.argmax(scores, axis=0)]
        steps.append({"step": "AU thresholds", "value": [float(t) for t in tuned.thresholds],
                      "before": float(sigma_metric[best]), "after": float(scores.max(axis=0).mean())})
    if task_facts.kind == "multiclass" and len(bias_grid):
        log_p = jnp.log(jnp.maximum(smoothing.gaussian_smooth(outputs, mask, tuned.sigma), 1e-12))
        grid = jnp.asarray(bias_grid, jnp.float32)
        bias = np.zeros(task_facts.num_outputs, np.float32)
        metric = float(sigma_metric[best])
        for _ in range(bias_rounds):
            for target in range(task_facts.num_outputs):
                scores = np.asarray(class_bias_grid_scores(log_p, labels, valid & mask, jnp.asarray(bias), target,
                                                           grid, chunk=chunk)).mean(-1)
                # Only move when it helps, so the metric never falls from one class to the next.
                if scores.max() > metric:
                    bias[target], metric = float(bias_grid[int(np.argmax(scores))]), float(scores.max())
        tuned.bias = bias
        steps.append({"step": "EXPR class biases", "value": [float(b) for b in bias],
                      "before": float(sigma_metric[best]), "after": metric})
    return tuned
