"""Progress lines, JSON-lines metrics and TensorBoard events for training jobs.

Throughput is reported the way big_vision and MaxText do: images/s per device, TFLOP/s per device from an
analytic FLOP count, MFU against the device's peak when known, and an ETA. The clock starts after the
first step finishes, so compilation never enters the steady-state figures.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

from absl import flags, logging

from abaw_jax.runtime.artefacts import METRICS_FILE


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Throughput:
    """Steady-state rates between log points; `start` is called once the first (compiling) step is done."""

    def __init__(
        self, images_per_step: int, flops_per_image: float, num_devices: int, peak_flops_per_device: float | None
    ):
        self.images_per_step = images_per_step
        self.flops_per_image = flops_per_image
        self.num_devices = num_devices
        self.peak = peak_flops_per_device
        self._start_time: float | None = None
        self._last_time = 0.0
        self._last_step = 0
        self.data_wait = 0.0

    def start(self, step: int) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._last_step = step
        self.data_wait = 0.0

    def measure(self, step: int, total_steps: int) -> dict[str, float]:
        """Rates since the previous call; empty before `start` or when no step has passed."""
        if self._start_time is None or step <= self._last_step:
            return {}
        now = time.perf_counter()
        seconds_per_step = (now - self._last_time) / (step - self._last_step)
        images_per_second = self.images_per_step / seconds_per_step
        per_device = images_per_second / self.num_devices
        tflops = per_device * self.flops_per_image / 1e12
        elapsed = now - self._start_time
        rates = {
            "img_per_s_per_device": per_device,
            "tflops_per_device": tflops,
            "eta_s": seconds_per_step * (total_steps - step),
            "data_wait_fraction": self.data_wait / max(elapsed, 1e-9),
        }
        if self.peak:
            rates["mfu"] = tflops * 1e12 / self.peak
        self._last_time, self._last_step = now, step
        return rates


def progress_line(step: int, total_steps: int, scalars: dict[str, float]) -> str:
    parts = [f"step {step}/{total_steps}"]
    if "loss" in scalars:
        parts.append(f"loss {scalars['loss']:.4f}")
    if "lr" in scalars:
        parts.append(f"lr {scalars['lr']:.3g}")
    if "img_per_s_per_device" in scalars:
        parts.append(f"{scalars['img_per_s_per_device']:.1f} img/s/device")
        parts.append(f"{scalars['tflops_per_device']:.2f} TFLOP/s/device")
    if "mfu" in scalars:
        parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if "data_wait_fraction" in scalars:
        parts.append(f"data wait {100 * scalars['data_wait_fraction']:.0f}%")
    if "eta_s" in scalars:
        parts.append(f"ETA {format_duration(scalars['eta_s'])}")
    return " | ".join(parts)


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard`) on process 0."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tensorboard = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            self._tensorboard.add_scalar(key, float(value), step)

    def write_image(self, step: int, tag: str, image_hwc_uint8) -> None:
        if self.enabled:
            self._tensorboard.add_image(tag, image_hwc_uint8, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def log(message: str) -> None:
    """A line for the person running the job: printed, and kept in the log file."""
    logging.info(message)
    print(message, flush=True)


def configure_console(workdir: str, verbose: bool = False) -> str | None:
    """Keeps the console to our own lines (`log`), warnings and errors.

    Library INFO logs (absl, orbax, TFDS, grain, JAX) and the config dump go to `<workdir>/logs/` instead, and
    TFDS progress bars are off and Python warnings are logged to the file. With `verbose` (the entry
    point's `--verbosity=1`) everything stays on stderr as absl prints it. Returns the log folder, or None.
    """
    if verbose:
        return None
    log_dir = os.path.join(os.path.abspath(workdir), "logs")
    os.makedirs(log_dir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("abaw_jax", log_dir)
    if not flags.FLAGS["stderrthreshold"].present:
        flags.FLAGS.stderrthreshold = "warning"
    # Library warnings (multiprocessing start methods, deprecations) are for the log, not the console.
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: logging.info(
        "%s:%d: %s: %s", filename, lineno, category.__name__, message
    )
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return log_dir
