r"""Profile of one MAE pretraining step (the job's own `train_step`), summarised by op category.

    python -m benchmarks.mae_profile --size=base --batch=256 --dtype=bf16 --steps=5 --out_dir=/tmp/mae_profile

traces `--steps` steps of `mae_pretrain.train_step` (after `--warmup` untimed ones) with `jax.profiler`
(`create_perfetto_trace=True`), then attributes every executed HLO op to a category with
`abaw_jax.runtime.profiling`, using the compiled module's instructions: the op's kind (dot, convolution,
custom call, fusion and what the fusion computes) and its `op_name` metadata, which carries the Flax module
path (`encoder.encode/blocks_3/attn/...`):

  matmul            dots and convolutions of the projections, MLPs, patch embedding and decoder head
  attention         the QK^T / softmax / PV part of attention, and fused attention kernels (cuDNN)
  layernorm         the norm1 / norm2 / norm / fc_norm / decoder_norm computations
  gelu/elementwise  GELU (erf), residual adds and the remaining element-wise work of the model
  masking           the argsort, gathers and scatters of random masking and token permutation
  optimizer         the AdamW update (the `cond` branch of the non-finite guard) and gradient norms
  loss              the reconstruction loss (patchify, per-patch normalisation, masked mean)
  transfers         host<->device copies (none expected inside the step)
  other             anything else

The table gives time per step per category (summed op time, so on devices that overlap ops the shares
are of busy time) and the step's wall time. On an accelerator the op time is the device's kernel events
(each names the HLO instruction that launched it); on a CPU the runtime's op events. A trace from an
accelerator without kernel events (the profiler could not load CUPTI, say) holds only the host's launch
times: the run says so and exits with an error rather than report launch time as op time. `--out_dir` keeps
the trace (open it in Perfetto or TensorBoard) and writes `summary.json` (or `--json_out`). On a GPU
run it with the job's settings (bf16, cuDNN attention), at batch 256 and 512, as issue 14 asks.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time

import jax
from absl import app, flags

from abaw_jax.models.mae import MAE, mae_config
from abaw_jax.models.vit import ATTENTION_IMPLEMENTATIONS
from abaw_jax.runtime import profiling, sharding
from benchmarks.step_runner import jax_runner, timed

_SIZE = flags.DEFINE_enum("size", "tiny", ["tiny", "base", "large"], "Model size.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per step.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input resolution (0: 224, or 64 for tiny).")
_DTYPE = flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16"], "Compute dtype (parameters stay fp32).")
_ATTENTION = flags.DEFINE_enum("attention", "xla", list(ATTENTION_IMPLEMENTATIONS), "Attention implementation.")
_STEPS = flags.DEFINE_integer("steps", 3, "Profiled steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation happens here).")
_OUT_DIR = flags.DEFINE_string("out_dir", "", "Keeps the trace and summary.json here (default: a temp dir).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Writes the summary here instead of <out_dir>/summary.json.")


def main(argv):
    del argv
    image_size = _IMAGE_SIZE.value or (64 if _SIZE.value == "tiny" else 224)
    patch = 8 if _SIZE.value == "tiny" else 16
    dtype = {"fp32": jax.numpy.float32, "bf16": jax.numpy.bfloat16}[_DTYPE.value]
    model = MAE(
        mae_config(_SIZE.value, image_size=image_size, patch_size=patch), dtype=dtype, attention=_ATTENTION.value
    )
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    runner = jax_runner(model, _BATCH.value, mesh)
    timed(runner, _WARMUP.value)
    wall = timed(runner, _STEPS.value) / _STEPS.value

    out_dir = _OUT_DIR.value or tempfile.mkdtemp(prefix="mae_profile_")
    jax.profiler.start_trace(out_dir, create_perfetto_trace=True)
    timed(runner, _STEPS.value)
    jax.profiler.stop_trace()
    traces = sorted(
        glob.glob(os.path.join(out_dir, "**", "*perfetto_trace.json.gz"), recursive=True), key=os.path.getmtime
    )
    if not traces:
        raise SystemExit(f"error: no perfetto trace was written under {out_dir}")
    hlo = runner.compiled_text()
    trace = profiling.summarize_trace(traces[-1], profiling.hlo_instructions(hlo), _STEPS.value)
    per_step = trace.seconds_per_step
    busy = sum(per_step.values())

    device = jax.devices()[0]
    if trace.source != "device" and device.platform != "cpu":
        raise SystemExit(
            f"error: {traces[-1]} has no kernel events of {device.device_kind} (expected them on the "
            "/device:* process's stream lines; is CUPTI loadable?): only host launch times, not op time"
        )
    print(
        f"MAE {_SIZE.value} step, batch {_BATCH.value}, {_DTYPE.value}, {_ATTENTION.value} attention, "
        f"{device.device_kind}: wall {wall * 1e3:.1f} ms/step ({_BATCH.value / wall:.1f} img/s), "
        f"op time {busy * 1e3:.1f} ms/step ({trace.source} events; "
        f"{trace.unmatched_seconds_per_step * 1e3:.2f} ms/step not named in the compiled module)"
    )
    print(f"| {'category':<18} | {'ms/step':>9} | {'share':>6} |")
    print(f"|{'-' * 20}|{'-' * 11}|{'-' * 8}|")
    for category in profiling.CATEGORIES:
        share = per_step[category] / busy if busy else 0.0
        print(f"| {category:<18} | {per_step[category] * 1e3:>9.2f} | {100 * share:>5.1f}% |")
    summary = {
        "size": _SIZE.value,
        "batch": _BATCH.value,
        "dtype": _DTYPE.value,
        "attention": _ATTENTION.value,
        "device": device.device_kind,
        "wall_s_per_step": wall,
        "op_s_per_step": per_step,
        "event_source": trace.source,
        "unmatched_op_s_per_step": trace.unmatched_seconds_per_step,
        "trace": traces[-1],
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    json_out = _JSON_OUT.value or os.path.join(out_dir, "summary.json")
    with open(json_out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"trace in {out_dir}, summary in {json_out}")


if __name__ == "__main__":
    app.run(main)
