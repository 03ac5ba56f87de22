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


def stream_layout(lengths: np.ndarray, num_frames: int, halo: int, chunk: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Videos end to end, each extended by `halo` reflected frames on both sides, padded to whole chunks.

    Returns (source, real): for every stream position, the flat index (v * num_frames + t) of the frame it
    reads, and whether it is one of the video's own frames (halo and padding positions are not). The stream
    has `halo` extra positions at both ends beyond whole chunks, so chunk k reads [k chunk, (k + 1) chunk + 2 halo)
    and produces the outputs of positions k chunk + halo ... A stream has no padding between videos of different
    lengths, unlike a padded batch.
    """
    sources, reals = [np.zeros(halo, np.int64)], [np.zeros(halo, bool)]
    for video, length in enumerate(np.asarray(lengths, np.int64)):
        if length == 0:
            continue
        positions = np.arange(-halo, length + halo)
        folded = np.mod(positions, 2 * length)
        sources.append(video * num_frames + np.where(folded < length, folded, 2 * length - 1 - folded))
        reals.append((positions >= 0) & (positions < length))
    used = sum(len(r) for r in reals) - halo
    tail = -(used - halo) % chunk + halo if used > halo else chunk + halo
    sources.append(np.zeros(tail, np.int64))
    reals.append(np.zeros(tail, bool))
    return np.concatenate(sources), np.concatenate(reals)


def correlate(signal: jax.Array, weights: np.ndarray, kernels_last: bool = False) -> jax.Array:
    """sum_j weights[:, j] * signal[..., j:j + L] for signal (..., L + 2R), weights (S, 2R + 1) (constants).

    Returns (S, ..., L), or (..., L, S) with `kernels_last`. One kernel: fused shifted slices along the minor
    axis. Several: one convolution with the kernels as output features, a matrix product whose cost barely
    grows with the number of kernels on CPU (a convolution with one output feature is ~6x slower than slices).
    """
    weights = np.asarray(weights, np.float32)
    length = signal.shape[-1] - weights.shape[1] + 1
    if len(weights) == 1:
        taps = [(j, float(w)) for j, w in enumerate(weights[0]) if w != 0]
        out = sum(w * signal[..., j:j + length] for j, w in taps)[None]
        return jnp.moveaxis(out, 0, -1) if kernels_last else out
    batch = signal.shape[:-1]
    flat = signal.reshape((-1, signal.shape[-1], 1))
    out = jax.lax.conv_general_dilated(flat, jnp.asarray(weights.T)[:, None, :], window_strides=(1,),
                                       padding="VALID", dimension_numbers=("NWC", "WIO", "NWC"),
                                       precision=jax.lax.Precision.HIGHEST)               # (B, L, S)
    out = out.reshape(batch + out.shape[1:])
    return out if kernels_last else jnp.moveaxis(out, -1, 0)


def smooth(values: jax.Array, mask: np.ndarray, sigmas: Sequence[float]) -> jax.Array:
    """Smooths a padded batch with each sigma of a grid.

    Args:
      values: (V, T, C) per-frame values, row t of video v valid where `mask[v, t]`.
      mask: (V, T) bool (concrete); each video's frames are a prefix of its row (what `pad_batch` makes).
      sigmas: the grid.

    Returns:
      (S, V, T, C) float32, zeros on padding.
    """
    sigmas = tuple(float(s) for s in sigmas)
    mask = np.asarray(mask, bool)
    num_videos, num_frames = mask.shape
    halo = max(kernel_radius(sigma) for sigma in sigmas)
    source, real = stream_layout(mask.sum(1), num_frames, halo)
    # Where each (video, frame) of the batch sits in the stream; padding reads position 0 and is zeroed.
    back = np.zeros(num_videos * num_frames, np.int64)
    back[source[real]] = np.flatnonzero(real)
    return _smooth(jnp.asarray(values), jnp.asarray(mask), jnp.asarray(source), jnp.asarray(back), sigmas, halo)


@functools.partial(jax.jit, static_argnames=("sigmas", "halo"))
def _smooth(values, mask, source, back, sigmas, halo):
    num_videos, num_frames, channels = values.shape
    stream = jnp.take(values.reshape(-1, channels).astype(jnp.float32), source, axis=0).T        # (C, L)
    out = correlate(stream, gaussian_weights(sigmas, halo), kernels_last=True)                   # (C, L - 2R, S)
    # Output position p is stream position p + halo.
    out = jnp.take(out, jnp.maximum(back - halo, 0), axis=1)                                     # (C, V T, S)
    out = jnp.transpose(out.reshape(channels, num_videos, num_frames, -1), (3, 1, 2, 0))
    return jnp.where(mask[None, ..., None], out, 0.0)


def gaussian_smooth(values: jax.Array, mask: np.ndarray, sigma: float) -> jax.Array:
    """(V, T, C) values smoothed with one sigma (0 returns them unchanged, padding zeroed)."""
    return smooth(values, mask, (float(sigma),))[0]
