r"""Every accelerator benchmark in one call: each in its own process under its own time cap, one summary table.

    python -m benchmarks.gpu_suite --out=/tmp/suite                 # accelerator sizes: at most 9 minutes
    python -m benchmarks.gpu_suite --out=/tmp/suite --sizes=toy     # tiny sizes, for a CPU
    python -m benchmarks.gpu_suite --out=/tmp/suite --only=fusion_ensemble,mae_profile

Runs, in this order, each as `python -m benchmarks.<module>` with the sizes of `--sizes`:

  mae_step_jax        the MAE pretraining step, ours (cuDNN attention on a GPU)
  mae_step_torch      the same step in transformers' ViTMAE, eager and `torch.compile`, in a process of its own:
                      on images whose extra wheels come first on PYTHONPATH, `from transformers import
                      ViTMAEForPreTraining` has failed inside a process that had imported them (`--torch_pythonpath`
                      gives this process its own PYTHONPATH)
  mae_job             the whole pretraining job against its bare step
  mae_profile         the step's op time by category (device kernel events)
  feature_extraction  frozen features, JPEG files in, against timm
  finetune_step       the fine-tuning step against timm
  fusion_ensemble     8 TMF members in one step against PyTorch's ways (same device, CUDA graphs included)
  evaluation          tuning and ensemble scoring of 9 M frames against numpy/scipy/sklearn
  predict             `predict` on a video, end to end
  decode_scaling      host JPEG decode alone with 1-16 threads and processes (a many-core host's figure)

Each writes its JSON to `--out/<name>.json` (where the benchmark has a JSON flag) and its output to
`--out/<name>.log`. A benchmark that runs past its cap is killed with its process group and recorded as timed out;
one that fails is recorded with its exit status; the suite goes on either way. The caps add up to
`--total_cap_s` at most (9 minutes at the accelerator sizes); a benchmark starts with the smaller of its cap and
what is left. The summary table (also `--out/suite.json`) gives each benchmark's status, wall time, cap and
headline figures, read from its JSON (or, without one, the last line of its output; for a failure, the error).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Folder for each benchmark's JSON and log, and suite.json.", required=True)
_SIZES = flags.DEFINE_enum("sizes", "gpu", ["gpu", "toy"], "gpu: the accelerator figures; toy: tiny, for a CPU.")
_ONLY = flags.DEFINE_list("only", [], "Run only these benchmarks (names as in the module docstring).")
_TOTAL_CAP = flags.DEFINE_float("total_cap_s", 0, "Seconds for all benchmarks together; 0: the sum of the caps.")
_TORCH_PYTHONPATH = flags.DEFINE_string(
    "torch_pythonpath", None, "PYTHONPATH of the PyTorch-side process (mae_step_torch); default: inherited."
)
_TOY = flags.DEFINE_boolean("toy", False, "Same as --sizes=toy.")

Headline = Callable[[dict], str]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    gpu_args: tuple[str, ...]
    gpu_cap_s: float
    toy_args: tuple[str, ...]
    toy_cap_s: float
    headline: Headline | None = None
    torch_side: bool = False


def _mae_step(data: dict) -> str:
    return ", ".join(
        f"{r['impl']} {r['img_per_s']:,.1f} img/s" + (f" (MFU {100 * r['mfu']:.1f}%)" if r.get("mfu") else "")
        for r in data["results"]
    )


def _mae_job(data: dict) -> str:
    job = data["job"]
    return (
        f"job {job['img_per_s_per_device']:,.1f} img/s/device, step alone {data['step_img_per_s_per_device']:,.1f}, "
        f"data wait {100 * job['data_wait_fraction']:.0f}%"
    )


def _mae_profile(data: dict) -> str:
    ops = data["op_s_per_step"]
    busy = sum(ops.values()) or 1.0
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:3]
    return (
        f"{1e3 * data['wall_s_per_step']:.1f} ms/step wall, {1e3 * busy:.1f} ms op time ({data['event_source']} "
        "events): " + ", ".join(f"{name} {100 * s / busy:.0f}%" for name, s in top)
    )


def _fusion(data: dict) -> str:
    rate = data["clips_per_s"]
    text = ", ".join(f"{name} {value:,.0f}" for name, value in rate.items())
    best_torch = max((v for n, v in rate.items() if n.startswith("torch")), default=None)
    best_jax = max((v for n, v in rate.items() if n.startswith("jax")), default=None)
    if best_torch and best_jax:
        text += f" clips/s; best jax / best PyTorch {best_jax / best_torch:.2f}x"
    return text


def _evaluation(data: dict) -> str:
    total = data["total"]
    return (
        f"{total['frames']:,} frames: steady {total['steady_s']:.2f} s, first call {total['first_s']:.2f} s, "
        f"baseline {total['baseline_extrapolated_s']:.0f} s (extrapolated)"
    )


def _feature_extraction(data: dict) -> str:
    return ", ".join(
        f"ViT-{r['size']} {r['ours_frames_per_s']:,.1f} frames/s "
        f"({r['ours_frames_per_s'] / r['timm_frames_per_s']:.2f}x timm; decode alone {r['decode_frames_per_s']:,.0f})"
        for r in data["results"]
    )


def _finetune_step(data: dict) -> str:
    return f"ViT-{data['size']} {data['img_per_s']['jax']['best']:,.1f} img/s ({data['jax_over_torch']:.2f}x timm)"


def _predict(data: dict) -> str:
    rows = data["results"]
    return ", ".join(f"{r['size']} {r['frames_per_s']:,.1f} frames/s ({r['x_real_time']:.2f}x real time)" for r in rows)


def _decode_scaling(data: dict) -> str:
    covered = str(data["cores_covered_workers"])
    return ", ".join(
        f"{mode} x {covered}: {by[covered]:,.0f} frames/s ({100 * data['efficiency'][mode][covered]:.0f}% of linear)"
        for mode, by in data["frames_per_s"].items()
    )


_MAE_GPU = ("--size=base", "--batch=256", "--dtype=bf16", "--steps=10", "--rounds=2", "--warmup=3")
_MAE_GPU += ("--matmul_size=8192",)
_MAE_TOY = ("--size=tiny", "--image_size=32", "--batch=4", "--steps=1", "--rounds=1", "--warmup=1")
_MAE_TOY += ("--matmul_size=128",)

# Caps at the accelerator sizes add up to 540 s: the 9 minutes of one H100/H200 the suite may take.
BENCHMARKS = (
    Benchmark("mae_step_jax", "mae_step", (*_MAE_GPU, "--impls=jax", "--attention=cudnn"), 55,
              (*_MAE_TOY, "--impls=jax"), 120, headline=_mae_step),
    Benchmark("mae_step_torch", "mae_step", (*_MAE_GPU, "--impls=torch_eager,torch_compile"), 90,
              (*_MAE_TOY, "--impls=torch_eager"), 120, headline=_mae_step, torch_side=True),
    Benchmark("mae_job", "mae_job",
              ("--config=configs/mae.py", "--config.batch_size=512", "--config.data.worker_count=14", "--steps=60",
               "--step_iters=10", "--config.data.synthetic_videos=4"), 65,
              ("--config=configs/mae.py:tiny", "--config.batch_size=8", "--config.data.worker_count=0", "--steps=4",
               "--step_iters=2", "--config.data.synthetic_videos=2", "--config.data.synthetic_frames_per_video=60"),
              180, headline=_mae_job),
    Benchmark("mae_profile", "mae_profile",
              ("--size=base", "--batch=256", "--dtype=bf16", "--attention=cudnn", "--steps=3", "--warmup=2"), 40,
              ("--size=tiny", "--image_size=32", "--batch=4", "--steps=1", "--warmup=1"), 120, headline=_mae_profile),
    Benchmark("feature_extraction", "feature_extraction", ("--sizes=base", "--frames=16384"), 55,
              ("--sizes=tiny", "--frames=64", "--batch=32"), 180, headline=_feature_extraction),
    Benchmark("finetune_step", "finetune_step", ("--size=base", "--batch=256", "--steps=5", "--rounds=2", "--warmup=2"),
              35, ("--size=tiny", "--image_size=32", "--patch=8", "--batch=4", "--steps=1", "--rounds=1",
                   "--warmup=1"), 120, headline=_finetune_step),
    Benchmark("fusion_ensemble", "fusion_ensemble", ("--members=8", "--steps=3", "--rounds=2", "--warmup=2"), 70,
              ("--members=2", "--batch=4", "--clip_len=16", "--dim=32", "--steps=1", "--rounds=1", "--warmup=1",
               "--impls=jax_vmap,torch_eager"), 120, headline=_fusion),
    Benchmark("evaluation", "evaluation", (), 70,
              ("--frames=20000", "--videos=20", "--baseline_videos=4"), 120, headline=_evaluation),
    Benchmark("predict", "predict", ("--sizes=base", "--frames=300", "--encoder_batch=256"), 40,
              ("--sizes=tiny", "--frames=60"), 180, headline=_predict),
    Benchmark("decode_scaling", "decode_scaling", ("--frames=8192", "--rounds=2"), 20,
              ("--workers=1,2", "--frames=256", "--rounds=1", "--modes=threads"), 60, headline=_decode_scaling),
)  # fmt: skip
NAMES = tuple(b.name for b in BENCHMARKS)


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # ok | failed (exit N) | timed out | skipped (...)
    seconds: float
    cap_s: float
    command: list[str]
    log: str
    json: str | None
    headline: str


_ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")


def _last_line(log: str) -> str:
    """The last line the benchmark printed itself (absl's log lines and blank lines left out)."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not _ABSL_LOG_LINE.match(line)]
    # A table row's cells, comma-separated, so that the summary stays one markdown table.
    return lines[-1].strip("| ").replace(" | ", ", ")[:300] if lines else ""


def _run(command: list[str], log_path: pathlib.Path, cap_s: float, env: dict[str, str]) -> tuple[int | None, float]:
    """(exit status or None when killed at the cap, seconds). The child leads its own process group, so loader
    workers and compiler subprocesses it started go with it."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = child.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group ended between the timeout and the kill
                pass
            child.wait()
            returncode = None
    return returncode, time.perf_counter() - start


def run_benchmark(bench: Benchmark, toy: bool, out: pathlib.Path, cap_s: float) -> Outcome:
    json_path = out / f"{bench.name}.json"
    log_path = out / f"{bench.name}.log"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", f"benchmarks.{bench.module}", *(bench.toy_args if toy else bench.gpu_args)]
    command.append(f"--json_out={json_path}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # what a killed benchmark printed stays in its log
    if bench.torch_side and _TORCH_PYTHONPATH.value is not None:
        env["PYTHONPATH"] = _TORCH_PYTHONPATH.value
    print(f"[{bench.name}] cap {cap_s:.0f} s: {' '.join(command[1:])}", flush=True)
    returncode, seconds = _run(command, log_path, cap_s, env)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    data = None
    if json_path.exists():
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # cut short: the suite reports it and goes on
            pass
    if returncode is None:
        status = "timed out"
    elif returncode != 0:
        status = f"failed (exit {returncode})"
    elif data is None:
        status = "failed (no readable JSON)"
    else:
        status = "ok"
    headline = _last_line(log)
    if status == "ok" and bench.headline and data is not None:
        try:
            headline = bench.headline(data)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # a changed JSON layout: keep going
            headline = f"(no headline: {type(e).__name__} {e}) {headline}"
    print(f"[{bench.name}] {status} in {seconds:.1f} s: {headline}", flush=True)
    return Outcome(
        bench.name,
        status,
        seconds,
        cap_s,
        command,
        str(log_path),
        str(json_path) if data is not None else None,
        headline,
    )


def _cross_ratios(outcomes: Sequence[Outcome]) -> list[str]:
    """Ours against PyTorch where the two sides ran in separate processes."""
    by_name = {o.name: o for o in outcomes if o.json}
    if "mae_step_jax" not in by_name or "mae_step_torch" not in by_name:
        return []
    rates = {}
    for name in ("mae_step_jax", "mae_step_torch"):
        for row in json.loads(pathlib.Path(by_name[name].json).read_text(encoding="utf-8"))["results"]:
            rates[row["impl"]] = row["img_per_s"]
    ours = {k: v for k, v in rates.items() if k.startswith("jax")}
    return [
        f"MAE step {mine} / {theirs}: {ours[mine] / rates[theirs]:.2f}x"
        for mine in ours
        for theirs in ("torch_eager", "torch_compile")
        if theirs in rates
    ]


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_ONLY.value) - set(NAMES))
    if unknown:
        raise app.UsageError(f"unknown --only {unknown}; the benchmarks are {', '.join(NAMES)}")
    toy = _TOY.value or _SIZES.value == "toy"
    chosen = [b for b in BENCHMARKS if not _ONLY.value or b.name in _ONLY.value]
    total_cap = _TOTAL_CAP.value or sum(b.toy_cap_s if toy else b.gpu_cap_s for b in chosen)
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + total_cap
    outcomes = []
    for bench in chosen:
        left = deadline - time.perf_counter()
        cap = min(bench.toy_cap_s if toy else bench.gpu_cap_s, left)
        if cap < 1:
            outcomes.append(Outcome(bench.name, "skipped (suite cap spent)", 0.0, 0.0, [], "", None, ""))
            continue
        outcomes.append(run_benchmark(bench, toy, out, cap))
    ratios = _cross_ratios(outcomes)
    print(f"\nsuite ({'toy' if toy else 'accelerator'} sizes), total cap {total_cap:.0f} s\n")
    print("| benchmark | status | seconds | cap s | headline |")
    print("|---|---|---|---|---|")
    for o in outcomes:
        print(f"| {o.name} | {o.status} | {o.seconds:.1f} | {o.cap_s:.0f} | {o.headline} |")
    for line in ratios:
        print(line)
    summary = {
        "sizes": "toy" if toy else "gpu",
        "total_cap_s": total_cap,
        "total_s": sum(o.seconds for o in outcomes),
        "benchmarks": [dataclasses.asdict(o) for o in outcomes],
        "cross_ratios": ratios,
    }
    (out / "suite.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    app.run(main)
