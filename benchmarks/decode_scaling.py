r"""Host JPEG decode alone, frames/s against the number of workers: does decoding scale with the cores?

    python -m benchmarks.decode_scaling [--workers=1,2,4,8,16 --frames=4096 --side=112 --modes=threads,processes]

Decodes `--frames` JPEG face crops of `--side` px (quality 90, like Aff-Wild2's 112 px crops; generated here by
`benchmarks.data_pipeline.make_faces`, 512 distinct faces repeated) at their stored size with the project's
decoder, `data.mae_pipeline.decode_rgb` (the libjpeg-turbo completeness check, then `cv2.imdecode` to RGB: both
release the GIL while they work), and nothing else: no resize, no normalisation. Each of N workers decodes a
contiguous 1/N of the frames in one loop, so the only Python work per image is the call itself:

  threads    N threads of this process (`concurrent.futures.ThreadPoolExecutor`);
  processes  N worker processes (`multiprocessing`, spawned and warmed up before timing; each holds the
             encoded bytes and returns only a count, so shipping pixels back is not timed).

frames/s is the best of `--rounds` rounds; efficiency is frames/s over N times the 1-worker rate (100% =
linear scaling). Workers beyond the host's cores cannot scale: their rows measure oversubscription. The last
line is the ratio at the largest worker count that the cores cover, against linear (the goal: at least 80%).
Each worker also measures its own CPU time, which gives two figures that hold on a shared machine, where
wall-clock scaling depends on what else runs: "cores busy" (the workers' CPU seconds per wall second: N when
nothing serialises them, at most 1 if the GIL did) and frames per CPU second (flat in N when workers do not slow
each other down).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Sequence

from absl import app, flags

from abaw_jax.data.mae_pipeline import decode_rgb
from benchmarks import json_out
from benchmarks.data_pipeline import make_faces

_WORKERS = flags.DEFINE_list("workers", ["1", "2", "4", "8", "16"], "Worker counts to time.")
_FRAMES = flags.DEFINE_integer("frames", 4096, "JPEGs decoded per round.")
_SIDE = flags.DEFINE_integer("side", 112, "Side of the stored crops (px).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds per worker count (best is kept).")
_MODES = flags.DEFINE_list("modes", ["threads", "processes"], "threads and/or processes.")
_ENCODED: list[bytes] = []  # a process worker's copy of the JPEGs, set by its initializer


def _decode_range(encoded: Sequence[bytes], start: int, stop: int) -> tuple[int, float]:
    """(frames decoded, CPU seconds of the calling thread)."""
    cpu = time.thread_time()
    for data in encoded[start:stop]:
        decode_rgb(data)
    return stop - start, time.thread_time() - cpu


def _process_init(encoded: list[bytes]) -> None:
    _ENCODED[:] = encoded


def _process_decode(bounds: tuple[int, int]) -> tuple[int, float]:
    return _decode_range(_ENCODED, *bounds)


def _chunks(frames: int, workers: int) -> list[tuple[int, int]]:
    edges = [frames * i // workers for i in range(workers + 1)]
    return list(zip(edges[:-1], edges[1:]))


@dataclasses.dataclass
class Rate:
    frames_per_s: float
    cores_busy: float  # the workers' CPU seconds per wall second
    frames_per_cpu_s: float


def _best_rate(run: Callable[[], list[tuple[int, float]]], rounds: int) -> Rate:
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        parts = run()
        wall = time.perf_counter() - start
        frames, cpu = sum(p[0] for p in parts), sum(p[1] for p in parts)
        rate = Rate(frames / wall, cpu / wall, frames / cpu)
        best = rate if best is None or rate.frames_per_s > best.frames_per_s else best
    return best


def threads_rate(encoded: list[bytes], workers: int, rounds: int) -> Rate:
    chunks = _chunks(len(encoded), workers)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        run = lambda: list(pool.map(lambda bounds: _decode_range(encoded, *bounds), chunks))
        run()  # warm-up: threads started, decoder tables touched
        return _best_rate(run, rounds)


def processes_rate(encoded: list[bytes], workers: int, rounds: int) -> Rate:
    chunks = _chunks(len(encoded), workers)
    # spawn, not fork: this process may hold threads (JAX's, OpenCV's) that fork would copy mid-state.
    with multiprocessing.get_context("spawn").Pool(workers, _process_init, (encoded,)) as pool:
        run = lambda: pool.map(_process_decode, chunks, chunksize=1)
        run()  # warm-up: every worker started and importing done
        return _best_rate(run, rounds)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_MODES.value) - {"threads", "processes"})
    if unknown:
        raise app.UsageError(f"unknown --modes {unknown}; use threads and/or processes")
    workers = sorted(int(w) for w in _WORKERS.value)
    if workers[0] < 1:
        raise app.UsageError(f"--workers must be at least 1, got {workers[0]}")
    if 1 not in workers:
        workers.insert(0, 1)  # the baseline that efficiency is measured against
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    faces = make_faces(_SIDE.value, min(_FRAMES.value, 512))
    encoded = [faces[i % len(faces)] for i in range(_FRAMES.value)]
    print(
        f"{platform.processor() or platform.machine()}, {cores} cores, load average {os.getloadavg()[0]:.1f}; "
        f"{_FRAMES.value} JPEGs of {_SIDE.value} px ({sum(map(len, faces)) / len(faces) / 1024:.1f} KiB on "
        f"average), decode_rgb at the stored size, best of {_ROUNDS.value} rounds",
        flush=True,
    )
    timers = {"threads": threads_rate, "processes": processes_rate}
    measured: dict[str, dict[int, Rate]] = {mode: {} for mode in _MODES.value}
    for mode in _MODES.value:
        for count in workers:
            measured[mode][count] = r = timers[mode](encoded, count, _ROUNDS.value)
            print(
                f"{mode} x {count}: {r.frames_per_s:,.0f} frames/s, {r.cores_busy:.2f} cores busy, "
                f"{r.frames_per_cpu_s:,.0f} frames per CPU s",
                flush=True,
            )
    rates = {mode: {n: r.frames_per_s for n, r in by.items()} for mode, by in measured.items()}
    efficiency = {mode: {n: r / (n * by[1]) for n, r in by.items()} for mode, by in rates.items()}
    header = [f"{m} frames/s | {m} efficiency | {m} cores busy | {m} frames per CPU s" for m in rates]
    print("\n| workers | " + " | ".join(header) + " |")
    print("|---|" + "---|---|---|---|" * len(rates))
    for count in workers:
        beyond = " (more workers than cores)" if count > cores else ""
        cells = " | ".join(
            f"{rates[m][count]:,.0f} | {100 * efficiency[m][count]:.0f}% | {measured[m][count].cores_busy:.2f} | "
            f"{measured[m][count].frames_per_cpu_s:,.0f}"
            for m in rates
        )
        print(f"| {count}{beyond} | {cells} |")
    covered = max(n for n in workers if n <= cores)
    for mode in rates:
        print(
            f"{mode}: {covered} workers on {cores} cores decode at {100 * efficiency[mode][covered]:.0f}% of linear "
            f"scaling ({rates[mode][covered]:,.0f} vs {covered} x {rates[mode][1]:,.0f} frames/s)"
        )
    json_out.write(
        {
            "cores": cores,
            "frames": _FRAMES.value,
            "side": _SIDE.value,
            "load_average": os.getloadavg()[0],
            "frames_per_s": rates,
            "efficiency": efficiency,
            "measured": {m: {n: dataclasses.asdict(r) for n, r in by.items()} for m, by in measured.items()},
            "cores_covered_workers": covered,
        }
    )


if __name__ == "__main__":
    app.run(main)
