r"""One fine-tuning step (forward, backward, AdamW with layer decay): the job's jitted step against PyTorch.

    python -m benchmarks.finetune_step --size=base --batch=8 --steps=2 --rounds=3 --warmup=1

runs, in one process on the default JAX device and the matching PyTorch device (CUDA if present, else CPU):
- `jax`: `jobs.finetune.train_step` (the job's own step: the RandomResizedCrop resize and flip of each crop and
  ImageNet normalisation on device (`data.device_images`), ViT with drop path, gap + fc_norm + head, the task
  loss, AdamW with layer-wise lr decay through `runtime.optimizer`), jitted with the state donated, on a random
  uint8 batch at the crops' stored size (`--stored_size`, 112 px like Aff-Wild2's) with boxes and flips drawn
  as the loader draws them, already on the device;
- `torch`: timm's `VisionTransformer` (global_pool='avg', the same depth/width/drop path) on a uint8 batch at
  the model's input size (a PyTorch pipeline augments on the host, so its step has no resize), the same
  normalisation, head and loss (EXPR: cross-entropy weighted per class, as `eval.losses` eq. 2), and
  `torch.optim.AdamW` over timm's `param_groups_layer_decay` groups (lr x lr_scale per group).
Both use betas (0.9, 0.999), weight decay 0.05 off 1-d parameters and tokens, layer decay 0.65, drop path 0.1.
Each round times `--steps` steps of each in turn (the same machine load for both); the table gives the best
round and the median in img/s, and the ratio jax / torch.
"""

from __future__ import annotations

import functools
import os

# PyTorch's idle OpenMP threads must sleep rather than spin on the cores JAX's next step needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import platform
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from abaw_jax import tasks
from abaw_jax.data import device_images
from abaw_jax.jobs import finetune
from abaw_jax.models import params_io
from abaw_jax.models.vit import VIT_SIZES, ViT, ViTConfig
from abaw_jax.runtime import optimizer
from abaw_jax.runtime.train_state import TrainState
from abaw_jax.torch_compat import import_timm
from benchmarks import json_out

_SIZE = flags.DEFINE_enum("size", "base", ["tiny", "base"], "ViT size.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per step.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input resolution.")
_PATCH = flags.DEFINE_integer("patch", 16, "Patch size.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per implementation and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps first (compilation happens here).")
_STORED_SIZE = flags.DEFINE_integer("stored_size", 112, "Side of the stored crops the JAX step resizes.")

LR, BETAS, WEIGHT_DECAY, LAYER_DECAY, DROP_PATH = 1e-4, (0.9, 0.999), 0.05, 0.65, 0.1
TASK = tasks.EXPR


def jax_batch(batch: int, stored_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Crops at their stored size with RandomResizedCrop boxes and flips, as `frame_pipeline`'s loader gives them."""
    crop = np.array([0, 0, stored_size, stored_size])
    draws = [device_images.sample_crop(crop, rng, (0.2, 1.0), (3 / 4, 4 / 3), 0.5) for _ in range(batch)]
    return {
        "image": rng.integers(0, 256, (batch, stored_size, stored_size, 3), dtype=np.uint8),
        "box": np.stack([box for box, _ in draws]),
        "flip": np.array([flip for _, flip in draws]),
    }


def jax_step(config: ViTConfig, crops: dict[str, np.ndarray], labels: np.ndarray, weights: np.ndarray):
    params = params_io.init_params(config)
    schedule = optax.constant_schedule(LR)
    tx = optimizer.make_optimizer(
        schedule,
        b1=BETAS[0],
        b2=BETAS[1],
        weight_decay=WEIGHT_DECAY,
        lr_scales=optimizer.layer_decay_scales(params, config.depth, LAYER_DECAY),
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key(0),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )
    step_fn = jax.jit(
        functools.partial(
            finetune.train_step,
            model=ViT(config),
            task=TASK,
            class_weights=jnp.asarray(weights),
            tx=tx,
            schedule=schedule,
        ),
        donate_argnums=0,
    )
    batch = jax.device_put({**crops, "label": labels, "mask": np.ones(len(labels), bool)})
    holder = {"state": state, "loss": None}

    def step():
        holder["state"], metrics = step_fn(holder["state"], batch)
        holder["loss"] = metrics["loss"]

    return step, lambda: jax.block_until_ready(holder["loss"])


def torch_step(config: ViTConfig, images: np.ndarray, labels: np.ndarray, weights: np.ndarray):
    import_timm()
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from timm.optim import param_groups_layer_decay

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = (
        VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.width,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_dim / config.width,
            global_pool="avg",
            num_classes=config.num_classes,
            drop_path_rate=DROP_PATH,
        )
        .to(device)
        .train()
    )
    groups = param_groups_layer_decay(
        model, weight_decay=WEIGHT_DECAY, layer_decay=LAYER_DECAY, no_weight_decay_list=model.no_weight_decay()
    )
    for group in groups:
        group["lr"] = LR * group["lr_scale"]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).long().to(device)
    w = torch.from_numpy(weights).to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    holder = {"loss": None}

    def step():
        inputs = (x.permute(0, 3, 1, 2).float() - mean) / std
        loss = torch.nn.functional.cross_entropy(model(inputs), y, weight=w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        holder["loss"] = loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        if holder["loss"] is not None:
            holder["loss"].item()

    return step, sync


def main(argv: Sequence[str]) -> None:
    del argv
    config = ViTConfig(
        image_size=_IMAGE_SIZE.value,
        patch_size=_PATCH.value,
        pool="gap",
        num_classes=TASK.num_outputs,
        drop_path_rate=DROP_PATH,
        pos_embed_trainable=True,
        **VIT_SIZES[_SIZE.value],
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (_BATCH.value, config.image_size, config.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, TASK.num_outputs, _BATCH.value).astype(np.int32)
    weights = rng.uniform(1, 4, TASK.num_outputs).astype(np.float32)
    crops = jax_batch(_BATCH.value, _STORED_SIZE.value, rng)
    runners = {"jax": jax_step(config, crops, labels, weights), "torch": torch_step(config, images, labels, weights)}
    for step, sync in runners.values():
        for _ in range(_WARMUP.value):
            step()
        sync()
    times = {name: [] for name in runners}
    for _ in range(_ROUNDS.value):
        for name, (step, sync) in runners.items():
            sync()
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                step()
            sync()
            times[name].append(time.perf_counter() - start)
    rate = {
        name: {"best": _BATCH.value * _STEPS.value / min(t), "median": _BATCH.value * _STEPS.value / np.median(t)}
        for name, t in times.items()
    }
    print(
        f"\nFine-tune step, ViT-{_SIZE.value}/{_PATCH.value} at {config.image_size} px (jax: from {_STORED_SIZE.value} "
        f"px crops), batch {_BATCH.value}, fp32, EXPR loss; {jax.devices()[0].device_kind} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)\n"
    )
    print("| implementation | img/s (best round) | img/s (median) |")
    print("|---|---:|---:|")
    for name, r in rate.items():
        print(f"| {name} | {r['best']:.2f} | {r['median']:.2f} |")
    print(f"\njax / torch (best rounds): {rate['jax']['best'] / rate['torch']['best']:.2f}x")
    json_out.write(
        {
            "size": _SIZE.value,
            "batch": _BATCH.value,
            "image_size": config.image_size,
            "stored_size": _STORED_SIZE.value,
            "device": jax.devices()[0].device_kind,
            "img_per_s": rate,
            "jax_over_torch": rate["jax"]["best"] / rate["torch"]["best"],
        }
    )


if __name__ == "__main__":
    app.run(main)
