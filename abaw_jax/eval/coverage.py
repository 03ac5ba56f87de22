"""Padded per-video batches, and predictions for the frames that had no face crop.

A batch holds V videos padded to T frames: `values` (V, T, C), `mask` (V, T) True on the video's own frames
(frame k of video v is row k-1; rows past a video's length are padding). `face` (V, T) is True where the frame
had a face crop, so the model's prediction there comes from a face.

Aff-Wild2 scores every annotated frame, with or without a face. `fill_missing` replaces each non-face frame's
prediction by linear interpolation along time between the nearest face frames before and after it; before the
first face frame and after the last one it holds that face frame's prediction. A video with no face frame at all
keeps the model's own outputs (what the model produced from its zero features there): no better per-video
information exists, and the model's outputs on empty input are its learned prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def pad_batch(
    arrays: Sequence[np.ndarray], length: int | None = None, fill: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks per-video arrays (N_v, ...) into (V, T, ...) with T = max N_v (or `length`), and the (V, T) mask."""
    length = max([len(a) for a in arrays] + [1]) if length is None else length
    first = np.asarray(arrays[0])
    out = np.full((len(arrays), length) + first.shape[1:], fill, first.dtype)
    mask = np.zeros((len(arrays), length), bool)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = array
        mask[i, : len(array)] = True
    return out, mask


@jax.jit
def fill_missing(values: jax.Array, face: jax.Array, mask: jax.Array) -> jax.Array:
    """(V, T, C) values with non-face frames filled from the nearest face frames (see the module docstring).

    Padding rows (mask False) come back as zeros.
    """
    face = jnp.logical_and(face, mask)
    num_frames = values.shape[1]
    index = jnp.arange(num_frames)[None, :]
    previous = jax.lax.cummax(jnp.where(face, index, -1), axis=1)
    following = jax.lax.cummin(jnp.where(face, index, num_frames), axis=1, reverse=True)
    has_previous, has_following = previous >= 0, following < num_frames
    left = jnp.clip(previous, 0, num_frames - 1)
    right = jnp.clip(following, 0, num_frames - 1)
    # Fraction of the way from the previous face frame to the next one; ends hold the one face frame they have.
    span = jnp.maximum(following - previous, 1)
    weight = jnp.where(has_previous & has_following, (index - previous) / span, jnp.where(has_following, 1.0, 0.0))
    take = lambda i: jnp.take_along_axis(values, i[..., None], axis=1)
    filled = (1 - weight[..., None]) * take(left) + weight[..., None] * take(right)
    any_face = jnp.any(face, axis=1)[:, None, None]
    keep_own = jnp.logical_or(face[..., None], ~any_face)
    return jnp.where(mask[..., None], jnp.where(keep_own, values, filled), 0).astype(values.dtype)
