"""Checks of the per-frame arrays that cross a stage boundary (feature sets, predictions): non-finite rows and
values out of range, described by the 1-based frames they fall on so an error can name them."""

from __future__ import annotations

import numpy as np


def frames_text(rows: np.ndarray, limit: int = 8) -> str:
    """'frames 3, 4, 9' for the 0-based `rows` of a track: the 1-based frame numbers, the first `limit` of them."""
    frames = [str(int(r) + 1) for r in rows[:limit]]
    more = f", ... ({len(rows)} frames)" if len(rows) > limit else ""
    return f"frame{'s' if len(rows) > 1 else ''} {', '.join(frames)}{more}"


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """0-based indices of the rows of a (frames, ...) array holding a NaN or an infinity."""
    values = np.asarray(values)
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))


def rows_outside(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """0-based indices of the rows of a finite (frames, ...) array with a value outside [low, high]."""
    values = np.asarray(values).reshape(len(values), -1)
    return np.flatnonzero(((values < low) | (values > high)).any(axis=1))
