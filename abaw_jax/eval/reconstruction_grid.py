"""PNG grids of MAE reconstructions: one row per face, columns original / masked / reconstruction."""

from __future__ import annotations

import numpy as np
from PIL import Image

from abaw_jax.data.mae_pipeline import IMAGENET_MEAN, IMAGENET_STD
from abaw_jax.models.mae import patchify, unpatchify


def reconstruction_grid(
    images: np.ndarray, pred: np.ndarray, mask: np.ndarray, patch_size: int, norm_pix_loss: bool
) -> np.ndarray:
    """uint8 (rows*H, 3*W, 3) grid from normalised images (B,H,W,3), predictions (B,N,D), mask (B,N).

    With `norm_pix_loss` the model predicts each patch normalised by its own statistics, so the
    reconstruction borrows the original patch's mean and std to come back to pixel space (the MAE
    visualisation convention). Visible patches are shown from the original.
    """
    images = np.asarray(images, np.float32)
    target = np.asarray(patchify(images, patch_size))
    pred = np.asarray(pred, np.float32)
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        std = np.sqrt(target.var(axis=-1, keepdims=True, ddof=1) + 1e-6)
        pred = pred * std + mean
    mask = np.asarray(mask, np.float32)[..., None]
    masked = np.asarray(unpatchify(target * (1 - mask), patch_size))
    recon = np.asarray(unpatchify(target * (1 - mask) + pred * mask, patch_size))
    rows = [np.concatenate([images[i], masked[i], recon[i]], axis=1) for i in range(images.shape[0])]
    grid = np.concatenate(rows, axis=0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def save_png(grid: np.ndarray, path: str) -> None:
    Image.fromarray(grid).save(path)
