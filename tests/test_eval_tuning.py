"""Grid tuning against scipy smoothing + scikit-learn metrics (tuning on out-of-fold predictions: test_eval_job)."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score

from abaw_jax import tasks
from abaw_jax.eval import coverage, tuning


def _ccc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _random_batch(task, seed=0, lengths=(40, 17, 60, 5, 33)):
    rng = np.random.default_rng(seed)
    channels = tasks.get_task(task).num_outputs
    outputs = [
        rng.dirichlet(np.ones(channels), n).astype(np.float32)
        if task == "EXPR"
        else rng.uniform(0 if task == "AU" else -1, 1, (n, channels)).astype(np.float32)
        for n in lengths
    ]
    if task == "AU":
        labels = [(rng.uniform(size=(n, 12)) < 0.4).astype(np.int32) for n in lengths]
    elif task == "EXPR":
        labels = [rng.integers(0, 8, n) for n in lengths]
    else:
        labels = [(0.5 * o + 0.3 * rng.normal(size=o.shape)).astype(np.float32) for o in outputs]
    valid = [rng.uniform(size=n) < 0.85 for n in lengths]
    return outputs, labels, valid


def _reference(task, outputs, labels, valid, sigma):
    smoothed = [
        o.astype(np.float64)
        if sigma == 0
        else ndimage.gaussian_filter1d(o.astype(np.float64), sigma, axis=0, mode="reflect", truncate=4.0)
        for o in outputs
    ]
    x = np.concatenate([s[v] for s, v in zip(smoothed, valid)])
    y = np.concatenate([label[v] for label, v in zip(labels, valid)])
    if task == "AU":
        return f1_score(y, x >= 0.5, average=None, zero_division=0)
    if task == "EXPR":
        return f1_score(y, x.argmax(1), labels=range(8), average=None, zero_division=0)
    return np.array([_ccc(x[:, c], y[:, c]) for c in range(2)])


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA"])
def test_sigma_grid_matches_scipy_and_sklearn(task):
    outputs, labels, valid = _random_batch(task)
    sigmas = [0.0, 0.7, 2.0, 9.0]
    padded, mask = coverage.pad_batch(outputs)
    ours = np.asarray(
        tuning.sigma_grid_scores(
            task, padded, coverage.pad_batch(labels)[0], coverage.pad_batch(valid)[0], mask, sigmas, chunk=16
        )
    )  # several chunks and groups
    for row, sigma in zip(ours, sigmas):
        np.testing.assert_allclose(row, _reference(task, outputs, labels, valid, sigma), atol=2e-5)


def test_threshold_and_bias_grids_match_sklearn():
    outputs, labels, valid = _random_batch("AU", seed=3)
    padded, mask = coverage.pad_batch(outputs)
    grid = np.linspace(0.1, 0.9, 9).astype(np.float32)
    ours = np.asarray(
        tuning.threshold_grid_scores(
            padded, coverage.pad_batch(labels)[0], coverage.pad_batch(valid)[0] & mask, grid, chunk=64
        )
    )
    x = np.concatenate([o[v] for o, v in zip(outputs, valid)])
    y = np.concatenate([label[v] for label, v in zip(labels, valid)])
    for row, threshold in zip(ours, grid):
        np.testing.assert_allclose(row, f1_score(y, x >= threshold, average=None, zero_division=0), atol=1e-6)

    outputs, labels, valid = _random_batch("EXPR", seed=4)
    log_p = np.log(coverage.pad_batch(outputs)[0] + 1e-12)
    bias = np.linspace(-0.2, 0.2, 8).astype(np.float32)
    grid = np.array([-1.0, 0.0, 0.8], np.float32)
    ours = np.asarray(
        tuning.class_bias_grid_scores(
            log_p, coverage.pad_batch(labels)[0], coverage.pad_batch(valid)[0] & mask, bias, 3, grid, chunk=64
        )
    )
    x = np.log(np.concatenate([o[v] for o, v in zip(outputs, valid)]) + 1e-12)
    y = np.concatenate([label[v] for label, v in zip(labels, valid)])
    for row, value in zip(ours, grid):
        shifted = bias.copy()
        shifted[3] = value
        reference = f1_score(y, (x + shifted).argmax(1), labels=range(8), average=None, zero_division=0)
        np.testing.assert_allclose(row, reference, atol=1e-6)


def test_sigma_grid_must_include_zero():
    outputs, labels, valid = _random_batch("VA")
    padded, mask = coverage.pad_batch(outputs)
    with pytest.raises(ValueError, match="must include 0"):
        tuning.tune("VA", padded, coverage.pad_batch(labels)[0], coverage.pad_batch(valid)[0], mask, [1.0, 2.0])


def _zero_tuned(task):
    facts = tasks.get_task(task)
    return tuning.Tuned(
        task,
        0.0,
        np.full(12, 0.5, np.float32) if facts.kind == "binary" else None,
        np.zeros(8, np.float32) if facts.kind == "multiclass" else None,
        np.zeros(1),
        np.zeros(1),
        [],
    )


@pytest.mark.parametrize("method", ["vote", "soft"])
@pytest.mark.parametrize("task", ["AU", "EXPR", "VA"])
def test_zero_bias_and_sigma_zero_change_no_label(task, method):
    rng = np.random.default_rng(5)
    members = [_random_batch(task, seed=s, lengths=(30, 12, 25))[0] for s in range(4)]
    padded = np.stack([coverage.pad_batch(m)[0] for m in members])  # (M, V, T, C)
    mask = coverage.pad_batch(members[0])[1]
    use = rng.uniform(size=padded.shape[:2]) < 0.7
    use[0] = True  # every video has a voter; even voter counts make ties
    plain = tuning.final_labels(task, padded, mask, use, None, method)
    tuned = tuning.final_labels(task, padded, mask, use, _zero_tuned(task), method)
    np.testing.assert_array_equal(tuned, plain)


def test_expr_biases_act_on_the_mean_probability_and_each_vote():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(8), size=(4, 2, 30)).astype(np.float32)
    use = np.ones((4, 2), bool)
    mask = np.ones((2, 30), bool)
    tuned = _zero_tuned("EXPR")
    tuned.bias = rng.uniform(-1, 1, 8).astype(np.float32)
    log_mean = np.log(probs.mean(0)) + tuned.bias
    soft = tuning.final_labels("EXPR", probs, mask, use, tuned, "soft")
    np.testing.assert_array_equal(soft, log_mean.argmax(-1))
    votes = (np.log(probs) + tuned.bias).argmax(-1)  # (M, V, T)
    counts = np.stack([(votes == c).sum(0) for c in range(8)], -1)
    tied = counts == counts.max(-1, keepdims=True)
    expected = np.where(tied, log_mean, -np.inf).argmax(-1)
    np.testing.assert_array_equal(tuning.final_labels("EXPR", probs, mask, use, tuned, "vote"), expected)
    assert np.any(tied.sum(-1) > 1)  # ties were exercised
