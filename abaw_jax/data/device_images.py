"""Face crops at their stored size on the host, resize and normalisation on the device, in one jitted function.

    pixels, boxes = device_images.empty_batch(len(jpegs), buffer_size=112)
    for row, data in enumerate(jpegs):
        boxes[row] = device_images.decode_stored(data, pixels[row])             # host: decode only
    x = device_images.prepare_images(pixels, boxes, image_size=224)             # device: float32 [b, 224, 224, 3]

The host decodes each JPEG at its stored size into the top-left corner of a square uint8 buffer of
`buffer_size` px (zeros elsewhere) and sends the buffer with the crop's box (top, left, height, width) in
buffer pixels; `prepare_images` resizes every box to the model's input size, optionally flips it, rounds to
the uint8 grid and normalises by the ImageNet mean/std. Feature extraction, fine-tuning (its evaluation
transform and, with a box drawn per record and a flip, its RandomResizedCrop augmentation) and `predict`
all call it, so features are computed exactly as fine-tuning evaluated them, and batches travel as uint8 at
the stored size (112 px for Aff-Wild2: a quarter of the bytes of 224 px).

Crop sizes: Aff-Wild2's crops are all 112 x 112, and a predictor bundle's crops all have its crop size. Callers
take the buffer size from the data (`stored_size`: the first crop's larger side); a smaller crop sits in the
corner with its own box, so it is resized exactly; a larger one is shrunk on the host to fit (OpenCV
INTER_AREA, aspect kept), the only case where the host resizes.

Interpolation, per axis (the two axes are separable and each has its own scale):
- upscaling or same size: bicubic with Keys a = -0.75 and border pixels repeated, sampled at the half-pixel
  centres. This is OpenCV's INTER_CUBIC (the host resize these jobs used before, `mae_pipeline.decode_resize`,
  which MAE pretraining keeps) and `torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
  antialias=False)`: for 112 px crops going to 224 px the model sees the very pixels it saw before.
- downscaling: antialiased bicubic as PIL's `Image.resize(BICUBIC)` (and torchvision on PIL images, and
  `interpolate(..., antialias=True)`) computes it: Keys a = -0.5 stretched by the scale, truncated at the crop
  edge and renormalised. The host path approximated this with libjpeg's DCT down-scaling followed by an
  un-antialiased cubic.
Only pixels inside the box contribute (a crop is resized as if cut out first, as torchvision's `resized_crop`
does). The result is clipped to [0, 255] and rounded, as every uint8 resize is, before normalisation.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from abaw_jax.data import mae_pipeline
from abaw_jax.media.jpeg import CorruptImageError

_UPSCALE_A = -0.75  # OpenCV / PyTorch bicubic
_DOWNSCALE_A = -0.5  # PIL's antialiased bicubic
_PROBE = 16  # crops `stored_size` tries before giving up (the first ones may be corrupt)


def stored_size(paths: Iterable[str | os.PathLike]) -> int:
    """The larger side (header only) of the first readable image among the first `_PROBE` of `paths`: the buffer
    size for crops stored like it. Raises CorruptImageError when none of them reads."""
    errors = []
    for path in itertools.islice(paths, _PROBE):
        try:
            with Image.open(path) as image:
                return max(image.size)
        except (OSError, SyntaxError, ValueError) as e:
            errors.append(f"{path}: {e}")
    raise CorruptImageError(f"no readable image to take the crops' stored size from: {errors or 'no paths'}")


def decode_stored(encoded: bytes, buffer: np.ndarray) -> np.ndarray:
    """Decodes a JPEG into the top-left corner of `buffer` (uint8 [B, B, 3], the rest left as it is) and returns
    the crop's float32 [4] box; a crop with a side above B is shrunk to fit first (module docstring)."""
    pixels = mae_pipeline.decode_rgb(encoded)
    height, width = pixels.shape[:2]
    size = buffer.shape[0]
    if max(height, width) > size:
        factor = size / max(height, width)
        height, width = max(1, round(height * factor)), max(1, round(width * factor))
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    buffer[:height, :width] = pixels
    return np.array([0, 0, height, width], np.float32)


def empty_batch(batch: int, buffer_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(zero uint8 [batch, B, B, 3] buffers, float32 [batch, 4] boxes of the whole buffer) for `decode_stored`
    to fill row by row; rows left as they are (padding, corrupt crops) resize to a finite constant image."""
    pixels = np.zeros((batch, buffer_size, buffer_size, 3), np.uint8)
    boxes = np.tile(np.array([0, 0, buffer_size, buffer_size], np.float32), (batch, 1))
    return pixels, boxes


def sample_crop(
    box: np.ndarray, rng: np.random.Generator, scale: tuple[float, float], ratio: tuple[float, float], flip_prob: float
) -> tuple[np.ndarray, bool]:
    """(RandomResizedCrop box inside the crop `box`, flip) drawn as the host augmentation draws them
    (`mae_pipeline.random_resized_crop_box`, then one uniform for the flip: the same draws per record)."""
    top, left, height, width = (int(v) for v in box)
    y, x, h, w = mae_pipeline.random_resized_crop_box(height, width, rng, scale, ratio)
    flip = bool(rng.random() < flip_prob)
    return np.array([top + y, left + x, h, w], np.float32), flip


def _keys_cubic(x: jax.Array, a: float) -> jax.Array:
    x = jnp.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return jnp.where(x <= 1, near, jnp.where(x < 2, far, 0.0))


def axis_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """float32 [out_size, in_size]: output pixel i of the span [start, start + length) of an axis of `in_size`
    pixels is row i times that axis (interpolation rules in the module docstring)."""
    start, length = jnp.asarray(start, jnp.float32), jnp.asarray(length, jnp.float32)
    scale = length / out_size
    centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # pixel i spans [i, i + 1)
    pixel = jnp.arange(in_size, dtype=jnp.float32)
    # Upscaling: four taps around the source position, clamped into the span (border pixels repeated).
    source = centre - 0.5
    base = jnp.floor(source)
    up = jnp.zeros((out_size, in_size), jnp.float32)
    for offset in (-1, 0, 1, 2):
        tap = base + offset
        index = jnp.clip(tap, start, start + length - 1)
        up = up + _keys_cubic(source - tap, _UPSCALE_A)[:, None] * (index[:, None] == pixel[None, :])
    # Downscaling: the kernel stretched by the scale over the pixels inside the span, renormalised.
    inside = (pixel >= start) & (pixel < start + length)
    distance = (pixel[None, :] + 0.5 - centre[:, None]) / jnp.maximum(scale, 1.0)
    down = jnp.where(inside[None, :], _keys_cubic(distance, _DOWNSCALE_A), 0.0)
    down = down / jnp.maximum(down.sum(axis=1, keepdims=True), 1e-12)
    return jnp.where(scale > 1, down, up)


def _resize_one(pixels: jax.Array, box: jax.Array, flip: jax.Array, image_size: int) -> jax.Array:
    rows = axis_weights(box[0], box[2], pixels.shape[0], image_size)
    cols = axis_weights(box[1], box[3], pixels.shape[1], image_size)
    cols = jnp.where(flip, cols[::-1], cols)
    highest = jax.lax.Precision.HIGHEST  # pixel values up to 255 must keep more than bf16/TF32 digits
    out = jnp.einsum("sh,hwc->swc", rows, pixels.astype(jnp.float32), precision=highest)
    return jnp.einsum("tw,swc->stc", cols, out, precision=highest)


@functools.partial(jax.jit, static_argnames=("image_size", "dtype"))
def prepare_images(
    pixels: jax.Array,
    boxes: jax.Array,
    flips: jax.Array | None = None,
    *,
    image_size: int,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """uint8 [b, H, W, 3] buffers, float32 [b, 4] boxes (top, left, height, width), optional bool [b] flips ->
    the model's input [b, image_size, image_size, 3] in `dtype`: each box resized, flipped where asked, rounded
    to the uint8 grid and normalised (`mae_pipeline.normalize_images`)."""
    if flips is None:
        flips = jnp.zeros(pixels.shape[:1], bool)
    resized = jax.vmap(functools.partial(_resize_one, image_size=image_size))(pixels, boxes, flips)
    return mae_pipeline.normalize_images(jnp.round(jnp.clip(resized, 0.0, 255.0)), dtype)
