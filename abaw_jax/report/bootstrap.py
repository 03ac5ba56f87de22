"""Uncertainty of a score from its per-video sufficient statistics: a bootstrap over videos.

The task metrics are not averages of per-video scores (F1 pools true/false positives over frames, CCC pools
moments), so a resample of videos is scored by summing the resampled videos' statistics and computing the metric
once from the sums, as if their frames were concatenated:
  AU, EXPR  per class: true positives, false positives, false negatives  -> macro F1 (0 where 2tp + fp + fn = 0)
  VA        per channel: n, sum x, sum y, sum x^2, sum y^2, sum xy       -> mean CCC (0 where the denominator is 0)
Statistics are (V, C, S) float64 arrays; `video_statistics` makes them from final labels (what evaluate writes).
A score that is the mean of K scores on the same videos (evaluate's "single member (mean of K)") has (K, V, C, S)
statistics, and each resample averages the K metrics.

A resample draws V videos with replacement (numpy's `default_rng(SEED).integers`), RESAMPLES times; the interval
is the 2.5th and 97.5th percentiles of the resampled metrics (numpy's linear interpolation). A claim's
difference is paired: both sides are scored on the same resamples of their (common) videos. The draws depend
only on the number of videos and the seed, so the report and its check recompute identical intervals.

A claim's verdict comes from the interval of its difference: "holds" when it lies above 0, "does not hold" when
below, "undecided" when it contains 0, and "too few videos to decide" below MIN_VIDEOS videos, where the
resamples are few distinct sets and the interval says little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from abaw_jax import tasks

SEED = 0
RESAMPLES = 1000
LEVEL = 95
MIN_VIDEOS = 5
HOLDS, DOES_NOT_HOLD, UNDECIDED, TOO_FEW = "holds", "does not hold", "undecided", "too few videos to decide"


def video_statistics(task: str, final: np.ndarray, labels: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """(V, C, S) sufficient statistics of final labels (V, T[, C]) against labels on the `counted` (V, T) frames."""
    facts = tasks.get_task(task)
    weight = np.asarray(counted, np.float64)[..., None]
    if facts.kind == "continuous":
        x, y = np.asarray(final, np.float64), np.asarray(labels, np.float64)
        parts = [np.broadcast_to(weight, x.shape), x, y, x * x, y * y, x * y]
        return np.stack([(weight * p).sum(1) for p in parts], -1)
    if facts.kind == "multiclass":
        classes = np.arange(facts.num_outputs)
        predicted = (np.asarray(final)[..., None] == classes).astype(np.float64)
        truth = (np.asarray(labels)[..., None] == classes).astype(np.float64)
    else:
        predicted, truth = np.asarray(final, np.float64), np.asarray(labels, np.float64)
    tp = (weight * predicted * truth).sum(1)
    fp = (weight * predicted * (1 - truth)).sum(1)
    fn = (weight * (1 - predicted) * truth).sum(1)
    return np.stack([tp, fp, fn], -1)


def metric(statistics: np.ndarray) -> np.ndarray:
    """The task metric of summed statistics (..., C, S): F1 macro for S = 3, mean CCC for S = 6."""
    s = np.asarray(statistics, np.float64)
    if s.shape[-1] == 3:
        denominator = 2 * s[..., 0] + s[..., 1] + s[..., 2]
        per_class = np.where(denominator > 0, 2 * s[..., 0] / np.maximum(denominator, 1e-300), 0.0)
        return per_class.mean(-1)
    count = np.maximum(s[..., 0], 1.0)
    mean_x, mean_y = s[..., 1] / count, s[..., 2] / count
    var_x, var_y = s[..., 3] / count - mean_x**2, s[..., 4] / count - mean_y**2
    cov = s[..., 5] / count - mean_x * mean_y
    denominator = var_x + var_y + (mean_x - mean_y) ** 2
    per_channel = np.where(denominator > 0, 2 * cov / np.where(denominator > 0, denominator, 1.0), 0.0)
    return per_channel.mean(-1)


def resample_counts(num_videos: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, num_videos): how often each video is drawn in each resample."""
    draws = np.random.default_rng(seed).integers(0, num_videos, (resamples, num_videos))
    return np.stack([np.bincount(row, minlength=num_videos) for row in draws]).astype(np.float64)


def _stacked(statistics: np.ndarray) -> np.ndarray:
    """(K, V, C, S) float64 of (V, C, S) or (K, V, C, S) statistics."""
    statistics = np.asarray(statistics, np.float64)
    return statistics[None] if statistics.ndim == 3 else statistics


def num_videos(statistics: np.ndarray) -> int:
    return _stacked(statistics).shape[1]


def point(statistics: np.ndarray) -> float:
    """The score of all videos (the value the interval is about)."""
    return float(metric(_stacked(statistics).sum(1)).mean())


def resampled_metrics(statistics: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(resamples,) metric of each resample: the videos' statistics (V, C, S) (or (K, V, C, S): the mean of the K
    metrics) summed with `counts` (R, V)."""
    return metric(np.einsum("rv,kvcs->rkcs", counts, _stacked(statistics))).mean(-1)


def interval(values: np.ndarray) -> tuple[float, float]:
    """The central LEVEL% percentile interval of resampled values."""
    low, high = np.percentile(values, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return float(low), float(high)


def score_interval(statistics: np.ndarray) -> tuple[float, float]:
    """The bootstrap interval of one score."""
    return interval(resampled_metrics(statistics, resample_counts(num_videos(statistics))))


def difference_interval(without: np.ndarray, with_: np.ndarray) -> tuple[float, float]:
    """The paired bootstrap interval of metric(with_) - metric(without), both (V, C, S) over the same videos."""
    if num_videos(without) != num_videos(with_):
        raise ValueError(f"paired statistics need the same videos, got {num_videos(without)} and {num_videos(with_)}")
    counts = resample_counts(num_videos(without))
    return interval(resampled_metrics(with_, counts) - resampled_metrics(without, counts))


def verdict(low: float, high: float, num_videos: int) -> str:
    """A claim's verdict from the interval of its difference (module docstring)."""
    if num_videos < MIN_VIDEOS:
        return TOO_FEW
    return HOLDS if low > 0 else DOES_NOT_HOLD if high < 0 else UNDECIDED


def format_interval(low: float, high: float) -> str:
    return f"[{low:.4f}, {high:.4f}]"


def parse_interval(cell: str) -> tuple[float, float] | None:
    """The (low, high) of a `format_interval` cell, None if it is not one."""
    parts = cell.strip().removeprefix("[").removesuffix("]").split(",")
    try:
        return (float(parts[0]), float(parts[1])) if cell.strip().startswith("[") and len(parts) == 2 else None
    except ValueError:
        return None


def align(videos: Sequence[str], statistics: np.ndarray, order: Sequence[str]) -> np.ndarray:
    """`statistics` (videos on axis 0, or 1 when stacked, in `videos` order) reordered to `order` (the same
    names), to pair two sides."""
    if sorted(videos) != sorted(order):
        raise ValueError(f"the two sides score different videos: {sorted(videos)} vs {sorted(order)}")
    position = {name: i for i, name in enumerate(videos)}
    statistics = np.asarray(statistics, np.float64)
    picked = [position[name] for name in order]
    return statistics[picked] if statistics.ndim == 3 else statistics[:, picked]
