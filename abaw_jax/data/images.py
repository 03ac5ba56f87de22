"""Deterministic decode + resize of a face crop: the evaluation / feature-extraction transform.

`decode_resize(encoded, image_size)` -> uint8 RGB [S, S, 3]: the whole crop resized to S x S with
OpenCV's bicubic filter (the interpolation the MAE pipeline's RandomResizedCrop uses; Aff-Wild2 crops are
square, so nothing is cropped or padded). It uses the MAE pipeline's decoder (`mae_pipeline.decode_rgb`):
a crop at least twice the output size is decoded at 1/2, 1/4 or 1/8 scale by libjpeg, which saves time and
stands in for the antialiasing bicubic downscaling lacks. Corrupt bytes raise
`face_shards.CorruptImageError`. Normalisation happens on device (`mae_pipeline.normalize_images`).
"""
from __future__ import annotations

import cv2
import numpy as np

from abaw_jax.data import mae_pipeline
from abaw_jax.data.face_shards import CorruptImageError


def decode_resize(encoded: bytes, *, image_size: int) -> np.ndarray:
    """Decodes an image and resizes all of it to uint8 [image_size, image_size, 3] (bicubic)."""
    height, width = mae_pipeline.encoded_image_shape(encoded)
    reduction = mae_pipeline.dct_reduction(height, width, image_size)
    pixels = mae_pipeline.decode_rgb(encoded, reduction)
    if reduction == 1 and pixels.shape[:2] != (height, width):
        raise CorruptImageError(f"header says {height}x{width}, pixels are {pixels.shape[:2]}")
    if pixels.shape[:2] == (image_size, image_size):
        return pixels
    return cv2.resize(pixels, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
