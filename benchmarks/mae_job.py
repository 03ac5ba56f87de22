r"""Steady-state throughput of the whole MAE pretraining job against its bare training step.

  python -m benchmarks.mae_job --config=configs/mae.py:tiny --steps=60
  python -m benchmarks.mae_job --config=configs/mae.py --config.batch_size=512 --config.data.worker_count=14 \
      --steps=60                                                     # ViT-B/16 bf16 on one GPU

Runs the same jitted `train_step` twice in one process: first on one batch already on the devices
(the step alone: the ceiling), then inside the full job (grain loader with its workers, host->device
transfer, metrics, checkpoint at the end). Prints img/s per device, TFLOP/s per device, MFU where the
device's peak is known, the share of time the job waited for data, and the job/step ratio. The first
steps (compilation, warm-up) are left out of both.
"""

import json
import os
import tempfile

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from abaw_jax.jobs import mae_pretrain
from abaw_jax.models import flops
from abaw_jax.runtime import sharding
from benchmarks import json_out
from benchmarks.step_runner import jax_runner, timed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mae.py:tiny", "Job config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 60, "Steps of the full job (the first log interval is warm-up).")
_STEP_ITERS = flags.DEFINE_integer("step_iters", 20, "Timed iterations of the bare step.")


def bare_step_rate(config) -> float:
    """Images/s of the jitted step on a batch that is already on the devices."""
    model, _ = mae_pretrain.model_from_config(config)
    runner = jax_runner(model, config.batch_size, sharding.make_mesh(config.mesh.fsdp), config.micro_batches)
    timed(runner, 3)
    return _STEP_ITERS.value * config.batch_size / timed(runner, _STEP_ITERS.value)


def job_rates(config) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        with config.unlocked():
            config.total_steps = _STEPS.value
            config.log_every = max(_STEPS.value // 6, 1)
            config.checkpoint_every = _STEPS.value
            config.image_every = _STEPS.value
        mae_pretrain.train(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    steady = [r for r in records[1:] if "img_per_s_per_device" in r]
    return {k: float(np.mean([r[k] for r in steady])) for k in steady[0] if k != "step"}


def main(argv):
    del argv
    config = _CONFIG.value
    _, cfg = mae_pretrain.model_from_config(config)
    devices = jax.device_count()
    flops_per_image = flops.mae_flops_per_image(cfg)["train"]
    peak = flops.device_peak_flops(jax.devices()[0])
    step_per_device = bare_step_rate(config) / devices
    job = job_rates(config)

    def row(name, per_device, wait=""):
        tflops = per_device * flops_per_image / 1e12
        mfu = f"{100 * tflops * 1e12 / peak:.1f}%" if peak else "n/a"
        return f"| {name} | {per_device:.1f} | {tflops:.2f} | {mfu} | {wait} |"

    print(
        f"\nMAE {config.model.size} {cfg.encoder.image_size}px, batch {config.batch_size}, {config.model.dtype}, "
        f"{devices} x {jax.devices()[0].device_kind}, {config.data.worker_count} loader workers"
    )
    print("| what | img/s/device | TFLOP/s/device | MFU | data wait |")
    print("|---|---|---|---|---|")
    print(row("train step alone (batch on device)", step_per_device))
    print(
        row(
            "full job (grain, transfer, metrics)",
            job["img_per_s_per_device"],
            f"{100 * job['data_wait_fraction']:.0f}%",
        )
    )
    print(f"job / step ratio: {job['img_per_s_per_device'] / step_per_device:.2f}")
    json_out.write(
        {
            "size": config.model.size,
            "image_size": cfg.encoder.image_size,
            "batch": config.batch_size,
            "dtype": config.model.dtype,
            "devices": devices,
            "device": jax.devices()[0].device_kind,
            "worker_count": config.data.worker_count,
            "train_flops_per_image": flops_per_image,
            "peak_flops": peak,
            "step_img_per_s_per_device": step_per_device,
            "job": job,
            "job_over_step": job["img_per_s_per_device"] / step_per_device,
        }
    )


if __name__ == "__main__":
    app.run(main)
