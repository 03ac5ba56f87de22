"""Combining ensemble members' per-frame predictions (the paper's section 3.3), and the scene routing (SDD).

Members are stacked on a leading axis: `outputs` (M, V, T, C), and `use` (M, V) says which members count for
each video (scene routing: reaction videos use the `reaction` member, the others the fold and whole members).

  AU    majority vote, per AU, of the members' hard labels (probability >= the AU's threshold). A tie (as many
        members for 1 as for 0, possible with an even member count) is broken by the mean probability of the
        voting members against the same threshold.
  EXPR  majority vote of the members' arg-max classes. A tie between classes is broken by the highest mean
        probability of the voting members among the tied classes.
  VA    mean of the members' values, clipped to [-1, 1].
  soft  (AU, EXPR) mean of the members' probabilities, then the threshold or the arg-max.

EXPR class biases (tuned post-processing, `eval.tuning`) act where an arg-max is taken, on log-probabilities:
each member votes arg-max(log p_m + bias), soft takes arg-max(log mean_m p_m + bias), and a vote's tie goes to
the tied class with the highest log mean_m p_m + bias. Probabilities are averaged, never log-probabilities, so
a zero bias gives exactly the rules above.

The results are final labels: AU (V, T, 12) int32 0/1, EXPR (V, T) int32 class, VA (V, T, 2) float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax import tasks

METHODS = ("vote", "soft")
ROUTINGS = ("alone", "combined")


def _member_sum(values, use: jax.Array) -> jax.Array:
    """sum over members m of use[m, v] * values(m) (..., V, T, C); values is a function of m.

    Unrolled over the (few) members: XLA's CPU reduction over a leading axis is ~5x slower than fused adds.
    """
    weight = use.astype(jnp.float32)[:, :, None, None]
    return sum(weight[m] * values(m) for m in range(use.shape[0]))


@functools.partial(jax.jit, static_argnames=("task", "method"))
def combine(
    task: str,
    outputs: jax.Array,
    use: jax.Array,
    thresholds: jax.Array | float = 0.5,
    method: str = "vote",
    bias: jax.Array | None = None,
) -> jax.Array:
    """Final per-frame labels from members' outputs (M, V, T, C); `use` (M, V) bool picks members per video.

    `bias` (C,): EXPR class biases on log-probabilities (None: none), applied as the module docstring says.
    """
    kind = tasks.get_task(task).kind
    outputs = outputs.astype(jnp.float32)
    count = jnp.maximum(use.astype(jnp.float32).sum(0), 1.0)[:, None, None]
    mean = _member_sum(lambda m: outputs[m], use) / count
    if kind == "continuous":
        return jnp.clip(mean, -1.0, 1.0)
    if kind == "binary":
        thresholds = jnp.asarray(thresholds, jnp.float32)
        by_mean = (mean >= thresholds).astype(jnp.int32)
        if method == "soft":
            return by_mean
        ones = _member_sum(lambda m: (outputs[m] >= thresholds).astype(jnp.float32), use)
        zeros = _member_sum(lambda m: (outputs[m] < thresholds).astype(jnp.float32), use)
        return jnp.where(ones > zeros, 1, jnp.where(zeros > ones, 0, by_mean)).astype(jnp.int32)
    biased = (lambda p: p) if bias is None else (lambda p: jnp.log(jnp.maximum(p, 1e-12)) + bias)
    mean = biased(mean)
    if method == "soft":
        return jnp.argmax(mean, axis=-1).astype(jnp.int32)
    num_classes = outputs.shape[-1]
    votes = _member_sum(lambda m: jax.nn.one_hot(jnp.argmax(biased(outputs[m]), axis=-1), num_classes), use)
    tied = votes == votes.max(axis=-1, keepdims=True)
    return jnp.argmax(jnp.where(tied, mean, -jnp.inf), axis=-1).astype(jnp.int32)


def routing_mask(
    members: Sequence[str],
    is_reaction: np.ndarray,
    *,
    general: Sequence[str],
    reaction_member: str = "reaction",
    routing: str = "alone",
) -> np.ndarray:
    """(M, V) bool: which of `members` combine for each video.

    Videos with `is_reaction` use `reaction_member` alone (the paper) or together with the `general` members
    (`routing='combined'`); the others use the `general` members (fold and whole members in the paper).
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    members = list(members)
    missing = [m for m in list(general) + ([reaction_member] if np.any(is_reaction) else []) if m not in members]
    if missing:
        raise ValueError(f"members {missing} are not among the predictions' members {members}")
    is_reaction = np.asarray(is_reaction, bool)
    general_row = np.array([m in general for m in members])[:, None]
    reaction_row = np.array([m == reaction_member for m in members])[:, None]
    on_reaction = reaction_row | general_row if routing == "combined" else reaction_row
    return np.where(is_reaction[None, :], on_reaction, general_row)


def hard_labels(task: str, outputs: jax.Array, thresholds: jax.Array | float = 0.5) -> jax.Array:
    """One member's final labels (what `combine` gives for a single member)."""
    return combine(task, outputs[None], jnp.ones((1, outputs.shape[0]), bool), thresholds, "soft")


def required_members(config) -> list[str]:
    """The members an evaluate config (configs/evaluate.py) reads, in a fixed order: folds, official, general,
    and the reaction member unless scene routing is off."""
    routed = config.scene_routing != "none"
    return list(
        dict.fromkeys(
            list(config.fold_members)
            + [config.official_member]
            + list(config.ensemble.general)
            + ([config.ensemble.reaction_member] if routed else [])
        )
    )
