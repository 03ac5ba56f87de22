"""Temporal Gaussian smoothing of per-frame predictions (the paper's eq. 5), per video and output channel.

The filter is `scipy.ndimage.gaussian_filter1d(x, sigma, mode='reflect', truncate=4.0)` along time, applied to
each video of a padded batch on its own: weights exp(-k^2 / (2 sigma^2)) for |k| <= int(4 sigma + 0.5),
normalised to sum 1, and the video extended past both of its own ends by scipy's `reflect` (a b c | c b a,
numpy's `symmetric`), repeated as often as the kernel needs, so a sigma larger than the video and the padding
of a shorter video in the batch never leak in. sigma = 0 means no smoothing.

Two ways to apply the same kernels (`gaussian_weights`, zero beyond each sigma's own radius), both tested against
scipy: `smooth` applies one sigma (or a few) to a padded batch as shifted slices, each video's kernel folded onto
its own frames (`video_kernels`: memory bounded for any sigma); `correlate` applies a whole grid at once as the
output features of one convolution (on CPU a matrix product whose cost barely grows with the number of kernels),
which the tuning uses on videos laid end to end (`stream_layout`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

TRUNCATE = 4.0


def check_sigmas(sigmas: Sequence[float] | float) -> np.ndarray:
    """The sigmas as float64, or a ValueError naming them when one is negative or not finite."""
    sigmas = np.atleast_1d(np.asarray(sigmas, np.float64))
    if np.any(~np.isfinite(sigmas)) or np.any(sigmas < 0):
        raise ValueError(
            f"smoothing sigmas must be finite and >= 0 (0: no smoothing), got sigma "
            f"{', '.join(str(s) for s in sigmas.tolist())}"
        )
    return sigmas


def kernel_radius(sigma: float) -> int:
    """scipy's radius for a sigma: int(truncate * sigma + 0.5); 0 for sigma 0."""
    return int(TRUNCATE * float(sigma) + 0.5)


def gaussian_weights(sigmas: Sequence[float] | float, radius: int | None = None) -> np.ndarray:
    """(S, 2 radius + 1) float32 kernels, one per sigma, each zero beyond its own scipy radius.

    `radius` (default: the largest sigma's) is the common half-width, so that a grid is one array. Computed in
    float64 as scipy does, then rounded once.
    """
    sigmas = check_sigmas(sigmas)
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


def correlate(signal: jax.Array, weights: np.ndarray) -> jax.Array:
    """(..., L, S) = sum_j weights[:, j] * signal[..., j:j + L] for signal (..., L + 2R), weights (S, 2R + 1).

    One convolution with the kernels as output features: on CPU it is a matrix product whose cost barely grows
    with the number of kernels, so a whole grid costs little more than its largest sigma.
    """
    batch = signal.shape[:-1]
    flat = signal.reshape((-1, signal.shape[-1], 1))
    out = jax.lax.conv_general_dilated(
        flat,
        jnp.asarray(np.asarray(weights, np.float32).T)[:, None, :],
        window_strides=(1,),
        padding="VALID",
        dimension_numbers=("NWC", "WIO", "NWC"),
        precision=jax.lax.Precision.HIGHEST,
    )  # (B, L, S)
    return out.reshape(batch + out.shape[1:])


def video_kernels(sigmas: Sequence[float], lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """(S, V, 2 r + 1) float32 kernels, one per sigma and video, with reflection folded in, and their half-width r.

    scipy's `reflect` extension of a video of length L has period 2 L, so the taps of a kernel longer than the
    video land on the same frames again and again: offset k reads what offset ((k + L) mod 2 L) - L reads. Adding
    every tap onto that offset gives a kernel of half-width L at most with the same result, so r is at most the
    longest video's length, however large sigma is (at sigma 250 scipy's radius is 1000 frames).
    """
    sigmas = check_sigmas(sigmas)
    lengths = np.maximum(np.asarray(lengths, np.int64), 1)  # an empty video's outputs are all padding anyway
    radius = max(kernel_radius(s) for s in sigmas)
    capped = int(min(radius, lengths.max(initial=1)))
    weights = gaussian_weights(sigmas, radius).astype(np.float64)  # (S, 2R + 1)
    offsets = np.arange(-radius, radius + 1)
    kernels = np.zeros((len(sigmas), len(lengths), 2 * capped + 1))
    for video, length in enumerate(lengths):
        folded = offsets if radius < length else np.mod(offsets + length, 2 * length) - length
        for row, weight in zip(kernels[:, video], weights):
            np.add.at(row, folded + capped, weight)
    return kernels.astype(np.float32), capped


def smooth(values: jax.Array, mask: np.ndarray, sigmas: Sequence[float]) -> jax.Array:
    """Smooths a padded batch with each sigma of `sigmas` (a few; the tuning grid goes through `correlate`).

    Memory is O(S V T C) for any sigma (`video_kernels`).

    Args:
      values: (V, T, C) per-frame values, row t of video v valid where `mask[v, t]`.
      mask: (V, T) bool, concrete (the kernels are folded per video length); each video's frames are a prefix
        of its row (what `pad_batch` makes).
      sigmas: the sigmas, each finite and >= 0.

    Returns:
      (S, V, T, C) float32, zeros on padding.
    """
    mask = np.asarray(mask, bool)
    kernels, radius = video_kernels(tuple(sigmas), mask.sum(axis=1))
    return _smooth(jnp.asarray(values), jnp.asarray(mask), jnp.asarray(kernels), radius)


@functools.partial(jax.jit, static_argnames=("radius",))
def _smooth(values, mask, kernels, radius):
    num_frames = values.shape[1]
    values = jnp.where(mask[..., None], values.astype(jnp.float32), 0.0)
    lengths = jnp.sum(mask, axis=1)
    positions = jnp.arange(-radius, num_frames + radius)[None, :]
    extended = jnp.take_along_axis(values, reflect_index(positions, lengths[:, None])[..., None], axis=1)
    # Time on the minor axis: each tap is a contiguous shifted slice that XLA vectorises.
    extended = jnp.transpose(extended, (0, 2, 1))  # (V, C, T + 2r)
    taps = kernels[:, :, None, :]  # (S, V, 1, 2r + 1)

    def add_tap(j, total):
        window = jax.lax.dynamic_slice_in_dim(extended, j, num_frames, axis=2)
        return total + jax.lax.dynamic_index_in_dim(taps, j, axis=3) * window[None]

    # A loop, not one unrolled sum of 2r + 1 slices: XLA's memory for that sum exploded (8 GB at r = 1000);
    # unrolling 8 taps keeps the speed of the fused sum for the usual small sigmas.
    total = jnp.zeros(kernels.shape[:2] + extended.shape[1:2] + (num_frames,), jnp.float32)
    total = jax.lax.fori_loop(0, 2 * radius + 1, add_tap, total, unroll=8)
    return jnp.where(mask[None, ..., None], jnp.transpose(total, (0, 1, 3, 2)), 0.0)


def gaussian_smooth(values: jax.Array, mask: np.ndarray, sigma: float) -> jax.Array:
    """(V, T, C) values smoothed with one sigma (0 returns them unchanged, padding zeroed)."""
    return smooth(values, mask, (float(sigma),))[0]
