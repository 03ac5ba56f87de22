"""Post-processing tuned on out-of-fold predictions: smoothing sigma, AU thresholds, EXPR class biases.

Every grid is evaluated in one jitted computation, batched over its values (the sigma grid as batches of kernels,
see `smoothing.correlate`; thresholds and biases by vmap); videos stream through in chunks (`lax.map`) that each
reduce to the metric's sufficient statistics (F1: true/false positives and false negatives per class; CCC:
moments), so a grid over millions of frames never materialises (grid, frames, channels) at once.

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
from abaw_jax.eval import ensemble, metrics, smoothing


def _frame_sums(predicted: jax.Array, truth: jax.Array, weight: jax.Array) -> jax.Array:
    """(2, G, C): sum over frames of predicted * truth * weight and of predicted * weight.

    predicted (C, n, G) 0/1 for G grid values, truth (C, n), weight (n,). One batched matrix product: XLA's dot
    is much faster on CPU than its reductions.
    """
    counted = jnp.stack([truth * weight, jnp.broadcast_to(weight, truth.shape)], -1)  # (C, n, 2)
    return jnp.einsum("cng,cnk->kgc", predicted, counted, precision=jax.lax.Precision.HIGHEST)


def _per_class(kind: str, statistics: jax.Array) -> jax.Array:
    """Per-class scores from `_statistics` (leading axis the statistic)."""
    if kind != "continuous":
        return metrics.f1_from_counts(statistics[0], statistics[1], statistics[2])
    count = jnp.maximum(statistics[0], 1.0)
    mean_x, mean_y = statistics[1] / count, statistics[2] / count
    var_x = statistics[3] / count - mean_x**2
    var_y = statistics[4] / count - mean_y**2
    cov = statistics[5] / count - mean_x * mean_y
    denominator = var_x + var_y + (mean_x - mean_y) ** 2
    return jnp.where(denominator > 0, 2 * cov / jnp.maximum(denominator, 1e-12), 0.0)


def sigma_grid_scores(
    task: str,
    outputs: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    mask: np.ndarray,
    sigmas: Sequence[float],
    thresholds: np.ndarray | float = 0.5,
    chunk: int = 16384,
) -> jax.Array:
    """(S, K) per-class scores of the outputs (V, T, C) smoothed with each sigma of the grid.

    `valid` (V, T) marks the frames that count (valid annotated frames); AU frames use `thresholds`. The videos
    are laid end to end (`smoothing.stream_layout`) and scored in chunks of `chunk` frames, each reduced to sufficient
    statistics for every sigma at once.
    """
    sigmas = tuple(float(s) for s in sigmas)
    mask = np.asarray(mask, bool)
    halo = max(smoothing.kernel_radius(sigma) for sigma in sigmas)
    source, real = smoothing.stream_layout(mask.sum(1), mask.shape[1], halo, chunk)
    thresholds = np.broadcast_to(np.asarray(thresholds, np.float32), (outputs.shape[-1],))
    return _sigma_grid_scores(
        tasks.get_task(task).kind,
        sigmas,
        chunk,
        halo,
        jnp.asarray(outputs),
        jnp.asarray(labels),
        jnp.asarray(valid),
        jnp.asarray(source),
        jnp.asarray(real),
        jnp.asarray(thresholds),
    )


@functools.partial(jax.jit, static_argnames=("kind", "sigmas", "chunk", "halo"))
def _sigma_grid_scores(kind, sigmas, chunk, halo, outputs, labels, valid, source, real, thresholds):
    channels = outputs.shape[-1]
    # Channel-major streams (time on the minor axis, where the taps and the reductions vectorise).
    stream = jnp.take(outputs.reshape(-1, channels).astype(jnp.float32), source, axis=0).T  # (C, L)
    weight = (jnp.take(valid.reshape(-1), source) & real).astype(jnp.float32)  # (L,)
    flat_labels = labels.reshape((-1,) + labels.shape[2:])
    if kind == "multiclass":
        truth = jax.nn.one_hot(jnp.take(flat_labels, source), channels).T  # (C, L)
    else:
        truth = jnp.take(flat_labels, source, axis=0).astype(jnp.float32).T
    shift = (truth * weight).sum(1) / jnp.maximum(weight.sum(), 1.0) if kind == "continuous" else None
    if kind == "continuous":
        truth = truth - shift[:, None]
    num_chunks = (stream.shape[1] - 2 * halo) // chunk
    kernels = smoothing.gaussian_weights(sigmas, halo)

    def chunk_statistics(k):
        window = jax.lax.dynamic_slice_in_dim(stream, k * chunk, chunk + 2 * halo, axis=1)
        w = jax.lax.dynamic_slice_in_dim(weight, k * chunk + halo, chunk)
        y_true = jax.lax.dynamic_slice_in_dim(truth, k * chunk + halo, chunk, axis=1)
        y = smoothing.correlate(window, kernels)  # (C, n, S): every sigma at once
        if kind == "continuous":
            centred = y - shift[:, None, None]
            x = centred * w[:, None]
            sums = jnp.stack([x.sum(1), (x * centred).sum(1), (x * y_true[..., None]).sum(1)])
            return jnp.swapaxes(sums, 1, 2)  # (3, S, C)
        if kind == "binary":
            predicted = (y >= thresholds[:, None, None]).astype(jnp.float32)
        else:
            predicted = (jnp.argmax(y, axis=0)[None] == jnp.arange(channels)[:, None, None]).astype(jnp.float32)
        return _frame_sums(predicted, y_true, w)  # (2, S, C)

    statistics = jax.lax.map(chunk_statistics, jnp.arange(num_chunks)).sum(0)
    if kind == "continuous":
        count = jnp.broadcast_to(weight.sum(), statistics.shape[1:])
        sum_y = jnp.broadcast_to((truth * weight).sum(1), statistics.shape[1:])
        sum_yy = jnp.broadcast_to((truth * truth * weight).sum(1), statistics.shape[1:])
        full = jnp.stack([count, statistics[0], sum_y, statistics[1], sum_yy, statistics[2]])
    else:
        positives = jnp.broadcast_to((truth * weight).sum(1), statistics.shape[1:])
        full = jnp.stack([statistics[0], statistics[1] - statistics[0], positives - statistics[0]])
    return _per_class(kind, full)


def _counted_frames(valid: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the counted frames, padded to whole chunks, and their 0/1 weights."""
    index = np.flatnonzero(np.asarray(valid).reshape(-1))
    padded = np.zeros(max(1, -(-len(index) // chunk)) * chunk, np.int64)
    padded[: len(index)] = index
    return padded, (np.arange(len(padded)) < len(index)).astype(np.float32)


def _frame_major(values: jax.Array, index: jax.Array, chunk: int) -> jax.Array:
    """(chunks, C, chunk) of the (V, T, C) or (V, T) values at flat frame `index`."""
    flat = values.reshape((values.shape[0] * values.shape[1], -1))
    return jnp.take(flat, index, axis=0).reshape(-1, chunk, flat.shape[1]).transpose(0, 2, 1)


def threshold_grid_scores(
    probabilities: jax.Array, labels: jax.Array, valid: np.ndarray, grid: np.ndarray, chunk: int = 65536
) -> jax.Array:
    """(G, 12) per-AU F1 of probabilities (V, T, 12) at each threshold of `grid` (G,) (the same for all AUs)."""
    index, weight = _counted_frames(valid, chunk)
    return _threshold_grid_scores(
        jnp.asarray(probabilities),
        jnp.asarray(labels),
        jnp.asarray(index),
        jnp.asarray(weight),
        jnp.asarray(grid, jnp.float32),
        chunk,
    )


@functools.partial(jax.jit, static_argnames=("chunk",))
def _threshold_grid_scores(probabilities, labels, index, weight, grid, chunk):
    values = _frame_major(probabilities.astype(jnp.float32), index, chunk)
    truth = _frame_major(labels.astype(jnp.float32), index, chunk)
    weight = weight.reshape(-1, chunk)

    def chunk_statistics(parts):
        p, t, w = parts
        return _frame_sums((p[..., None] >= grid).astype(jnp.float32), t, w)  # (2, G, 12)

    sums = jax.lax.map(chunk_statistics, (values, truth, weight)).sum(0)
    positives = (truth * weight[:, None, :]).sum((0, 2))
    return _per_class("binary", jnp.stack([sums[0], sums[1] - sums[0], positives - sums[0]]))


def class_bias_grid_scores(
    log_probabilities: jax.Array,
    labels: jax.Array,
    valid: np.ndarray,
    bias: np.ndarray,
    target: int,
    grid: np.ndarray,
    chunk: int = 65536,
) -> jax.Array:
    """(G, 8) per-class F1 of arg-max(log p + bias) with class `target`'s bias replaced by each `grid` value."""
    index, weight = _counted_frames(valid, chunk)
    biases = np.repeat(np.asarray(bias, np.float32)[None], len(grid), 0)
    biases[:, target] = grid
    return _class_bias_grid_scores(
        jnp.asarray(log_probabilities),
        jnp.asarray(labels),
        jnp.asarray(index),
        jnp.asarray(weight),
        jnp.asarray(biases),
        chunk,
    )


@functools.partial(jax.jit, static_argnames=("chunk",))
def _class_bias_grid_scores(log_probabilities, labels, index, weight, biases, chunk):
    classes = log_probabilities.shape[-1]
    values = _frame_major(log_probabilities.astype(jnp.float32), index, chunk)  # (k, 8, n)
    truth = jax.nn.one_hot(_frame_major(labels, index, chunk)[:, 0], classes).transpose(0, 2, 1)  # (k, 8, n)
    weight = weight.reshape(-1, chunk)

    def chunk_statistics(parts):
        scores, t, w = parts
        arg = jnp.argmax(scores[..., None] + biases.T[:, None, :], axis=0)  # (n, G)
        predicted = (arg[None] == jnp.arange(classes)[:, None, None]).astype(jnp.float32)
        return _frame_sums(predicted, t, w)

    sums = jax.lax.map(chunk_statistics, (values, truth, weight)).sum(0)
    positives = (truth * weight[:, None, :]).sum((0, 2))
    return _per_class("multiclass", jnp.stack([sums[0], sums[1] - sums[0], positives - sums[0]]))


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
        return {
            "task": self.task,
            "sigma": self.sigma,
            "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
            "bias": None if self.bias is None else [float(b) for b in self.bias],
            "sigma_grid": [float(s) for s in self.sigma_grid],
            "sigma_metric": [float(m) for m in self.sigma_metric],
            "steps": self.steps,
        }


def final_outputs(
    task: str,
    outputs: np.ndarray,
    mask: np.ndarray,
    use: np.ndarray,
    tuned: "Tuned | None",
    method: str = "vote",
    videos_per_step: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (V, T, C) float32, labels) of members' outputs (M, V, T, C) post-processed as tuned (None: as they
    are) and combined (`ensemble.combine`) over the members `use` (M, V) picks.

    Scores are the mean of the picked members' smoothed outputs, before EXPR biases and AU thresholds (VA: the
    final values, clipped to [-1, 1]); the biases act inside `ensemble.combine` (on the mean probabilities, not
    on averaged log-probabilities). Works through `videos_per_step` videos at a time, so the temporaries of
    smoothing M members stay small (one pass over the whole of Aff-Wild2 at once would allocate several GB per
    intermediate); each member is smoothed once for both results.
    """
    thresholds = 0.5 if tuned is None or tuned.thresholds is None else np.asarray(tuned.thresholds)
    bias = None if tuned is None or tuned.bias is None else jnp.asarray(tuned.bias, jnp.float32)
    num_members, num_videos = outputs.shape[:2]
    scores, labels = [], []
    for start in range(0, num_videos, videos_per_step):
        part = slice(start, start + videos_per_step)
        smoothed = outputs[:, part]
        if tuned is not None:
            flat = smoothed.reshape((-1,) + smoothed.shape[2:])
            smoothed = smoothing.gaussian_smooth(
                flat, np.tile(np.asarray(mask)[part], (num_members, 1)), tuned.sigma
            ).reshape(smoothed.shape)
        weight = jnp.asarray(use[:, part], jnp.float32)[:, :, None, None]
        scores.append(np.asarray((weight * smoothed).sum(0) / jnp.maximum(weight.sum(0), 1.0)))
        labels.append(
            np.asarray(ensemble.combine(task, smoothed, jnp.asarray(use[:, part]), thresholds, method, bias=bias))
        )
    scores = np.concatenate(scores).astype(np.float32)
    if tasks.get_task(task).kind == "continuous":
        scores = np.clip(scores, -1.0, 1.0)
    return scores, np.concatenate(labels)


def final_labels(
    task: str,
    outputs: np.ndarray,
    mask: np.ndarray,
    use: np.ndarray,
    tuned: "Tuned | None",
    method: str = "vote",
    videos_per_step: int = 32,
) -> np.ndarray:
    """The labels of `final_outputs`."""
    return final_outputs(task, outputs, mask, use, tuned, method, videos_per_step)[1]


def tune(
    task: str,
    outputs: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    mask: jax.Array,
    sigmas: Sequence[float],
    threshold_grid: Sequence[float] = (),
    bias_grid: Sequence[float] = (),
    bias_rounds: int = 2,
    chunk: int = 16384,
) -> Tuned:
    """Tunes the post-processing of outputs (V, T, C) (faces already filled) against labels on `valid` frames.

    `sigmas` must include 0. An empty `threshold_grid` (AU) or `bias_grid` (EXPR) skips that step. `chunk` is
    how many frames each step of the streamed grid evaluation holds.
    """
    task_facts = tasks.get_task(task)
    if 0 not in list(sigmas):
        raise ValueError(f"the sigma grid must include 0 (no smoothing), got {list(sigmas)}")
    sigma_grid = np.asarray(sigmas, np.float64)
    counted = np.asarray(valid, bool) & np.asarray(mask, bool)
    per_class = sigma_grid_scores(task_facts.name, outputs, labels, valid, mask, sigma_grid, chunk=chunk)
    sigma_metric = np.asarray(per_class.mean(-1))
    best = int(np.argmax(sigma_metric))
    raw = float(sigma_metric[list(sigma_grid).index(0)])
    steps = [
        {"step": "smoothing sigma", "value": float(sigma_grid[best]), "before": raw, "after": float(sigma_metric[best])}
    ]
    tuned = Tuned(task_facts.name, float(sigma_grid[best]), None, None, sigma_grid, sigma_metric, steps)
    if task_facts.kind == "binary" and len(threshold_grid):
        smoothed = smoothing.gaussian_smooth(outputs, mask, tuned.sigma)
        grid = np.asarray(threshold_grid, np.float32)
        scores = np.asarray(threshold_grid_scores(smoothed, labels, counted, grid, chunk=chunk))
        tuned.thresholds = grid[np.argmax(scores, axis=0)]
        steps.append(
            {
                "step": "AU thresholds",
                "value": [float(t) for t in tuned.thresholds],
                "before": float(sigma_metric[best]),
                "after": float(scores.max(axis=0).mean()),
            }
        )
    if task_facts.kind == "multiclass" and len(bias_grid):
        log_p = jnp.log(jnp.maximum(smoothing.gaussian_smooth(outputs, mask, tuned.sigma), 1e-12))
        grid = np.asarray(bias_grid, np.float32)
        bias = np.zeros(task_facts.num_outputs, np.float32)
        metric = float(sigma_metric[best])
        for _ in range(bias_rounds):
            for target in range(task_facts.num_outputs):
                scores = np.asarray(
                    class_bias_grid_scores(log_p, labels, counted, bias, target, grid, chunk=chunk)
                ).mean(-1)
                # Only move when it helps, so the metric never falls from one class to the next.
                if scores.max() > metric:
                    bias[target], metric = float(bias_grid[int(np.argmax(scores))]), float(scores.max())
        tuned.bias = bias
        steps.append(
            {
                "step": "EXPR class biases",
                "value": [float(b) for b in bias],
                "before": float(sigma_metric[best]),
                "after": metric,
            }
        )
    return tuned
