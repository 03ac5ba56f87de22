"""The bootstrap over videos against references that concatenate the resampled videos' frames and score them with
scikit-learn (F1) or numpy (CCC), and the verdict rule."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_jax.report import bootstrap


def _ccc(x, y):
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _videos(task, rng, count=6):
    """Per-video (final, labels) of different lengths, and a validity mask per video."""
    out = []
    for _ in range(count):
        n = int(rng.integers(20, 60))
        if task == "AU":
            labels = (rng.uniform(size=(n, 12)) < 0.3).astype(int)
            final = np.where(rng.uniform(size=labels.shape) < 0.7, labels, 1 - labels)
        elif task == "EXPR":
            labels = rng.integers(0, 8, n)
            final = np.where(rng.uniform(size=n) < 0.5, labels, rng.integers(0, 8, n))
        else:
            labels = rng.uniform(-1, 1, (n, 2))
            final = labels + 0.5 * rng.normal(size=labels.shape)
        out.append((final, labels, rng.uniform(size=n) < 0.9))
    return out


def _reference(task, videos, picked):
    final = np.concatenate([videos[i][0][videos[i][2]] for i in picked])
    labels = np.concatenate([videos[i][1][videos[i][2]] for i in picked])
    if task == "VA":
        return np.mean([_ccc(final[:, c], labels[:, c]) for c in range(2)])
    kwargs = {"labels": range(8)} if task == "EXPR" else {}
    return f1_score(labels, final, average="macro", zero_division=0, **kwargs)


def _statistics(task, videos):
    length = max(len(v[1]) for v in videos)
    pad = lambda a: np.concatenate([a, np.zeros((length - len(a),) + a.shape[1:], a.dtype)])
    final = np.stack([pad(np.asarray(v[0])) for v in videos])
    labels = np.stack([pad(np.asarray(v[1])) for v in videos])
    counted = np.stack([pad(v[2]) for v in videos])
    return bootstrap.video_statistics(task, final, labels, counted)


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA"])
def test_resampled_metrics_score_the_concatenated_frames_of_the_drawn_videos(task):
    rng = np.random.default_rng(0)
    videos = _videos(task, rng)
    statistics = _statistics(task, videos)
    assert bootstrap.point(statistics) == pytest.approx(_reference(task, videos, range(len(videos))), abs=1e-9)
    counts = bootstrap.resample_counts(len(videos), resamples=20, seed=3)
    ours = bootstrap.resampled_metrics(statistics, counts)
    for row, value in zip(counts, ours):
        picked = np.repeat(np.arange(len(videos)), row.astype(int))  # duplicates count twice
        assert value == pytest.approx(_reference(task, videos, picked), abs=1e-9)


def test_resamples_draw_videos_with_replacement_from_the_seed():
    counts = bootstrap.resample_counts(7)
    assert counts.shape == (bootstrap.RESAMPLES, 7) and np.all(counts.sum(1) == 7)
    draws = np.random.default_rng(bootstrap.SEED).integers(0, 7, (bootstrap.RESAMPLES, 7))
    np.testing.assert_array_equal(counts[5], np.bincount(draws[5], minlength=7))
    assert np.any(counts.max(1) > 1)  # some video is drawn twice


def test_intervals_are_percentiles_and_differences_are_paired():
    rng = np.random.default_rng(1)
    videos = _videos("VA", rng, count=9)
    better = [(labels + 0.1 * (final - labels), labels, valid) for final, labels, valid in videos]
    worse, good = _statistics("VA", videos), _statistics("VA", better)
    values = bootstrap.resampled_metrics(good, bootstrap.resample_counts(9))
    assert bootstrap.score_interval(good) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    low, high = bootstrap.difference_interval(worse, good)
    counts = bootstrap.resample_counts(9)
    paired = bootstrap.resampled_metrics(good, counts) - bootstrap.resampled_metrics(worse, counts)
    assert (low, high) == pytest.approx(tuple(np.percentile(paired, [2.5, 97.5])))
    assert low > 0 and bootstrap.verdict(low, high, 9) == "holds"
    assert bootstrap.difference_interval(good, good) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same videos"):
        bootstrap.difference_interval(worse[:4], good)


def test_a_mean_of_scores_averages_each_resamples_metrics():
    rng = np.random.default_rng(2)
    stacked = np.stack([_statistics("EXPR", _videos("EXPR", np.random.default_rng(s))) for s in range(3)])
    counts = bootstrap.resample_counts(6, resamples=10)
    expected = np.mean([bootstrap.resampled_metrics(s, counts) for s in stacked], axis=0)
    np.testing.assert_allclose(bootstrap.resampled_metrics(stacked, counts), expected)
    assert bootstrap.point(stacked) == pytest.approx(np.mean([bootstrap.point(s) for s in stacked]))
    order = [f"v{i}" for i in rng.permutation(6)]
    aligned = bootstrap.align([f"v{i}" for i in range(6)], stacked, order)
    np.testing.assert_array_equal(aligned[:, 0], stacked[:, int(order[0][1:])])


@pytest.mark.parametrize(
    "low, high, videos, expected",
    [
        (0.01, 0.2, 5, "holds"),
        (-0.2, -0.01, 5, "does not hold"),
        (-0.1, 0.1, 50, "undecided"),
        (0.0, 0.1, 5, "undecided"),
        (0.01, 0.2, 4, "too few videos to decide"),
    ],
)
def test_verdict_from_the_interval_and_the_number_of_videos(low, high, videos, expected):
    assert bootstrap.verdict(low, high, videos) == expected
    assert bootstrap.parse_interval(bootstrap.format_interval(low, high)) == pytest.approx((low, high))
