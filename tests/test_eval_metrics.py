"""Task metrics against scikit-learn and a numpy CCC, including degenerate masks and classes."""

import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_jax import tasks
from abaw_jax.eval import metrics


def numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's CCC with population statistics, written out independently."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def per_class(task: str, *args) -> np.ndarray:
    """The per-class scores of metrics.task_scores, jitted as the jobs run it."""
    return np.asarray(jax.jit(metrics.task_scores, static_argnums=0)(task, *args)[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_au_f1_matches_sklearn_per_au(seed):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(size=(3, 50, 12)).astype(np.float32)
    labels = (rng.uniform(size=(3, 50, 12)) < rng.uniform(0.05, 0.6, size=12)).astype(np.int8)
    mask = rng.uniform(size=(3, 50)) < 0.8
    thresholds = rng.uniform(0.3, 0.7, size=12).astype(np.float32)
    ours = np.asarray(per_class("AU", probs, labels, mask, thresholds))
    keep = mask.reshape(-1)
    pred = (probs.reshape(-1, 12) >= thresholds)[keep]
    reference = f1_score(labels.reshape(-1, 12)[keep], pred, average=None, zero_division=0)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_expr_f1_matches_sklearn_with_absent_classes(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 4, 6], size=(4, 60))  # classes 2, 3, 5, 7 never occur in the truth
    scores = rng.normal(size=(4, 60, 8)).astype(np.float32)
    scores[..., 7] -= 10  # class 7 never predicted either: absent from both, scores 0
    mask = rng.uniform(size=(4, 60)) < 0.7
    ours = np.asarray(per_class("EXPR", scores, labels, mask))
    keep = mask.reshape(-1)
    reference = f1_score(
        labels.reshape(-1)[keep], scores.reshape(-1, 8).argmax(-1)[keep], labels=range(8), average=None, zero_division=0
    )
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)
    assert ours[7] == 0.0
    mean, _ = metrics.task_scores("EXPR", scores, labels, mask)
    assert float(mean) == pytest.approx(reference.mean(), rel=1e-6)


def test_ccc_matches_numpy_population_statistics():
    rng = np.random.default_rng(3)
    labels = rng.uniform(-1, 1, size=(5, 40, 2)).astype(np.float32)
    values = (0.6 * labels + 0.3 * rng.normal(size=labels.shape) + 0.1).astype(np.float32)
    mask = rng.uniform(size=(5, 40)) < 0.9
    ours = np.asarray(per_class("VA", values, labels, mask))
    keep = mask.reshape(-1)
    reference = [numpy_ccc(values.reshape(-1, 2)[keep, c], labels.reshape(-1, 2)[keep, c]) for c in range(2)]
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    # Sample (n-1) statistics would give a different number on 20 frames; ours must match the population one.
    x, y = values[0, :20, 0], labels[0, :20, 0]
    sample = 2 * np.cov(x, y, ddof=1)[0, 1] / (x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2)
    ours_short = float(metrics.ccc(x[:, None], y[:, None], np.ones(20, bool))[0])
    assert ours_short == pytest.approx(numpy_ccc(x, y), rel=1e-5)
    assert abs(ours_short - sample) > 1e-4


def test_masked_frames_do_not_count():
    labels = np.array([[1, 0], [0, 1], [1, 1]], np.int8)
    preds = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    assert np.allclose(per_class("AU", preds, labels, np.array([True, True, False])), [1.0, 1.0])
    assert not np.allclose(per_class("AU", preds, labels, np.ones(3, bool)), [1.0, 1.0])


def test_degenerate_cases_are_defined_not_nan():
    empty = np.zeros((10,), bool)
    rng = np.random.default_rng(0)
    assert metrics.valid_count(empty) == 0
    assert np.array_equal(per_class("AU", rng.uniform(size=(10, 12)), np.ones((10, 12)), empty), np.zeros(12))
    assert np.array_equal(per_class("EXPR", rng.normal(size=(10, 8)), np.zeros(10, int), empty), np.zeros(8))
    assert np.array_equal(per_class("VA", rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), empty), np.zeros(2))
    # All frames one class, always predicted: that class scores 1, every other class 0.
    onehot = np.tile(np.eye(8)[4], (10, 1))
    np.testing.assert_array_equal(per_class("EXPR", onehot, np.full(10, 4), np.ones(10, bool)), np.eye(8)[4])
    # Constant prediction and constant truth: CCC 0, not NaN.
    const = per_class("VA", np.zeros((10, 2)), np.full((10, 2), 0.3), np.ones(10, bool))
    assert np.array_equal(const, np.zeros(2))


def test_task_scores_dispatch_on_task_kind():
    rng = np.random.default_rng(5)
    labels = rng.uniform(-1, 1, size=(30, 2))
    mean, per = metrics.task_scores(tasks.VA, labels, labels, np.ones(30, bool))
    np.testing.assert_allclose(per, [1.0, 1.0], rtol=1e-6)
    assert float(mean) == pytest.approx(1.0, rel=1e-6)
    # Outputs and the final labels they give score the same: AU thresholded, EXPR arg-max.
    probs, truth, mask = rng.uniform(size=(40, 12)), rng.uniform(size=(40, 12)) < 0.3, rng.uniform(size=40) < 0.8
    np.testing.assert_array_equal(
        metrics.task_scores("AU", probs, truth, mask, 0.4)[1], metrics.label_scores("AU", probs >= 0.4, truth, mask)[1]
    )
    scores, classes = rng.normal(size=(40, 8)), rng.integers(0, 8, 40)
    np.testing.assert_array_equal(
        metrics.task_scores("EXPR", scores, classes, mask)[1],
        metrics.label_scores("EXPR", scores.argmax(-1), classes, mask)[1],
    )


def test_unannotated_aus_are_masked_and_classes_limit_the_mean():
    """An AU label of -1 is left out of its F1 (never a 0); `classes` averages only the source's labels."""
    rng = np.random.default_rng(5)
    probs = rng.uniform(size=(60, 12)).astype(np.float32)
    labels = (rng.uniform(size=(60, 12)) < 0.4).astype(np.int8)
    labels[:, 10:] = -1
    labels[rng.uniform(size=(60, 12)) < 0.1] = -1
    mask = rng.uniform(size=60) < 0.9
    ours = per_class("AU", probs, labels, mask, 0.5)
    for k in range(10):
        keep = mask & (labels[:, k] >= 0)
        assert ours[k] == pytest.approx(f1_score(labels[keep, k], probs[keep, k] >= 0.5, zero_division=0), abs=1e-6)
    assert (ours[10:] == 0).all()
    metric, _ = metrics.task_scores("AU", probs, labels, mask, 0.5, classes=tuple(range(10)))
    assert float(metric) == pytest.approx(ours[:10].mean(), rel=1e-6)
    expr = rng.integers(0, 7, size=60)
    scores = rng.normal(size=(60, 8)).astype(np.float32)
    metric, per = metrics.task_scores("EXPR", scores, expr, np.ones(60, bool), classes=range(7))
    reference = f1_score(expr, scores.argmax(-1), labels=range(7), average="macro", zero_division=0)
    assert float(metric) == pytest.approx(reference, rel=1e-6) and per.shape == (8,)
