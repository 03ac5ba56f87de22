r"""One full MAE pretraining step (forward, backward, AdamW update): our jitted JAX step against PyTorch.

    python -m benchmarks.mae_step --size=base --batch=8 --dtype=fp32 --steps=2 --rounds=3 --warmup=1

runs, on the default JAX device and the matching PyTorch device (CUDA if present, else CPU), in one process:
- `jax`: `MAE` in `--dtype` compute with fp32 parameters, `optax.adamw`, one `jax.jit` step with donated state;
- `torch_eager`: transformers `ViTMAEForPreTraining` with the same config (LayerNorm eps 1e-6,
  norm_pix_loss) and `torch.optim.AdamW`; `--dtype=bf16` runs it under `torch.autocast` (AMP);
- `torch_compile`: the same model through `torch.compile`.
Both optimisers use betas (0.9, 0.95) and weight decay 0.05 on weight matrices only (the official recipe).
All implementations are built and warmed up (`--warmup` steps, compilation included) first; then each
round times `--steps` steps of each in turn, so that on a shared machine they see the same load. The table
gives each one's best round (and the median) in img/s, analytic TFLOP/s (`abaw_jax.models.flops`), the
fraction of a measured large-matmul rate in the same dtype ("how near the roofline"), MFU against the
device's bf16 dense peak where known, and the ratio to PyTorch eager; `--json_out` also writes the numbers.

GPU, bf16 at a large batch:

    python -m benchmarks.mae_step --size=base --batch=256 --dtype=bf16 --steps=10 --rounds=3 --warmup=3 \
        --matmul_size=8192

JAX and PyTorch share the GPU here, so JAX allocates on demand instead of taking 75% of its memory upfront.
"""

from __future__ import annotations

import dataclasses
import json
import os

# Set before JAX and PyTorch start. PyTorch needs its share of the GPU's memory in the same process, and
# its idle OpenMP threads must sleep rather than spin on the cores JAX's next step needs (on 2 CPU cores
# spinning threads cost the JAX step ~25%).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from abaw_jax.models.flops import device_peak_flops, mae_flops_per_image
from abaw_jax.models.mae import MAE, MAEConfig, mae_config
from abaw_jax.models.vit import ATTENTION_IMPLEMENTATIONS
from abaw_jax.runtime import sharding
from benchmarks.step_runner import BETAS, LEARNING_RATE, WEIGHT_DECAY, Runner, jax_runner, timed

_SIZE = flags.DEFINE_enum("size", "base", ["tiny", "base", "large"], "Model size.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per step.")
_DTYPE = flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16"], "Compute dtype (parameters stay fp32).")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per implementation and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds; each times every implementation in turn.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps first (compilation happens here).")
_IMPLS = flags.DEFINE_list("impls", ["torch_eager", "torch_compile", "jax"], "Implementations to time.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input resolution.")
_ATTENTION = flags.DEFINE_list(
    "attention",
    ["xla"],
    f"JAX attention implementations to time, of {ATTENTION_IMPLEMENTATIONS} ('cudnn' needs an NVIDIA GPU).",
)
_REMAT = flags.DEFINE_boolean("remat", False, "JAX: recompute block activations in the backward pass.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul that measures the roofline.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


@dataclasses.dataclass
class Timing:
    impl: str
    round_seconds_per_step: list[float]
    warmup_seconds: float
    batch: int

    @property
    def best_images_per_second(self) -> float:
        return self.batch / min(self.round_seconds_per_step)

    @property
    def median_images_per_second(self) -> float:
        return self.batch / float(np.median(self.round_seconds_per_step))


def measure(runners: Sequence[Runner], batch: int, warmup: int, steps: int, rounds: int) -> list[Timing]:
    """Warms every runner up, then times `steps` steps of each in turn, `rounds` times over.

    Interleaving the rounds gives each implementation the same share of a busy (shared) machine.
    """
    warmup_seconds = {r.impl: timed(r, warmup) for r in runners}
    per_round: dict[str, list[float]] = {r.impl: [] for r in runners}
    for round_index in range(rounds):
        for runner in runners:
            per_round[runner.impl].append(timed(runner, steps) / steps)
        logging.info("round %d: %s", round_index, {k: f"{batch / v[-1]:.2f} img/s" for k, v in per_round.items()})
    for runner in runners:
        loss = runner.last_loss()
        if not np.isfinite(loss):
            raise FloatingPointError(f"{runner.impl}: loss is {loss} after {warmup + rounds * steps} steps")
    return [Timing(r.impl, per_round[r.impl], warmup_seconds[r.impl], batch) for r in runners]


def torch_mae(config: MAEConfig):
    from abaw_jax.torch_compat import prepare_torch_imports

    prepare_torch_imports()
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    enc = config.encoder
    return ViTMAEForPreTraining(
        ViTMAEConfig(
            hidden_size=enc.width,
            num_hidden_layers=enc.depth,
            num_attention_heads=enc.num_heads,
            intermediate_size=enc.mlp_dim,
            image_size=enc.image_size,
            patch_size=enc.patch_size,
            num_channels=enc.channels,
            decoder_hidden_size=config.decoder_width,
            decoder_num_hidden_layers=config.decoder_depth,
            decoder_num_attention_heads=config.decoder_heads,
            decoder_intermediate_size=config.decoder_mlp_dim,
            mask_ratio=config.mask_ratio,
            norm_pix_loss=config.norm_pix_loss,
            layer_norm_eps=1e-6,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def torch_runner(config: MAEConfig, batch: int, dtype: str, compile_model: bool) -> Runner:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_mae(config).to(device).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_matrix = [n.endswith(".weight") and p.ndim >= 2 for n, p in named]
    groups = [
        {"params": [p for (_, p), m in zip(named, is_matrix) if m], "weight_decay": WEIGHT_DECAY},
        {"params": [p for (_, p), m in zip(named, is_matrix) if not m], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS, fused=device == "cuda")
    forward = torch.compile(model) if compile_model else model
    size = config.encoder.image_size
    images = torch.randn(batch, config.encoder.channels, size, size, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    losses = [torch.zeros(())]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = forward(pixel_values=images).loss
        loss.backward()
        optimizer.step()
        losses[-1] = loss.detach()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Runner("torch_compile" if compile_model else "torch_eager", step, sync, lambda: float(losses[-1]))


def matmul_flops_per_second(size: int, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of a jitted (size x size) @ (size x size) product in `dtype` on the default JAX device."""
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (size, size), dt)
    b = jax.random.normal(jax.random.key(1), (size, size), dt)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, b))
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a, b)
    jax.block_until_ready(out)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def report(timings: Sequence[Timing], train_flops: float, matmul_rate: float, peak: float | None) -> list[dict]:
    """Prints the table (best round per implementation) and returns its rows."""
    eager = next((t for t in timings if t.impl == "torch_eager"), None)
    rows = []
    for t in timings:
        achieved = t.best_images_per_second * train_flops
        rows.append(
            dict(
                impl=t.impl,
                img_per_s=t.best_images_per_second,
                median_img_per_s=t.median_images_per_second,
                step_ms=1e3 * min(t.round_seconds_per_step),
                warmup_s=t.warmup_seconds,
                tflops=achieved / 1e12,
                of_matmul=achieved / matmul_rate,
                mfu=achieved / peak if peak else None,
                vs_torch_eager=t.best_images_per_second / eager.best_images_per_second if eager else None,
            )
        )
    print(
        f"{'impl':<14} {'img/s':>9} {'median':>9} {'step ms':>9} {'warmup s':>9} {'TFLOP/s':>8} {'%matmul':>8} "
        f"{'MFU':>6} {'vs eager':>9}"
    )
    for r in rows:
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        ratio = f"{r['vs_torch_eager']:8.2f}x" if r["vs_torch_eager"] is not None else "      n/a"
        print(
            f"{r['impl']:<14} {r['img_per_s']:9.2f} {r['median_img_per_s']:9.2f} {r['step_ms']:9.1f} "
            f"{r['warmup_s']:9.1f} {r['tflops']:8.3f} {100 * r['of_matmul']:7.1f}% {mfu} {ratio}"
        )
    return rows


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = set(_IMPLS.value) - {"jax", "torch_eager", "torch_compile"}
    if unknown:
        raise app.UsageError(f"unknown --impls {sorted(unknown)}")
    import torch

    config = mae_config(_SIZE.value, image_size=_IMAGE_SIZE.value)
    flops = mae_flops_per_image(config)
    device = jax.devices()[0]
    peak = device_peak_flops(device)
    print(
        f"MAE-{_SIZE.value} {_IMAGE_SIZE.value}px mask {config.mask_ratio}, batch {_BATCH.value}, {_DTYPE.value}; "
        f"{flops['train'] / 1e9:.1f} GFLOP per image per train step (analytic); {_ROUNDS.value} rounds of "
        f"{_STEPS.value} steps after {_WARMUP.value} warm-up steps"
    )
    print(
        f"jax {jax.__version__} on {device.device_kind} ({jax.default_backend()}), torch {torch.__version__} on "
        f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'} "
        f"({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    # Measured before and after the steps: on a shared CPU the faster reading is the machine's rate.
    matmul_before = matmul_flops_per_second(_MATMUL_SIZE.value, _DTYPE.value)
    runners = []
    for impl in _IMPLS.value:
        if impl == "jax":
            dtype = jnp.bfloat16 if _DTYPE.value == "bf16" else jnp.float32
            runners.extend(
                jax_runner(
                    MAE(config, dtype=dtype, remat=_REMAT.value, attention=attention),
                    _BATCH.value,
                    sharding.make_mesh(1, jax.devices()[:1]),
                )
                for attention in _ATTENTION.value
            )
        else:
            runners.append(torch_runner(config, _BATCH.value, _DTYPE.value, impl == "torch_compile"))
    timings = measure(runners, _BATCH.value, _WARMUP.value, _STEPS.value, _ROUNDS.value)
    matmul_after = matmul_flops_per_second(_MATMUL_SIZE.value, _DTYPE.value)
    matmul_rate = max(matmul_before, matmul_after)
    print(
        f"measured {_MATMUL_SIZE.value}^3 {_DTYPE.value} matmul (JAX): {matmul_before / 1e12:.3f} TFLOP/s before, "
        f"{matmul_after / 1e12:.3f} after"
        + (f"; device peak (bf16 dense, datasheet) {peak / 1e12:.0f} TFLOP/s" if peak else "")
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    rows = report(timings, flops["train"], matmul_rate, peak)
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            json.dump(
                dict(
                    size=_SIZE.value,
                    batch=_BATCH.value,
                    dtype=_DTYPE.value,
                    steps=_STEPS.value,
                    rounds=_ROUNDS.value,
                    warmup=_WARMUP.value,
                    device=device.device_kind,
                    train_flops_per_image=flops["train"],
                    matmul_flops_per_second=matmul_rate,
                    peak_flops=peak,
                    results=rows,
                ),
                f,
                indent=2,
            )


if __name__ == "__main__":
    app.run(main)
