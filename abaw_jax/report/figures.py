"""The report's figures: MAE loss and reconstructions, fine-tuning curves, fusion curves, evaluate's timelines."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from PIL import Image  # noqa: E402

from abaw_jax.report.stage_files import TaskFiles  # noqa: E402

FIGURES = "figures"


def _save(figure, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _curve(axis, records: list[dict], key: str, label: str | None = None) -> None:
    points = [(r["step"], r[key]) for r in records if key in r]
    if points:
        axis.plot(*zip(*points), linewidth=1.0, label=label or key, marker="." if len(points) < 20 else None)


def mae_figures(mae: pathlib.Path, records: list[dict], figures: pathlib.Path, notes: list[str]) -> list[tuple]:
    out = []
    figure, axis = plt.subplots(figsize=(5, 3))
    _curve(axis, records, "loss")
    axis.set(xlabel="step", ylabel="loss", title="MAE pretraining loss")
    out.append(("MAE pretraining loss", _save(figure, figures / "curves_mae.png")))
    grids = sorted((mae / "reconstructions").glob("step_*.png"))
    if not grids:
        notes.append(f"No MAE reconstructions ({mae / 'reconstructions'} has no step_*.png): figure dropped.")
        return out
    picked = [grids[0], grids[len(grids) // 2], grids[-1]] if len(grids) > 2 else grids
    images = [Image.open(path).convert("RGB") for path in dict.fromkeys(picked)]
    width = 4.0 * images[0].width / images[0].height
    figure, axes = plt.subplots(1, len(images), figsize=(width * len(images) + 0.4, 4.3), squeeze=False)
    for axis, path, image in zip(axes[0], dict.fromkeys(picked), images):
        axis.imshow(image)
        axis.set_title(f"step {int(path.stem.split('_')[-1])}", fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    out.append(
        (
            "MAE reconstructions (columns per step: original, masked, reconstruction)",
            _save(figure, figures / "mae_reconstructions.png"),
        )
    )
    return out


def finetune_figure(all_files: Sequence[TaskFiles], figures: pathlib.Path) -> tuple:
    figure, axes = plt.subplots(2, len(all_files), figsize=(3.5 * len(all_files), 5), squeeze=False)
    for column, files in enumerate(all_files):
        _curve(axes[0, column], files.finetune_metrics, "loss")
        _curve(axes[1, column], files.finetune_metrics, "eval_metric")
        axes[0, column].set_title(f"fine-tuning {files.task.name}", fontsize=9)
        axes[0, column].set_ylabel("loss")
        axes[1, column].set(xlabel="step", ylabel=f"eval {files.task.metric_name.split(' (')[0]}")
    figure.tight_layout()
    return "Fine-tuning loss and evaluation metric per task", _save(figure, figures / "curves_finetune.png")


def fusion_figure(files: TaskFiles, figures: pathlib.Path) -> tuple:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for member in files.fusion_scores["members"]:
        _curve(axes[0], files.fusion_metrics, f"loss/{member}", member)
        _curve(axes[1], files.fusion_metrics, f"heldout/{member}", member)
    name = files.task.name
    axes[0].set(xlabel="step", ylabel="loss", title=f"fusion {name}: training loss per member")
    axes[1].set(xlabel="step", ylabel=files.task.metric_name.split(" (")[0], title=f"fusion {name}: held-out")
    for axis in axes:
        axis.title.set_fontsize(9)
        if axis.lines:
            axis.legend(fontsize=6)
    figure.tight_layout()
    path = _save(figure, figures / f"curves_fusion_{name.lower()}.png")
    return f"Fusion {name}: losses and held-out metric per member", path


def timelines(files: TaskFiles, figures: pathlib.Path, notes: list[str]) -> list[tuple]:
    plots = sorted(files.paths["plots"].glob("*.png"))
    if not plots:
        notes.append(f"{files.task.name}: no timelines ({files.paths['plots']} has no PNG): figures dropped.")
    out = []
    for path in plots:
        target = figures / f"timeline_{files.task.name.lower()}_{path.name}"
        shutil.copyfile(path, target)
        out.append((f"{files.task.name} timeline {path.stem} (out-of-fold, post-processed)", target))
    return out
