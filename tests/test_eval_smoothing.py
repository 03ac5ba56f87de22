"""Gaussian smoothing against scipy.ndimage.gaussian_filter1d(mode='reflect', truncate=4.0), per video of a batch."""

import subprocess
import sys
import time

import numpy as np
import psutil  # an orbax-checkpoint dependency
import pytest
from scipy import ndimage

from abaw_jax.eval import coverage, smoothing

SIGMAS = [0.0, 0.3, 1.0, 2.5, 7.0, 40.0]  # 40: the kernel is far longer than every video here


def _batch(seed=0, lengths=(5, 37, 1, 120, 2)):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(size=(n, 3)).astype(np.float32) for n in lengths]
    values, mask = coverage.pad_batch(arrays)
    return arrays, values, mask


def test_grid_matches_scipy_per_video_including_long_kernels():
    arrays, values, mask = _batch()
    out = np.asarray(smoothing.smooth(values, mask, tuple(SIGMAS)))
    assert out.shape == (len(SIGMAS),) + values.shape
    for s, sigma in enumerate(SIGMAS):
        for v, array in enumerate(arrays):
            expected = (
                array
                if sigma == 0
                else ndimage.gaussian_filter1d(array.astype(np.float64), sigma, axis=0, mode="reflect", truncate=4.0)
            )
            np.testing.assert_allclose(out[s, v, : len(array)], expected, atol=1e-6, rtol=0)
            assert np.all(out[s, v, len(array) :] == 0)


def test_padding_never_leaks_into_a_shorter_video():
    _, values, mask = _batch(1)
    noisy = np.where(mask[..., None], values, 1e6).astype(np.float32)
    weights = (1.5, 20.0)
    np.testing.assert_array_equal(
        np.asarray(smoothing.smooth(values, mask, weights)), np.asarray(smoothing.smooth(noisy, mask, weights))
    )


def test_scipy_docstring_vector_and_zero_sigma():
    x = np.array([[1.0, 2, 3, 4, 5]], np.float32)[..., None]
    mask = np.ones((1, 5), bool)
    np.testing.assert_allclose(
        np.asarray(smoothing.gaussian_smooth(x, mask, 1.0))[0, :, 0],
        [1.42704095, 2.06782203, 3, 3.93217797, 4.57295905],
        atol=1e-6,
    )
    np.testing.assert_array_equal(np.asarray(smoothing.gaussian_smooth(x, mask, 0.0)), x)


def test_weights_follow_scipy_radius_and_reject_bad_sigmas():
    weights = smoothing.gaussian_weights([0.0, 1.0, 2.6])
    assert weights.shape == (3, 2 * smoothing.kernel_radius(2.6) + 1)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    centre = weights.shape[1] // 2
    assert np.count_nonzero(weights[1]) == 2 * 4 + 1 and weights[0, centre] == 1.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        smoothing.gaussian_weights([1.0, -0.5])


def test_grid_convolution_on_the_stream_layout_matches_scipy():
    """The tuning's path: videos end to end with reflected halos, the grid as output features of one convolution."""
    arrays, values, mask = _batch(2)
    halo = max(smoothing.kernel_radius(s) for s in SIGMAS)
    source, real = smoothing.stream_layout(mask.sum(1), values.shape[1], halo, chunk=16)
    assert (len(source) - 2 * halo) % 16 == 0 and real.sum() == mask.sum()
    stream = values.reshape(-1, 3)[source].T  # (C, L)
    out = np.asarray(smoothing.correlate(stream, smoothing.gaussian_weights(SIGMAS, halo)))  # (C, L - 2R, S)
    frames = out[:, real[halo : len(real) - halo]]  # the videos' own frames, in order
    start = 0
    for array in arrays:
        for s, sigma in enumerate(SIGMAS):
            expected = (
                array
                if sigma == 0
                else ndimage.gaussian_filter1d(array.astype(np.float64), sigma, axis=0, mode="reflect", truncate=4.0)
            )
            np.testing.assert_allclose(frames[:, start : start + len(array), s].T, expected, atol=1e-6, rtol=0)
        start += len(array)


# Runs in a child process so that its peak memory is its own; the parent kills it past the bound, so the old code
# (which grew past 8 GB at sigma 250) fails the test instead of swapping the machine.
_LARGE_SIGMA_CHILD = """
import numpy as np
from scipy import ndimage
from abaw_jax.eval import coverage, smoothing
rng = np.random.default_rng(0)
arrays = [rng.uniform(size=(n, 12)).astype(np.float32) for n in (3, 17, 40, 64, 90, 120, 150, 200, 250, 300)]
values, mask = coverage.pad_batch(arrays)
for sigma in (250.0, 300.0):
    out = np.asarray(smoothing.gaussian_smooth(values, mask, sigma))
    for v, array in enumerate(arrays):
        expected = ndimage.gaussian_filter1d(array.astype(np.float64), sigma, axis=0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(out[v, :len(array)], expected, atol=1e-6, rtol=0)
"""
# About 270 MB measured; the old code passed 8 GB. The parent samples the child's RSS: the child's own ru_maxrss
# is no measure, since Linux keeps the parent's high-water mark across fork and exec.
MEMORY_BOUND_MB = 1500


def test_sigmas_far_longer_than_the_videos_match_scipy_in_bounded_memory():
    """Sigma 250 / 300 on ten short videos: scipy reflects again and again; memory stays that of a small batch."""
    child = subprocess.Popen(
        [sys.executable, "-c", _LARGE_SIGMA_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process, peak_mb = psutil.Process(child.pid), 0.0
    while child.poll() is None:
        try:
            peak_mb = max(peak_mb, process.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            break
        if peak_mb > MEMORY_BOUND_MB:
            child.kill()
        time.sleep(0.05)
    _, stderr = child.communicate()
    assert peak_mb <= MEMORY_BOUND_MB, f"the smoothing child grew past {MEMORY_BOUND_MB} MB"
    assert child.returncode == 0, stderr


def test_kernels_are_folded_to_the_longest_video():
    kernels, radius = smoothing.video_kernels((300.0,), np.array([3, 40, 0]))
    assert radius == 40 and kernels.shape == (1, 3, 81)
    np.testing.assert_allclose(kernels.sum(-1), 1.0, rtol=1e-6)
    assert np.count_nonzero(kernels[0, 0]) == 2 * 3  # a 3-frame video: offsets -3..2, one period of its reflection


def test_negative_sigma_is_named():
    x = np.ones((1, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"sigma.*got sigma -1\.0"):
        smoothing.gaussian_smooth(x, np.ones((1, 4), bool), -1.0)
