"""An automatic scene router: which videos are "reaction" videos (the paper's SDD picks them by hand).

Each video is summarised by statistics of its per-frame visual features over its face frames (mean and standard
deviation per feature dimension); a logistic regression on the standardised statistics, trained on the training
videos' membership of the reaction list, predicts the scene of any other video. Pure numpy: a few hundred videos
by a few thousand statistics fit in well under a second with plain gradient descent.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


def video_statistics(features: np.ndarray, face: np.ndarray) -> np.ndarray:
    """(2 D,) mean and standard deviation of a video's features (frames, D) over its face frames.

    A video without face frames uses all its frames.
    """
    features = np.asarray(features, np.float64)
    rows = features[np.asarray(face, bool)] if np.any(face) else features
    return np.concatenate([rows.mean(0), rows.std(0)]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SceneRouter:
    """Standardisation and logistic-regression weights; `predict` says True for a reaction video."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def probability(self, statistics: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(statistics) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))

    def predict(self, statistics: np.ndarray) -> np.ndarray:
        return self.probability(statistics) >= 0.5

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, weights=self.weights, bias=self.bias)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SceneRouter":
        with np.load(path) as r:
            return cls(r["mean"], r["scale"], r["weights"], float(r["bias"]))


def fit_router(
    statistics: np.ndarray, is_reaction: np.ndarray, *, l2: float = 1e-2, steps: int = 500, learning_rate: float = 0.5
) -> SceneRouter:
    """Fits the router on (videos, F) statistics and bool labels (both classes must occur)."""
    x = np.asarray(statistics, np.float64)
    y = np.asarray(is_reaction, np.float64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"expected (videos, F) statistics and (videos,) labels, got {x.shape} and {y.shape}")
    if y.min() == y.max():
        raise ValueError(
            f"the router needs reaction and other videos to learn from; all {len(y)} are "
            f"{'reaction' if y.min() else 'other'} videos"
        )
    mean, scale = x.mean(0), np.maximum(x.std(0), 1e-6)
    z = (x - mean) / scale
    weights, bias = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ weights + bias)))
        error = p - y
        weights -= learning_rate * (z.T @ error / len(y) + l2 * weights)
        bias -= learning_rate * error.mean()
    return SceneRouter(mean.astype(np.float32), scale.astype(np.float32), weights.astype(np.float32), float(bias))


def fit_and_validate(
    statistics: np.ndarray, is_reaction: np.ndarray, train: np.ndarray, validation: np.ndarray
) -> tuple[SceneRouter, dict]:
    """A router fit on the `train` videos, and its accuracy on the `validation` ones (NaN when there are none).

    The report: {train_videos, train_reaction_videos, validation_videos, validation_accuracy}.
    """
    statistics, is_reaction = np.asarray(statistics), np.asarray(is_reaction, bool)
    train, validation = np.asarray(train, bool), np.asarray(validation, bool)
    router = fit_router(statistics[train], is_reaction[train])
    correct = router.predict(statistics[validation]) == is_reaction[validation] if validation.any() else np.array([])
    return router, {
        "train_videos": int(train.sum()),
        "train_reaction_videos": int(is_reaction[train].sum()),
        "validation_videos": int(validation.sum()),
        "validation_accuracy": float(correct.mean()) if correct.size else float("nan"),
    }
