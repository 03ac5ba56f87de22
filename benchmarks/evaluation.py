r"""Stage 5 speed: the full post-processing tuning and final ensemble scoring, ours against numpy/scipy/sklearn.

  python -m benchmarks.evaluation [--frames=3000000 --videos=600 --members=7 --baseline_videos=30]

Simulates, for each task (AU, EXPR, VA), `--frames` annotated frames over `--videos` videos (lengths 0.5-1.5x the
mean), smooth labels, and `--members` ensemble members' per-frame outputs (label signal + slow member drift +
per-frame noise); the out-of-fold outputs of a video are those of member `video mod 5`. Then times, per task:

  ours      `tuning.tune` over the evaluate config's grids (32 sigmas including 0; for AU 37 thresholds per AU;
            EXPR biases off), then the final scoring: every member smoothed with the tuned sigma and the vote
            (`tuning.final_labels`), the task metric. Wall clock of the first call (with compilation) and of a
            second call (steady state).
  baseline  the same computation as a careful user writes it: per video `scipy.ndimage.gaussian_filter1d(x,
            sigma, axis=0, mode='reflect', truncate=4.0)` for each sigma, `sklearn.metrics.f1_score(...,
            average=None, zero_division=0)` per sigma and per threshold (all 12 AUs in one multilabel call), a
            numpy CCC, numpy votes with the same tie rules. Single-threaded numpy/scipy/sklearn, as they are.
            Run on the first `--baseline_videos` videos and extrapolated linearly in frames to the full set
            (every step is linear in frames), because the full run takes far longer.

Agreement: ours is also run on that subset, and the tuned sigma, AU thresholds, metrics before/after each step and
the final ensemble metric are compared with the baseline's (printed with the largest difference).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import numpy as np
from absl import app, flags
from scipy import ndimage
from sklearn.metrics import f1_score

from abaw_jax import tasks
from abaw_jax.eval import metrics, tuning
from benchmarks import json_out

_FRAMES = flags.DEFINE_integer("frames", 3_000_000, "Annotated frames per task.")
_VIDEOS = flags.DEFINE_integer("videos", 600, "Videos per task.")
_MEMBERS = flags.DEFINE_integer("members", 7, "Ensemble members.")
_BASELINE_VIDEOS = flags.DEFINE_integer("baseline_videos", 30, "Videos the baseline runs on (extrapolated).")
_SEED = flags.DEFINE_integer("seed", 0, "Simulation seed.")

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "evaluate.py"


def _grids():
    spec = importlib.util.spec_from_file_location("evaluate_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("au")
    return tuple(config.tuning.sigmas), np.asarray(config.tuning.thresholds, np.float32)


def simulate(task: tasks.Task, rng: np.random.Generator, frames: int, videos: int, members: int):
    """Padded (members, V, T, C) outputs, labels (V, T, ...), valid and mask (V, T)."""
    lengths = rng.uniform(0.5, 1.5, videos)
    lengths = np.maximum(np.round(lengths / lengths.sum() * frames).astype(int), 10)
    lengths[-1] += frames - lengths.sum()
    length = int(lengths.max())
    mask = np.arange(length)[None, :] < lengths[:, None]
    coarse = lambda *shape: np.repeat(rng.normal(size=shape[:-1] + (shape[-1] // 50 + 1,)), 50, -1)[..., : shape[-1]]
    channels = task.num_outputs
    latent = np.moveaxis(coarse(videos, channels, length), 1, 2).astype(np.float32)  # (V, T, C), steps of 50
    if task.kind == "binary":
        labels = (latent > 0.5).astype(np.int8)
        signal = 2.0 * labels - 1
    elif task.kind == "multiclass":
        labels = latent.argmax(-1).astype(np.int8)
        signal = np.eye(channels, dtype=np.float32)[labels] * 2.0
    else:
        labels = np.tanh(0.6 * latent).astype(np.float32)
        signal = labels
    valid = mask & (rng.uniform(size=mask.shape) < 0.97)
    outputs = np.empty((members, videos, length, channels), np.float32)
    for m in range(members):
        noisy = (
            signal
            + 0.4 * np.moveaxis(coarse(videos, channels, length), 1, 2)
            + rng.normal(0, 1.2 if task.kind != "continuous" else 0.35, signal.shape)
        )
        if task.kind == "binary":
            outputs[m] = 1 / (1 + np.exp(-1.5 * noisy))
        elif task.kind == "multiclass":
            e = np.exp(noisy - noisy.max(-1, keepdims=True))
            outputs[m] = e / e.sum(-1, keepdims=True)
        else:
            outputs[m] = np.clip(noisy, -1, 1)
    outputs *= mask[None, ..., None]
    return outputs, labels, valid, mask


def _oof(outputs: np.ndarray) -> np.ndarray:
    return outputs[np.arange(outputs.shape[1]) % 5, np.arange(outputs.shape[1])]


def ours(task: tasks.Task, outputs, labels, valid, mask, sigmas, thresholds) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    tuned = tuning.tune(
        task.name,
        _oof(outputs),
        labels,
        valid,
        mask,
        sigmas,
        threshold_grid=thresholds if task.kind == "binary" else (),
    )
    tuning_seconds = (time.perf_counter() - start, time.process_time() - cpu)
    final = tuning.final_labels(task.name, outputs, mask, np.ones(outputs.shape[:2], bool), tuned)
    metric, _ = metrics.label_scores(task, final, labels, valid)
    return {
        "sigma": tuned.sigma,
        "thresholds": tuned.thresholds,
        "steps": [(s["before"], s["after"]) for s in tuned.steps],
        "final": float(metric),
        "tuning_seconds": tuning_seconds,
    }


def _ccc(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _baseline_metric(task, x, y, thresholds=0.5):
    if task.kind == "binary":
        return f1_score(y, x >= thresholds, average=None, zero_division=0)
    if task.kind == "multiclass":
        return f1_score(y, x.argmax(1), labels=range(task.num_outputs), average=None, zero_division=0)
    return np.array([_ccc(x[:, c], y[:, c]) for c in range(x.shape[1])])


def baseline(task: tasks.Task, outputs, labels, valid, mask, sigmas, thresholds) -> dict:
    """The numpy / scipy / sklearn version of `ours`, video by video."""
    lengths = mask.sum(1)
    oof = _oof(outputs)
    keep = [valid[v, : lengths[v]] for v in range(len(lengths))]
    truth = np.concatenate([labels[v, : lengths[v]][k] for v, k in enumerate(keep)])

    def smoothed(per_video, sigma):
        return [
            x[:n] if sigma == 0 else ndimage.gaussian_filter1d(x[:n], sigma, axis=0, mode="reflect", truncate=4.0)
            for x, n in zip(per_video, lengths)
        ]

    def counted(per_video):
        return np.concatenate([x[k] for x, k in zip(per_video, keep)])

    scores = [_baseline_metric(task, counted(smoothed(oof, s)), truth).mean() for s in sigmas]
    best = int(np.argmax(scores))
    sigma = sigmas[best]
    steps = [(scores[list(sigmas).index(0)], scores[best])]
    chosen = None
    if task.kind == "binary":
        x = counted(smoothed(oof, sigma))
        table = np.stack([_baseline_metric(task, x, truth, t) for t in thresholds])
        chosen = thresholds[np.argmax(table, axis=0)]
        steps.append((scores[best], table.max(axis=0).mean()))
    per_member = [counted(smoothed(member, sigma)) for member in outputs]
    stacked = np.stack(per_member)  # (M, F, C)
    mean = stacked.mean(0)
    if task.kind == "binary":
        ones = (stacked >= chosen).sum(0)
        zeros = len(stacked) - ones
        final = np.where(ones > zeros, 1, np.where(zeros > ones, 0, mean >= chosen))
        result = f1_score(truth, final, average=None, zero_division=0).mean()
    elif task.kind == "multiclass":
        votes = np.eye(task.num_outputs)[stacked.argmax(-1)].sum(0)
        tied = votes == votes.max(-1, keepdims=True)
        final = np.where(tied, mean, -np.inf).argmax(-1)
        result = f1_score(truth, final, labels=range(task.num_outputs), average=None, zero_division=0).mean()
    else:
        result = np.mean([_ccc(np.clip(mean[:, c], -1, 1), truth[:, c]) for c in range(2)])
    return {"sigma": sigma, "thresholds": chosen, "steps": steps, "final": float(result)}


def _timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - start, time.process_time() - cpu


def main(argv):
    del argv
    sigmas, thresholds = _grids()
    rng = np.random.default_rng(_SEED.value)
    rows, agreement = [], []
    for task in (tasks.AU, tasks.EXPR, tasks.VA):
        outputs, labels, valid, mask = simulate(task, rng, _FRAMES.value, _VIDEOS.value, _MEMBERS.value)
        frames = int(mask.sum())
        _, first, _ = _timed(ours, task, outputs, labels, valid, mask, sigmas, thresholds)
        full, steady, steady_cpu = _timed(ours, task, outputs, labels, valid, mask, sigmas, thresholds)
        subset = slice(0, _BASELINE_VIDEOS.value)
        sub_mask = mask[subset]
        sub_length = int(sub_mask.sum(1).max())
        sub = (
            outputs[:, subset, :sub_length],
            labels[subset, :sub_length],
            valid[subset, :sub_length],
            sub_mask[:, :sub_length],
        )
        reference, base_seconds, _ = _timed(baseline, task, *sub, sigmas, thresholds)
        mine = ours(task, *sub, sigmas, thresholds)
        scale = frames / int(sub_mask.sum())
        rows.append(
            (task.name, frames, first, steady, steady_cpu, base_seconds, base_seconds * scale, *full["tuning_seconds"])
        )
        differences = [abs(a - b) for x, y in zip(mine["steps"], reference["steps"]) for a, b in zip(x, y)]
        differences.append(abs(mine["final"] - reference["final"]))
        same_thresholds = mine["thresholds"] is None or np.array_equal(mine["thresholds"], reference["thresholds"])
        agreement.append(
            f"{task.name}: sigma ours {mine['sigma']:g} / baseline {reference['sigma']:g}; thresholds "
            f"{'identical' if same_thresholds else 'DIFFER'}; largest metric difference "
            f"{max(differences):.2e} (final ensemble metric {mine['final']:.4f}); full-size run: "
            f"sigma {full['sigma']:g}, metric {full['steps'][0][0]:.4f} -> {full['steps'][-1][1]:.4f}, "
            f"ensemble {full['final']:.4f}"
        )
        del outputs
    print(
        f"\n{len(sigmas)} sigmas (0..{max(sigmas):g}), {len(thresholds)} AU thresholds, {_MEMBERS.value} members, "
        f"{_VIDEOS.value} videos per task; baseline measured on {_BASELINE_VIDEOS.value} videos and extrapolated\n"
    )
    print(
        "| task | frames | ours, first call (s) | ours, steady (s) | ours, steady CPU (s) | of which tuning (s) "
        "| tuning CPU (s) | baseline measured (s) | baseline extrapolated (s) | speed-up (steady) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, frames, first, steady, cpu, measured, extrapolated, tune_wall, tune_cpu in rows:
        print(
            f"| {name} | {frames:,} | {first:.2f} | {steady:.2f} | {cpu:.2f} | {tune_wall:.2f} | {tune_cpu:.2f} | "
            f"{measured:.1f} | {extrapolated:.0f} | {extrapolated / steady:.0f}x |"
        )
    total = [sum(r[i] for r in rows) for i in range(1, 9)]
    print(
        f"| all | {total[0]:,} | {total[1]:.2f} | {total[2]:.2f} | {total[3]:.2f} | {total[6]:.2f} | "
        f"{total[7]:.2f} | {total[4]:.1f} | {total[5]:.0f} | {total[5] / total[2]:.0f}x |"
    )
    print(f"\nload average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    for line in agreement:
        print(line)
    keys = ("task", "frames", "first_s", "steady_s", "steady_cpu_s", "baseline_measured_s")
    keys += ("baseline_extrapolated_s", "tuning_s", "tuning_cpu_s")
    json_out.write(
        {
            "videos": _VIDEOS.value,
            "members": _MEMBERS.value,
            "baseline_videos": _BASELINE_VIDEOS.value,
            "tasks": [dict(zip(keys, row)) for row in rows],
            "total": dict(zip(keys[1:], total)),
            "agreement": agreement,
        }
    )


if __name__ == "__main__":
    app.run(main)
