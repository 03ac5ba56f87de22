"""The state a training job checkpoints: step, parameters, optimizer state, RNG and a non-finite step count."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
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


def apply_gradients(state: TrainState, loss: jax.Array, grads: Any, tx: optax.GradientTransformation
                    ) -> tuple[TrainState, jax.Array]:
    """One optimizer step, skipped (and counted in `nonfinite_steps`) when the loss or a gradient is not
    finite; returns the new state and the gradient norm.

    A branch, not a select over every buffer: selecting would re-read and re-write all parameters and
    optimizer moments each step (8x the cost of the AdamW update itself on CPU).
    """
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    return new_state, grad_norm


def stop_if_nonfinite(state: TrainState, step: int, last_loss: float, last_good_checkpoint: int | None,
                      checkpoint_dir: str) -> None:
    """Raises JobError if any step so far was skipped for a non-finite loss or gradient (`apply_gradients`)."""
    bad_steps = int(jax.device_get(state.nonfinite_steps))
    if bad_steps:
        raise JobError(
            f"non-finite loss or gradient in {bad_steps} step(s) at or before step {step} "
            f"(last loss {last_loss}); stopping. The last good checkpoint "
            f"(step {last_good_checkpoint}) is kept in {checkpoint_dir}.")
