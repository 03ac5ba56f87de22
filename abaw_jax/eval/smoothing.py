"""Temporal Gaussian smoothing of per-frame predictions (the paper's eq. 5), per video and output channel.

The filter is `scipy.ndimage.gaussian_filter1d(x, sigma, mode='reflect', truncate=4.0)` along time, applied to
each video of a padded batch on its own: weights exp(-k^2 / (2 sigma^2)) for |k| <= int(4 sigma + 0.5),
normalised to sum 1, and the video extended past both of its own ends by scipy's `reflect` (a b c | c b a,
numpy's `symmetric`), repeated as often as the kernel needs, so a sigma larger than the video and the padding
of a shorter video in the batch never leak in. sigma = 0 means no smoothing.

A grid of sigmas is one array of kernels (`gaussian_weights`, zero beyond each sigma's own radius) applied at once
as the output features of one convolution (`correlate`): on CPU, XLA's convolution is a matrix product whose
cost barely grows with the number of kernels, so the whole grid costs little more than its largest sigma. The
tuning evaluates a whole grid this way, and the same code smooths with one sigma.
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


def correlate(signal: jax.Array, weights: jax.Array, kernels_last: bool = False) -> jax.Array:
    """sum_j weights[:, j] * signal[..., j:j + L] for signal (..., L + 2R), weights (S, 2R + 1).

    Returns (S, ..., L), or (..., L, S) with `kernels_last`. One convolution with the kernels as output
    features: on CPU, XLA runs it several times faster than the same taps written as fused shifted slices.
    """
    batch = signal.shape[:-1]
    flat = signal.reshape((-1, signal.shape[-1], 1))
    out = jax.lax.conv_general_dilated(flat, jnp.transpose(weights)[:, None, :], window_strides=(1,),
                                       padding="VALID", dimension_numbers=("NWC", "WIO", "NWC"),
                                       precision=jax.lax.Precision.HIGHEST)               # (B, L, S)
    out = out.reshape(batch + out.shape[1:])
    return out if kernels_last else jnp.moveaxis(out, -1, 0)


@functools.partial(jax.jit, static_argnames=("sigmas",))
def smooth(values: jax.Array, mask: jax.Array, sigmas: tuple[float, ...]) -> jax.Array:
    """Smooths a padded batch with each sigma of a grid.

    Args:
      values: (V, T, C) per-frame values, row t of video v valid where `mask[v, t]`.
      mask: (V, T) bool; each video's frames are a prefix of its row (what `pad_batch` makes).
      sigmas: the grid (a tuple: it fixes the kernel sizes, so each grid compiles once).

    Returns:
      (S, V, T, C) float32, zeros on padding.
    """
    num_videos, num_frames, channels = values.shape
    lengths = jnp.sum(mask, axis=1)[:, None]
    # Time on the minor axis: (V, C, T).
    series = jnp.transpose(values.astype(jnp.float32), (0, 2, 1))
    radius = max(kernel_radius(sigma) for sigma in sigmas)
    source = reflect_index(jnp.arange(-radius, num_frames + radius)[None, :], lengths)          # (V, T + 2R)
    extended = jnp.take_along_axis(series, source[:, None, :], axis=2)
    out = correlate(extended, jnp.asarray(gaussian_weights(sigmas, radius)), kernels_last=True)   # (V, C, T, S)
    out = jnp.transpose(out, (3, 0, 2, 1))
    return jnp.where(mask[None, ..., None], out, 0.0)


def gaussian_smooth(values: jax.Array, mask: jax.Array, sigma: float) -> jax.Array:
    """(V, T, C) values smoothed with one sigma (0 returns them unchanged, padding zeroed)."""
    return smooth(values, mask, (float(sigma),))[0]
