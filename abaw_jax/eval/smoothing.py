"""Temporal Gaussian smoothing of per-frame predictions (the paper's eq. 5), per video and output channel.

The filter is `scipy.ndimage.gaussian_filter1d(x, sigma, mode='reflect', truncate=4.0)` along time, applied to
each video of a padded batch on its own: weights exp(-k^2 / (2 sigma^2)) for |k| <= int(4 sigma + 0.5),
normalised to sum 1, and the video extended past both of its own ends by scipy's `reflect` (a b c | c b a,
numpy's `symmetric`), repeated as often as the kernel needs, so a sigma larger than the video and the padding
of a shorter video in the batch never leak in. sigma = 0 means no smoothing.

A grid of sigmas is one array of kernels (`gaussian_weights`), all applied in one convolution whose output
channels are the grid: the tuning evaluates every sigma at once, and the same function smooths with one sigma.
"""
from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

TRUNCATE = 4.0


def kernel_radius(sigma: float) -> int:
    """scipy's radius for a sigma: int(truncate * sigma + 0.5); 0 for sigma 0."""
    return int(TRUNCATE * float(sigma) + 0.5)


def gaussian_weights(sigmas: Sequence[float] | float, radius: int | None = None) -> np.ndarray:
    """(S, 2 radius + 1) float32 kernels, one per sigma, each zero beyond its own scipy radius.

    `radius` (default: the largest sigma's) is the common half-width, so that a grid is one array. Computed in
    float64 as scipy does, then rounded once.
    """
    sigmas = np.atleast_1d(np.asarray(sigmas, np.float64))
    if np.any(~np.isfinite(sigmas)) or np.any(sigmas < 0):
        raise ValueError(f"sigmas must be finite and >= 0, got {sigmas.tolist()}")
    largest = max(kernel_radius(s) for s in sigmas)
    radius = largest if radius is None else radius
    if radius < largest:
        raise ValueError(f"radius {radius} is smaller than the largest sigma's radius {largest}")
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.zeros((len(sigmas), len(offsets)))
    for row, sigma in zip(weights, sigmas):
        if sigma == 0:
            row[radius] = 1.0
            continue
        inside = np.abs(offsets) <= kernel_radius(sigma)
        row[inside] = np.exp(-0.5 / (sigma * sigma) * offsets[inside] ** 2)
        row /= row.sum()
    return weights.astype(np.float32)


def reflect_index(index: jax.Array, length: jax.Array) -> jax.Array:
    """scipy's `reflect` extension of positions into 0..length-1 (period 2 length, edge sample repeated)."""
    length = jnp.maximum(length, 1)
    folded = jnp.mod(index, 2 * length)
    return jnp.where(folded < length, folded, 2 * length - 1 - folded)


@functools.partial(jax.jit, static_argnames=())
def smooth(values: jax.Array, mask: jax.Array, weights: jax.Array) -> jax.Array:
    """Smooths a padded batch with each kernel of `weights`.

    Args:
      values: (V, T, C) per-frame values, row t of video v valid where `mask[v, t]`.
      mask: (V, T) bool; each video's frames are a prefix of its row (what `pad_batch` makes).
      weights: (S, 2R + 1) kernels from `gaussian_weights`.

    Returns:
      (S, V, T, C) float32, zeros on padding.
    """
    num_videos, num_frames, channels = values.shape
    radius = (weights.shape[1] - 1) // 2
    lengths = jnp.sum(mask, axis=1)
    positions = jnp.arange(-radius, num_frames + radius)[None, :]
    source = reflect_index(positions, lengths[:, None])                          # (V, T + 2R)
    extended = jnp.take_along_axis(values.astype(jnp.float32), source[..., None], axis=1)
    # Channels join the batch: one (T + 2R)-long signal per (video, channel), kernels as output features.
    signals = jnp.transpose(extended, (0, 2, 1)).reshape(num_videos * channels, num_frames + 2 * radius, 1)
    kernels = jnp.transpose(weights.astype(jnp.float32))[:, None, :]            # (2R + 1, 1, S)
    out = jax.lax.conv_general_dilated(signals, kernels, window_strides=(1,), padding="VALID",
                                       dimension_numbers=("NWC", "WIO", "NWC"),
                                       precision=jax.lax.Precision.HIGHEST)     # (V C, T, S)
    out = jnp.transpose(out.reshape(num_videos, channels, num_frames, -1), (3, 0, 2, 1))
    return jnp.where(mask[None, ..., None], out, 0.0)


def gaussian_smooth(values: jax.Array, mask: jax.Array, sigma: float) -> jax.Array:
    """(V, T, C) values smoothed with one sigma (0 returns them unchanged, padding zeroed)."""
    if sigma == 0:
        return jnp.where(jnp.asarray(mask)[..., None], jnp.asarray(values, jnp.float32), 0.0)
    return smooth(values, mask, jnp.asarray(gaussian_weights(sigma)))[0]
