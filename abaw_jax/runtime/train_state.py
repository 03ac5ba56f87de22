"""The state a training job checkpoints: step, parameters, optimizer state, RNG and a non-finite step count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from abaw_jax.runtime.errors import JobError


@flax.struct.dataclass
class TrainState:
    """A pytree; `rng` is folded with `step` for each step's randomness, so a resumed run draws the same."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_steps: jax.Array


def guarded_update(
    loss: jax.Array, grads: Any, params: Any, opt_state: Any, tx: optax.GradientTransformation
) -> tuple[Any, Any, jax.Array, jax.Array]:
    """One optimizer update, skipped when the loss or a gradient is not finite: (params, opt_state, finite,
    gradient norm). Every training step of every job goes through it (pretraining, fine-tuning, each fusion
    member), so a NaN batch never reaches the parameters and is counted instead.

    A branch, not a select over every buffer: selecting would re-read and re-write all parameters and
    optimizer moments each step (8x the cost of the AdamW update itself on CPU). Under vmap it becomes one.
    """
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), params, opt_state)
    return params, opt_state, finite, grad_norm


def apply_gradients(
    state: TrainState, loss: jax.Array, grads: Any, tx: optax.GradientTransformation
) -> tuple[TrainState, jax.Array]:
    """`guarded_update` of a TrainState, counting skipped steps in `nonfinite_steps`; returns the new state and
    the gradient norm."""
    params, opt_state, finite, grad_norm = guarded_update(loss, grads, state.params, state.opt_state, tx)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    )
    return new_state, grad_norm


def stop_if_nonfinite(
    nonfinite_steps: jax.Array,
    step: int,
    last_loss: str | float,
    last_good_checkpoint: int | None,
    checkpoint_dir: str,
    names: Sequence[str] = (),
) -> None:
    """Raises JobError if any step so far was skipped for a non-finite loss or gradient.

    `nonfinite_steps` is a job's count (a scalar), or one count per ensemble member (named by `names`)."""
    counts = np.atleast_1d(np.asarray(jax.device_get(nonfinite_steps)))
    if not counts.any():
        return
    who = ""
    if names:
        who = " of member(s) " + ", ".join(f"{n} ({int(c)})" for n, c in zip(names, counts) if c)
    kept = (
        f"The last good checkpoint (step {last_good_checkpoint}) is kept in {checkpoint_dir}."
        if last_good_checkpoint is not None
        else f"No checkpoint was written yet ({checkpoint_dir})."
    )
    raise JobError(
        f"non-finite loss or gradient in {int(counts.sum())} step(s){who} at or before step {step} "
        f"(last loss {last_loss}); stopping: nothing of this run is exported. {kept}"
    )
