r"""Training throughput of a TMF ensemble: our one vmapped JAX step against PyTorch ways of training members.

    python -m benchmarks.fusion_ensemble --members=8 --scaling=1,2,4,8,16

Every implementation trains `--members` paper-size TMF members (1x1 projections 256 -> 128, 4 encoder layers d
128 / 4 heads / FF 128 / dropout 0.3, Linear-BatchNorm-Linear head, 8 EXPR classes) on `--batch` clips of
`--clip_len` frames per member with `--dim` features per frame, weighted cross-entropy, AdamW (lr 1e-4, weight
decay 0.05), dropout on, in one process on the same machine:

- `jax_vmap`: the fusion job's own `ensemble_train_step` (clips gathered on the device from a resident frame
  array, all members in one jitted, vmapped step, state donated);
- `jax_map`: the same step with `member_loop='map'` (members looped with `lax.map` inside the one jitted step:
  the job's choice on CPU);
- `torch_eager`: `benchmarks.torch_tmf.TorchTMF`, one model and `torch.optim.AdamW` per member, trained member
  after member (the seed team's way);
- `torch_func_vmap`: `torch.func.stack_module_state` + `functional_call` under `torch.func.vmap` (gradients of
  all members at once, `randomness='different'`), one AdamW over the stacked parameters (AdamW is elementwise,
  so this is each member's AdamW). BatchNorm cannot update running statistics under vmap, so its modules are
  switched to batch statistics only (`replace_all_batch_norm_modules_`): slightly less work than ours;
- `torch_compile`: the eager member-after-member loop with each member's forward+backward through
  `torch.compile`;
- `torch_compile_graphs`: the same with `torch.compile(mode="reduce-overhead")`, which replays each member's
  forward and backward as CUDA graphs (GPU only: skipped with a note on a CPU host).

Every PyTorch baseline runs on the device ours runs on (CUDA when PyTorch sees a GPU), with TF32 matmuls and
convolutions allowed as XLA's default f32 precision on GPUs allows them, and every step of every implementation
ends when the device has finished it (`block_until_ready` / `torch.cuda.synchronize`).

The figures are clips/s summed over members (members x batch / step time), best of `--rounds` rounds of
`--steps` steps after `--warmup` untimed steps; implementations alternate within each round so a shared
machine loads them alike. `--scaling` also times `jax_vmap`, `jax_map` and `torch_eager` at other member counts.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle torch threads must not spin on JAX's cores
# PyTorch shares the GPU with JAX in this process, so JAX allocates on demand instead of taking 75% upfront.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import platform
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import torch
from absl import app, flags

from abaw_jax import tasks
from abaw_jax.jobs import fusion as fusion_job
from abaw_jax.models import fusion
from benchmarks import json_out
from benchmarks.torch_tmf import TorchTMF

_MEMBERS = flags.DEFINE_integer("members", 8, "Ensemble members.")
_BATCH = flags.DEFINE_integer("batch", 32, "Clips per member and step.")
_CLIP_LEN = flags.DEFINE_integer("clip_len", 100, "Frames per clip.")
_DIM = flags.DEFINE_integer("dim", 852, "Features per frame (768 visual + 84 log-mel/MFCC).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per implementation and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timing rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation happens here).")
_IMPLS = flags.DEFINE_list(
    "impls",
    ["jax_vmap", "jax_map", "torch_eager", "torch_func_vmap", "torch_compile", "torch_compile_graphs"],
    "Implementations to time (torch_compile_graphs only where PyTorch sees a GPU).",
)
_SCALING = flags.DEFINE_list("scaling", [], "Member counts at which to time jax_vmap and torch_eager too.")
LR, WD = 1e-4, 0.05
FRAMES = 20_000  # resident frame array the JAX step gathers clips from
TORCH_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# XLA's default f32 dot on NVIDIA GPUs uses TF32 tensor cores; PyTorch's default does not.
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True


def _torch_sync() -> None:
    if TORCH_DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _config() -> fusion.TMFConfig:
    return fusion.TMFConfig(input_dim=_DIM.value, num_outputs=8)


def jax_step(members: int, member_loop: str = "vmap") -> Callable[[], None]:
    rng = np.random.default_rng(0)
    cfg = _config()
    data = jax.device_put(
        fusion_job.FrameData(
            features=rng.normal(size=(FRAMES, cfg.input_dim)).astype(np.float32),
            face=np.ones(FRAMES, bool),
            labels=rng.integers(0, 8, FRAMES).astype(np.int32),
            valid=np.ones(FRAMES, bool),
        )
    )
    constants = {
        "feature_mean": np.zeros((members, cfg.input_dim), np.float32),
        "feature_std": np.ones((members, cfg.input_dim), np.float32),
        "class_weights": np.ones((members, 8), np.float32),
    }
    tx = fusion_job.make_optimizer(LR, WD)
    state = jax.jit(functools.partial(fusion_job.init_state, cfg=cfg, tx=tx))(
        jax.random.key(0, impl="rbg"), constants, np.full(members, LR, np.float32)
    )  # the job's default PRNG
    starts = rng.integers(0, FRAMES - _CLIP_LEN.value, (members, _BATCH.value))
    rows = jax.device_put((starts[..., None] + np.arange(_CLIP_LEN.value)).astype(np.int32))
    mask = jax.device_put(np.ones(rows.shape, bool))
    step_fn = jax.jit(
        functools.partial(
            fusion_job.ensemble_train_step, model=fusion.TMF(cfg), task=tasks.EXPR, tx=tx, member_loop=member_loop
        ),
        donate_argnums=0,
    )
    holder = {"state": state}

    def run():
        holder["state"], metrics = step_fn(holder["state"], data, rows, mask)
        jax.block_until_ready(metrics["loss"])

    return run


def _torch_batch(generator: torch.Generator):
    x = torch.randn(_BATCH.value, _CLIP_LEN.value, _DIM.value, generator=generator)
    labels = torch.randint(0, 8, (_BATCH.value, _CLIP_LEN.value), generator=generator)
    face = torch.ones(_BATCH.value, _CLIP_LEN.value, dtype=torch.bool)
    return x.to(TORCH_DEVICE), face.to(TORCH_DEVICE), labels.to(TORCH_DEVICE)


def torch_sequential(members: int, compile_mode: str | None) -> Callable[[], None]:
    """Members trained one after another; `compile_mode` None is eager, else `torch.compile`'s mode."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    models = [TorchTMF(_config()).to(TORCH_DEVICE).train() for _ in range(members)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD) for m in models]
    batches = [_torch_batch(generator) for _ in range(members)]
    weights = torch.ones(8, device=TORCH_DEVICE)

    def loss_of(model, x, face, labels):
        out = model(x, face)
        return torch.nn.functional.cross_entropy(out.reshape(-1, 8), labels.reshape(-1), weight=weights)

    losses = [functools.partial(loss_of, m) for m in models]
    if compile_mode:
        losses = [torch.compile(loss_fn, mode=compile_mode) for loss_fn in losses]
    graphs = compile_mode == "reduce-overhead"

    def run():
        for loss_fn, optimizer, (x, face, labels) in zip(losses, optimizers, batches):
            if graphs:  # a new training iteration: the graphs' previous outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(x, face, labels).backward()
            optimizer.step()
        _torch_sync()

    return run


def torch_func_vmap(members: int) -> Callable[[], None]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    models = [TorchTMF(_config()).to(TORCH_DEVICE).train() for _ in range(members)]
    for m in models:
        torch.func.replace_all_batch_norm_modules_(m)
    params, buffers = torch.func.stack_module_state(models)
    base = TorchTMF(_config()).to("meta")
    torch.func.replace_all_batch_norm_modules_(base)
    optimizer = torch.optim.AdamW(list(params.values()), lr=LR, weight_decay=WD)
    x, face, labels = (torch.stack(t) for t in zip(*[_torch_batch(generator) for _ in range(members)]))
    weights = torch.ones(8, device=TORCH_DEVICE)

    def loss_of(p, b, x, face, labels):
        out = torch.func.functional_call(base, (p, b), (x, face))
        return torch.nn.functional.cross_entropy(out.reshape(-1, 8), labels.reshape(-1), weight=weights)

    grads_fn = torch.func.vmap(torch.func.grad(loss_of), randomness="different")

    def run():
        grads = grads_fn(params, buffers, x, face, labels)
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()
        _torch_sync()

    return run


def time_impls(impls: dict[str, Callable[[], None]]) -> dict[str, dict[str, float]]:
    results = {}
    for name, run in impls.items():
        start = time.perf_counter()
        for _ in range(_WARMUP.value):
            run()
        results[name] = {"warmup_s": time.perf_counter() - start, "rounds": []}
    for _ in range(_ROUNDS.value):
        for name, run in impls.items():
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                run()
            results[name]["rounds"].append((time.perf_counter() - start) / _STEPS.value)
    return results


def build(name: str, members: int) -> Callable[[], None]:
    return {
        "jax_vmap": lambda: jax_step(members, "vmap"),
        "jax_map": lambda: jax_step(members, "map"),
        "torch_eager": lambda: torch_sequential(members, None),
        "torch_compile": lambda: torch_sequential(members, "default"),
        "torch_compile_graphs": lambda: torch_sequential(members, "reduce-overhead"),
        "torch_func_vmap": lambda: torch_func_vmap(members),
    }[name]()


def main(argv: Sequence[str]) -> None:
    del argv
    members = _MEMBERS.value
    torch_device = f"cpu, {torch.get_num_threads()} threads"
    if TORCH_DEVICE.type == "cuda":
        torch_device = torch.cuda.get_device_name()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}, torch {torch.__version__} on {torch_device}; "
        f"{members} members x {_BATCH.value} clips x {_CLIP_LEN.value} frames x {_DIM.value} features"
    )
    platform_name = jax.devices()[0].platform
    if {"gpu": "cuda", "cpu": "cpu"}.get(platform_name, TORCH_DEVICE.type) != TORCH_DEVICE.type:
        raise SystemExit(f"error: JAX runs on {platform_name} but PyTorch on {TORCH_DEVICE.type}: not one device")
    impls = list(_IMPLS.value)
    if "torch_compile_graphs" in impls and TORCH_DEVICE.type != "cuda":
        impls.remove("torch_compile_graphs")
        print("note: torch_compile_graphs skipped: CUDA graphs (mode='reduce-overhead') need a CUDA device")
    results = time_impls({name: build(name, members) for name in impls})
    clips = members * _BATCH.value
    rate = {n: clips / min(r["rounds"]) for n, r in results.items()}
    baseline = rate.get("torch_eager")
    best_torch = max((v for n, v in rate.items() if n.startswith("torch")), default=None)
    print("\n| impl | clips/s (sum over members) | step ms | warm-up s | vs torch eager | vs best PyTorch |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {rate[name]:.1f} | {1e3 * min(r['rounds']):.1f} | {r['warmup_s']:.1f} | "
            + (f"{rate[name] / baseline:.2f}x" if baseline else "-")
            + " | "
            + (f"{rate[name] / best_torch:.2f}x" if best_torch else "-")
            + " |"
        )
    scaling = {}
    if _SCALING.value:
        names = ("jax_vmap", "jax_map", "torch_eager")
        print("\n| members | " + " | ".join(f"{n} clips/s" for n in names) + " | jax_map / torch eager |")
        print("|---|---|---|---|---|")
        for count in map(int, _SCALING.value):
            timed = time_impls({n: build(n, count) for n in names})
            per = {n: count * _BATCH.value / min(r["rounds"]) for n, r in timed.items()}
            scaling[count] = per
            print(
                f"| {count} | "
                + " | ".join(f"{per[n]:.1f}" for n in names)
                + f" | {per['jax_map'] / per['torch_eager']:.2f}x |"
            )
    json_out.write(
        {
            "members": members,
            "batch": _BATCH.value,
            "clip_len": _CLIP_LEN.value,
            "dim": _DIM.value,
            "device": jax.devices()[0].device_kind,
            "torch_device": torch_device,
            "results": results,
            "clips_per_s": rate,
            "scaling": scaling,
        }
    )


if __name__ == "__main__":
    app.run(main)
