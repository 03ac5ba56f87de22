"""Per-video timeline plots of predictions against labels (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import os
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from abaw_jax import tasks  # noqa: E402


def plot_timeline(
    path: str | os.PathLike,
    task: str,
    predictions: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray,
    face: np.ndarray,
    title: str = "",
) -> pathlib.Path:
    """Writes one PNG: per channel (AU, VA) or the class (EXPR), predictions over labels along the frames.

    predictions: AU (N, 12) 0/1 or probabilities, EXPR (N,) classes, VA (N, 2) values; labels in the
    annotation encoding with `valid` (N,) marking annotated frames; frames without a face are shaded.
    """
    task_facts = tasks.get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    valid, face = np.asarray(valid, bool), np.asarray(face, bool)
    frames = np.arange(1, len(predictions) + 1)
    if task_facts.kind == "multiclass":
        rows = [("class", predictions[:, None], labels[:, None])]
    else:
        rows = [
            (name, predictions[:, i : i + 1], labels[:, i : i + 1]) for i, name in enumerate(task_facts.label_names)
        ]
    figure, axes = plt.subplots(len(rows), 1, figsize=(10, 0.9 * len(rows) + 1.2), sharex=True, squeeze=False)
    for axis, (name, predicted, truth) in zip(axes[:, 0], rows):
        truth = np.where(valid[:, None], truth.astype(np.float64), np.nan)
        axis.plot(frames, truth[:, 0], color="black", linewidth=1.0, label="label")
        axis.plot(frames, predicted[:, 0], color="tab:red", linewidth=0.8, label="prediction")
        axis.fill_between(
            frames, 0, 1, where=~face, transform=axis.get_xaxis_transform(), color="0.85", linewidth=0, label="no face"
        )
        axis.set_ylabel(name, rotation=0, ha="right", fontsize=7)
        axis.tick_params(labelsize=6)
        if task_facts.kind == "multiclass":
            axis.set_yticks(range(task_facts.num_outputs), task_facts.label_names, fontsize=6)
    axes[0, 0].legend(loc="upper right", fontsize=6, ncol=3)
    axes[-1, 0].set_xlabel("frame")
    figure.suptitle(title or f"{task_facts.name} timeline", fontsize=9)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def plot_prediction_timeline(
    path: str | os.PathLike,
    series: dict[str, np.ndarray],
    face: np.ndarray,
    title: str = "",
    times: np.ndarray | None = None,
) -> pathlib.Path:
    """Writes one PNG of unlabelled predictions: a row per named series (N,) (e.g. AU probabilities, the EXPR
    class, valence, arousal) along the frames (or `times` in seconds); frames without a face are shaded."""
    face = np.asarray(face, bool)
    x = np.arange(1, len(face) + 1) if times is None else np.asarray(times)
    figure, axes = plt.subplots(len(series), 1, figsize=(10, 0.6 * len(series) + 1.2), sharex=True, squeeze=False)
    for axis, (name, values) in zip(axes[:, 0], series.items()):
        axis.plot(x, np.asarray(values, np.float64), color="tab:red", linewidth=0.8)
        axis.fill_between(x, 0, 1, where=~face, transform=axis.get_xaxis_transform(), color="0.85", linewidth=0)
        axis.set_ylabel(name, rotation=0, ha="right", fontsize=6)
        axis.tick_params(labelsize=5)
    axes[-1, 0].set_xlabel("frame" if times is None else "time (s)")
    figure.suptitle(title or "predictions (grey: no face)", fontsize=9)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
