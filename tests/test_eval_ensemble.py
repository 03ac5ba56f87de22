"""Majority vote, tie rules, soft voting, VA mean and scene routing against plain per-frame Python references."""

import collections

import numpy as np
import pytest

from abaw_jax.eval import ensemble


def _reference_vote_expr(probs, use):
    members, videos, frames, classes = probs.shape
    out = np.zeros((videos, frames), int)
    for v in range(videos):
        voters = [m for m in range(members) if use[m, v]]
        for t in range(frames):
            counts = collections.Counter(int(np.argmax(probs[m, v, t])) for m in voters)
            top = max(counts.values())
            tied = [c for c, n in counts.items() if n == top]
            mean = probs[voters, v, t].mean(0)
            out[v, t] = max(tied, key=lambda c: mean[c])
    return out


def test_expr_vote_with_ties_broken_by_mean_probability():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(8) * 0.5, size=(4, 3, 50)).astype(np.float32)
    use = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)  # 4, 3 and 3 voters: ties happen
    ours = np.asarray(ensemble.combine("EXPR", probs, use))
    np.testing.assert_array_equal(ours, _reference_vote_expr(probs, use))
    # A 2-2 tie where the class with the lower mean probability comes first.
    tie = np.zeros((4, 1, 1, 8), np.float32)
    tie[0, 0, 0, [1, 5]] = [0.9, 0.1]
    tie[1, 0, 0, [1, 5]] = [0.6, 0.4]
    tie[2, 0, 0, [1, 5]] = [0.0, 1.0]
    tie[3, 0, 0, [1, 5]] = [0.05, 0.95]
    assert int(ensemble.combine("EXPR", tie, np.ones((4, 1), bool))[0, 0]) == 5


def test_au_vote_ties_use_mean_probability_against_the_threshold():
    rng = np.random.default_rng(1)
    probs = rng.uniform(size=(4, 2, 40, 12)).astype(np.float32)
    thresholds = rng.uniform(0.3, 0.7, size=12).astype(np.float32)
    use = np.ones((4, 2), bool)
    ours = np.asarray(ensemble.combine("AU", probs, use, thresholds))
    ones = (probs >= thresholds).sum(0)
    expected = np.where(ones > 2, 1, np.where(ones < 2, 0, probs.mean(0) >= thresholds))
    np.testing.assert_array_equal(ours, expected)
    assert np.any(ones == 2)  # ties were exercised
    soft = np.asarray(ensemble.combine("AU", probs, use, thresholds, method="soft"))
    np.testing.assert_array_equal(soft, probs.mean(0) >= thresholds)


def test_va_mean_of_the_routed_members_clipped():
    rng = np.random.default_rng(2)
    values = rng.uniform(-1.5, 1.5, size=(3, 2, 10, 2)).astype(np.float32)
    use = np.array([[1, 0], [1, 1], [0, 1]], bool)
    ours = np.asarray(ensemble.combine("VA", values, use))
    np.testing.assert_allclose(ours[0], np.clip(values[:2, 0].mean(0), -1, 1), rtol=1e-6)
    np.testing.assert_allclose(ours[1], np.clip(values[1:, 1].mean(0), -1, 1), rtol=1e-6)


def test_routing_alone_combined_and_missing_member():
    members = ["fold1", "fold2", "whole", "reaction"]
    is_reaction = np.array([True, False])
    alone = ensemble.routing_mask(members, is_reaction, general=["fold1", "fold2", "whole"])
    assert alone[:, 0].tolist() == [False, False, False, True] and alone[:, 1].tolist() == [True, True, True, False]
    combined = ensemble.routing_mask(members, is_reaction, general=["fold1", "fold2", "whole"], routing="combined")
    assert combined[:, 0].all()
    with pytest.raises(ValueError, match=r"\['reaction'\] are not among"):
        ensemble.routing_mask(members[:3], is_reaction, general=["fold1"])
