"""MAE face pretraining: one readable loop, sharded with jit over a (data, fsdp) mesh.

Per step: each process reads its slice of the global batch (uint8, augmented on the host by grain),
the slices become one global array sharded over all devices, and a single jitted step normalises the
images, draws the masking noise for the whole global batch, accumulates gradients over
`micro_batches` micro-batches with `lax.scan`, and applies AdamW. The state is donated, parameters and
optimizer state are sharded FSDP-style when `mesh.fsdp > 1`, and the loop runs under a transfer guard
so that no implicit host-device copy sneaks in. The noise is drawn for the global batch from the step's
RNG, so the loss trajectory does not depend on the device count, the process count or micro-batching.

A non-finite loss or gradient leaves the state untouched for that step and is counted; the loop checks
the count before every checkpoint and log line and stops with a message, keeping the last good
checkpoint. Rerunning with the same workdir resumes parameters, optimizer state, step, RNG and the
data iterator, from the newest checkpoint that reads back completely (a damaged one is reported and
moved aside). Config values are validated before any work (`validate_config`); the workdir is locked
for the run (`runtime.workdir.lock`), and SIGTERM stops the loop at the next step with a checkpoint.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from abaw_jax.data import default_faces, face_shards, mae_pipeline
from abaw_jax.eval import reconstruction_grid
from abaw_jax.models import flops, params_io, torch_weights
from abaw_jax.models.mae import MAE, MAEConfig, mae_config
from abaw_jax.models.vit import ATTENTION_IMPLEMENTATIONS
from abaw_jax.runtime import checkpointing, optimizer, sharding, telemetry, train_state
from abaw_jax.runtime import config_checks as checks
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.errors import ConfigError, JobError
from abaw_jax.runtime.telemetry import log
from abaw_jax.runtime.train_state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Settings that change how the job runs or reports, never what it trains: the pipeline keeps a finished stage
# when only these change (remat recomputes the same activations; the cache holds the same generated data).
COSMETIC_KEYS = (
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "image_every",
    "image_count",
    "model.remat",
    "data.worker_count",
    "data.worker_buffer_size",
    "data.cache_dir",
)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the job reads; raises ConfigError naming `config.<key>` and the bad value."""
    checks.choice(config, "model.dtype", DTYPES)
    checks.choice(config, "model.attention", ("auto",) + tuple(ATTENTION_IMPLEMENTATIONS))
    checks.integer(config, "model.image_size", minimum=1)
    checks.integer(config, "model.patch_size", minimum=1)
    checks.fraction(config, "model.mask_ratio")
    checks.integer(config, "data.worker_count", minimum=0)
    checks.integer(config, "data.worker_buffer_size", minimum=1)
    checks.integer(config, "data.synthetic_videos", minimum=1)
    checks.integer(config, "data.synthetic_frames_per_video", minimum=1)
    checks.path(config, "data.data_dir", kind="dir", allow_empty=True)
    for key in (
        "batch_size",
        "micro_batches",
        "mesh.fsdp",
        "num_epochs",
        "log_every",
        "checkpoint_every",
        "image_every",
        "image_count",
        "keep_checkpoints",
    ):
        checks.integer(config, key, minimum=1)
    for key in ("total_steps", "warmup_steps", "warmup_epochs", "seed"):
        checks.integer(config, key, minimum=0)
    checks.number(config, "base_lr", minimum=0, exclusive=True)
    checks.fraction(config, "b1", inclusive=True)
    checks.fraction(config, "b2", inclusive=True)
    checks.number(config, "weight_decay", minimum=0)
    checks.number(config, "grad_clip", minimum=0)


def model_from_config(config: ml_collections.ConfigDict) -> tuple[MAE, MAEConfig]:
    m = config.model
    attention = m.attention
    if attention == "auto":
        attention = "cudnn" if jax.devices()[0].device_kind.startswith("NVIDIA") else "xla"
    try:
        cfg = mae_config(
            m.size,
            image_size=m.image_size,
            patch_size=m.patch_size,
            mask_ratio=m.mask_ratio,
            norm_pix_loss=m.norm_pix_loss,
        )
    except ValueError as e:  # the model's own checks (size name, image size divisible by the patch size)
        raise ConfigError(f"config.model: {e}") from e
    return MAE(cfg, dtype=DTYPES[m.dtype], remat=m.remat, attention=attention), cfg


def check_batch_layout(batch_size: int, micro_batches: int, num_devices: int, num_processes: int) -> None:
    if micro_batches < 1 or batch_size % micro_batches:
        raise ConfigError(f"config.batch_size={batch_size} is not divisible by micro_batches={micro_batches}")
    micro = batch_size // micro_batches
    if micro % num_devices:
        raise ConfigError(
            f"each micro-batch (config.batch_size / config.micro_batches = {batch_size} / "
            f"{micro_batches} = {micro} images) must split evenly over the {num_devices} devices"
        )
    if batch_size % num_processes:
        raise ConfigError(f"config.batch_size={batch_size} is not divisible by the {num_processes} processes")


def init_state(rng: jax.Array, model: MAE, cfg: MAEConfig, tx: optax.GradientTransformation) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    size = cfg.encoder.image_size
    images = jnp.zeros((1, size, size, cfg.encoder.channels), jnp.float32)
    noise = jnp.zeros((1, cfg.encoder.num_patches), jnp.float32)
    params = model.init(init_rng, images, noise)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=state_rng,
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )


def _split_micro(x: jax.Array, micro_batches: int, mesh: Mesh) -> jax.Array:
    # Micro-batch m takes rows m, m + M, m + 2M, ...: every device keeps its rows, so no resharding.
    x = x.reshape((x.shape[0] // micro_batches, micro_batches) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def train_step(
    state: TrainState,
    images: jax.Array,
    *,
    model: MAE,
    cfg: MAEConfig,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    micro_batches: int,
    mesh: Mesh,
) -> tuple[TrainState, dict[str, jax.Array]]:
    x = mae_pipeline.normalize_images(images)
    noise = jax.random.uniform(jax.random.fold_in(state.rng, state.step), (x.shape[0], cfg.encoder.num_patches))

    def loss_fn(params, x, noise):
        return model.apply({"params": params}, x, noise).loss

    grad_fn = jax.value_and_grad(loss_fn)
    if micro_batches == 1:
        loss, grads = grad_fn(state.params, x, noise)
    else:

        def accumulate(carry, micro):
            loss, grads = grad_fn(state.params, *micro)
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
        micro = (_split_micro(x, micro_batches, mesh), _split_micro(noise, micro_batches, mesh))
        (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro)
        # The MAE loss averages over a fixed number of masked patches per image, so the mean of the
        # micro-batch losses (and gradients) equals the full-batch value.
        loss, grads = jax.tree.map(lambda t: t / micro_batches, (loss, grads))

    new_state, grad_norm = train_state.apply_gradients(state, loss, grads, tx)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step)}


def reconstruct(
    params: Any, images: jax.Array, rng: jax.Array, *, model: MAE, cfg: MAEConfig, count: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = mae_pipeline.normalize_images(images[:count])
    out = model.apply({"params": params}, x, jax.random.uniform(rng, (count, cfg.encoder.num_patches)))
    return x, out.pred, out.mask


def _load_source(config: ml_collections.ConfigDict):
    data_dir = config.data.data_dir
    if not data_dir:
        build = functools.partial(
            default_faces.default_face_shards,
            config.data.cache_dir or None,
            num_videos=config.data.synthetic_videos,
            frames_per_video=config.data.synthetic_frames_per_video,
            seed=config.seed,
        )
        if jax.process_index() == 0:
            build()
        multihost_utils.sync_global_devices("default face shards ready")
        data_dir = build()  # returns at once: process 0 has built them
        log(f"No --config.data.data_dir given: training on the embedded synthetic faces in {data_dir}")
    try:
        source = face_shards.load_face_source(data_dir, config.data.split)
    except FileNotFoundError as e:
        raise JobError(str(e)) from e
    except (KeyError, ValueError) as e:  # tfds: a split the shards do not hold
        raise ConfigError(f"config.data.split={config.data.split!r}: {e}") from e
    if len(source) < config.batch_size:
        raise JobError(
            f"{data_dir} ({config.data.split}) holds {len(source)} faces, fewer than one batch of {config.batch_size}"
        )
    return data_dir, source


def _export_encoder(params: Any, cfg: MAEConfig, workdir: str) -> None:
    """Writes the encoder in our format (a collective orbax save: every process calls this) and, from
    process 0, in the official PyTorch MAE key layout."""
    encoder = jax.device_get(params["encoder"])
    export_dir = os.path.join(workdir, "export")
    if jax.process_index() == 0 and os.path.exists(export_dir):
        shutil.rmtree(export_dir)  # an earlier, shorter run of this workdir
    multihost_utils.sync_global_devices("export dir ready")
    params_io.save_params(os.path.join(export_dir, "encoder"), encoder, cfg.encoder)
    if jax.process_index() == 0:
        written = torch_weights.export_official(
            torch_weights.flax_to_official(encoder), os.path.join(export_dir, "encoder_official")
        )
        log("Exported the encoder: " + ", ".join([os.path.join(export_dir, "encoder")] + written))


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Runs (or resumes) MAE pretraining in `workdir`, holding its lock; returns the final state."""
    validate_config(config)
    with workdir_lib.session(workdir) as stop_requested:
        return _train(config, workdir, stop_requested)


def _train(config: ml_collections.ConfigDict, workdir: str, stop_requested: Callable[[], bool]) -> TrainState:
    model, cfg = model_from_config(config)
    num_devices, num_processes = jax.device_count(), jax.process_count()
    check_batch_layout(config.batch_size, config.micro_batches, num_devices, num_processes)
    mesh = sharding.make_mesh(config.mesh.fsdp)
    data_dir, source = _load_source(config)

    steps_per_epoch = len(source) // config.batch_size
    total_steps = config.total_steps or steps_per_epoch * config.num_epochs
    if total_steps <= 0:
        raise ConfigError(
            f"config.total_steps=0 means config.num_epochs={config.num_epochs} epochs of "
            f"{steps_per_epoch} steps, i.e. no training; set config.total_steps > 0"
        )
    warmup_steps = config.warmup_steps or steps_per_epoch * config.warmup_epochs
    peak_lr = optimizer.peak_learning_rate(config.base_lr, config.batch_size)
    schedule = optimizer.learning_rate_schedule(peak_lr, warmup_steps, total_steps)
    tx = optimizer.make_optimizer(
        schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, grad_clip=config.grad_clip
    )

    init_fn = functools.partial(init_state, model=model, cfg=cfg, tx=tx)
    abstract_state = jax.eval_shape(init_fn, jax.random.key(config.seed))
    state_shardings = sharding.fsdp_shardings(abstract_state, mesh)
    state = jax.jit(init_fn, out_shardings=state_shardings)(jax.random.key(config.seed))
    log(
        f"MAE {config.model.size} ({model.dtype.__name__} compute, {model.attention} attention): "
        f"{optimizer.tree_size(state.params):,} parameters, {num_devices} devices in "
        f"{num_processes} processes, mesh {dict(mesh.shape)}, batch {config.batch_size} "
        f"({config.micro_batches} micro-batches), {len(source):,} faces in {data_dir}, "
        f"{total_steps} steps, peak lr {peak_lr:.3g}"
    )

    skipped_dir = os.path.join(workdir, "skipped_records")
    loader = mae_pipeline.make_mae_loader(
        source,
        global_batch_size=config.batch_size,
        image_size=cfg.encoder.image_size,
        seed=config.seed,
        num_epochs=None,
        worker_count=config.data.worker_count,
        worker_buffer_size=config.data.worker_buffer_size,
        skipped_records_dir=skipped_dir,
    )
    data_iter = iter(loader)

    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        model_description=params_io.config_to_dict(cfg),
    )
    abstract = checkpointing.abstract_with_shardings(abstract_state, state_shardings)
    latest, restored = checkpointer.restore_latest(abstract, data_iter)
    if latest is not None:
        state = restored
        log(f"Resumed from {checkpointer.directory} at step {latest}")

    step_fn = jax.jit(
        functools.partial(
            train_step, model=model, cfg=cfg, tx=tx, schedule=schedule, micro_batches=config.micro_batches, mesh=mesh
        ),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    recon_fn = jax.jit(
        functools.partial(reconstruct, model=model, cfg=cfg, count=min(config.image_count, config.batch_size)),
        out_shardings=sharding.replicated(mesh),
    )

    is_main = jax.process_index() == 0
    writer = telemetry.MetricWriter(workdir, enabled=is_main)
    flops_per_image = flops.mae_flops_per_image(cfg)["train"]
    throughput = telemetry.Throughput(
        config.batch_size, flops_per_image, num_devices, flops.device_peak_flops(jax.devices()[0])
    )
    step = int(jax.device_get(state.step))
    first_step = step
    last_good_checkpoint = latest
    try:
        while step < total_steps:
            if stop_requested():
                checkpointer.stop_for_sigterm(step, state, data_iter, last_good_checkpoint)
            wait_start = time.perf_counter()
            local = next(data_iter)["image"]
            throughput.data_wait += time.perf_counter() - wait_start
            images = sharding.global_batch(local, mesh)
            with jax.transfer_guard("disallow"):
                state, step_metrics = step_fn(state, images)
            step += 1
            if step == first_step + 1:
                jax.block_until_ready(state)
                throughput.start(step)
            is_last = step == total_steps
            log_now = step % config.log_every == 0 or step == first_step + 1 or is_last
            if log_now or step % config.checkpoint_every == 0:
                scalars = jax.device_get(step_metrics)
                train_state.stop_if_nonfinite(
                    state.nonfinite_steps, step, float(scalars["loss"]), last_good_checkpoint, checkpointer.directory
                )
                if log_now:
                    scalars.update(throughput.measure(step, total_steps))
                    log(telemetry.progress_line(step, total_steps, scalars))
                    writer.write(step, scalars)
                if step % config.checkpoint_every == 0 or is_last:
                    checkpointer.save(step, state, data_iter)
                    last_good_checkpoint = step
            if step % config.image_every == 0 or is_last:
                x, pred, mask = jax.device_get(recon_fn(state.params, images, jax.random.key(step)))
                if is_main:
                    grid = reconstruction_grid.reconstruction_grid(
                        x, pred, mask, cfg.encoder.patch_size, cfg.norm_pix_loss
                    )
                    os.makedirs(os.path.join(workdir, "reconstructions"), exist_ok=True)
                    reconstruction_grid.save_png(grid, os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"))
                    writer.write_image(step, "reconstructions", grid)
    finally:
        checkpointer.close()
        writer.close()
    skipped = mae_pipeline.read_skipped_records(skipped_dir)
    if skipped:
        log(f"Skipped {len(skipped)} corrupt records (ids in {skipped_dir})")
    replicated_params = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(state.params)
    _export_encoder(replicated_params, cfg, workdir)
    return state
