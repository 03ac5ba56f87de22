"""The state a training job checkpoints: step, parameters, optimizer state, RNG and a non-finite step count."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """A pytree; `rng` is folded with `step` for each step's randomness, so a resumed run draws the same."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_steps: jax.Array
