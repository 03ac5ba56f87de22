"""The pretraining job's own jitted step on a fixed batch already on the devices, for the benchmarks.

Both `mae_step` (against PyTorch) and `mae_job` (against the whole job) time this, so the step they
measure is `mae_pretrain.train_step` with the job's optimizer, shardings and donation.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from abaw_jax.jobs import mae_pretrain
from abaw_jax.models.mae import MAE
from abaw_jax.runtime import optimizer, sharding

LEARNING_RATE = 1.5e-4
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.05


@dataclasses.dataclass
class Runner:
    """One implementation's training step on a fixed batch, and how to wait for the device."""

    impl: str
    step: Callable[[], None]
    sync: Callable[[], None]
    last_loss: Callable[[], float]
    # The compiled step's HLO text (JAX runners only): what the profile attributes trace events to.
    compiled_text: Callable[[], str] | None = None


def timed(runner: Runner, steps: int) -> float:
    """Seconds for `steps` steps, the device synchronised before and after."""
    runner.sync()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    runner.sync()
    return time.perf_counter() - start


def jax_runner(model: MAE, batch: int, mesh: Mesh, micro_batches: int = 1) -> Runner:
    """`mae_pretrain.train_step` of `model`, state FSDP-sharded and a random uint8 batch split over `mesh`."""
    cfg = model.config
    schedule = optax.constant_schedule(LEARNING_RATE)
    tx = optimizer.make_optimizer(schedule, b1=BETAS[0], b2=BETAS[1], weight_decay=WEIGHT_DECAY)
    init_fn = functools.partial(mae_pretrain.init_state, model=model, cfg=cfg, tx=tx)
    shardings = sharding.fsdp_shardings(jax.eval_shape(init_fn, jax.random.key(0)), mesh)
    size = cfg.encoder.image_size
    images = jax.device_put(
        np.random.default_rng(1).integers(0, 256, (batch, size, size, cfg.encoder.channels), dtype=np.uint8),
        sharding.batch_sharding(mesh),
    )
    train_step = jax.jit(
        functools.partial(
            mae_pretrain.train_step,
            model=model,
            cfg=cfg,
            tx=tx,
            schedule=schedule,
            micro_batches=micro_batches,
            mesh=mesh,
        ),
        donate_argnums=0,
    )
    holder = {"state": jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0)), "loss": jnp.zeros(())}

    def step():
        holder["state"], metrics = train_step(holder["state"], images)
        holder["loss"] = metrics["loss"]

    return Runner(
        f"jax ({model.attention} attention)",
        step,
        lambda: jax.block_until_ready(holder["loss"]),
        lambda: float(holder["loss"]),
        lambda: train_step.lower(holder["state"], images).compile().as_text(),
    )
