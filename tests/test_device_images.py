"""The device-side resize against OpenCV, PyTorch and PIL, features against the host path, crop boxes against
torchvision's RandomResizedCrop."""

import pathlib

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from abaw_jax.data import device_images, mae_pipeline
from abaw_jax.models import params_io
from abaw_jax.models.vit import ViT, ViTConfig
from abaw_jax.torch_compat import import_torchvision

MEAN = np.asarray(mae_pipeline.IMAGENET_MEAN) * 255
STD = np.asarray(mae_pipeline.IMAGENET_STD) * 255


def _face_crops(root: pathlib.Path, count: int) -> list[bytes]:
    paths = sorted((root / "cropped_aligned").rglob("*.jpg"))
    return [p.read_bytes() for p in paths[:: max(1, len(paths) // count)][:count]]


def _device_pixels(pixels: np.ndarray, boxes, size: int, flips=None) -> np.ndarray:
    """The device resize as uint8-grid pixel values (prepare_images undone: x * std + mean)."""
    x = device_images.prepare_images(
        pixels, np.asarray(boxes, np.float32), None if flips is None else np.asarray(flips), image_size=size
    )
    return np.rint(np.asarray(x, np.float64) * STD + MEAN)


def _torch_resize(crop: np.ndarray, size: int, antialias: bool) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].double()
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    return y.clamp(0, 255).round()[0].permute(1, 2, 0).numpy()


def _random_crops(count: int, size: int = 112) -> np.ndarray:
    # Blurred noise: image-like local correlation, with edges strong enough to make the cubic overshoot.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (count, size, size, 3), np.uint8)
    return np.stack([cv2.GaussianBlur(n, (5, 5), 1.0) for n in noise])


@pytest.mark.parametrize("size", [224, 160, 112])
def test_upscaling_is_opencv_and_torch_bicubic(size):
    crops = _random_crops(4)
    ours = _device_pixels(crops, [[0, 0, 112, 112]] * 4, size)
    for crop, mine in zip(crops, ours):
        # Exact in float, then rounded: ties and float error may move a value by one level.
        assert np.abs(mine - _torch_resize(crop, size, antialias=False)).max() <= 1
        opencv = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)
        assert np.abs(mine - opencv).max() <= 1  # OpenCV's 11-bit fixed-point weights
        assert np.mean(mine != opencv) < 0.01


@pytest.mark.parametrize("size", [64, 32])
def test_downscaling_is_pil_and_torch_antialiased_bicubic(size):
    crops = _random_crops(4)
    ours = _device_pixels(crops, [[0, 0, 112, 112]] * 4, size)
    for crop, mine in zip(crops, ours):
        assert np.abs(mine - _torch_resize(crop, size, antialias=True)).max() <= 1
        pil = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), np.float64)
        assert np.abs(mine - pil).max() <= 1  # PIL's 22-bit fixed-point weights


def test_boxes_resize_only_their_pixels_and_flip():
    crops = _random_crops(3)
    boxes = [[10, 20, 50, 70], [0, 31, 112, 81], [40, 5, 72, 100]]
    flips = [True, False, True]
    up = _device_pixels(crops, boxes, 224, flips)
    down = _device_pixels(crops, boxes, 24, flips)
    for crop, (top, left, h, w), flip, mine_up, mine_down in zip(crops, boxes, flips, up, down):
        cut = crop[top : top + h, left : left + w]
        cut = cut[:, ::-1] if flip else cut
        assert np.abs(mine_up - _torch_resize(cut, 224, antialias=False)).max() <= 1
        pil = np.asarray(Image.fromarray(np.ascontiguousarray(cut)).resize((24, 24), Image.BICUBIC), np.float64)
        assert np.abs(mine_down - pil).max() <= 1


def test_a_smaller_crop_is_resized_alone_and_a_larger_one_shrunk_to_the_buffer(synthetic_affwild2):
    jpeg = _face_crops(synthetic_affwild2, 1)[0]
    image = mae_pipeline.decode_rgb(jpeg)
    pixels, boxes = device_images.empty_batch(2, 160)
    pixels[:] = 77  # whatever lies outside a box must not leak in
    boxes[0] = device_images.decode_stored(jpeg, pixels[0])
    np.testing.assert_array_equal(boxes[0], [0, 0, 112, 112])
    np.testing.assert_array_equal(pixels[0, :112, :112], image)
    ours = _device_pixels(pixels[:1], boxes[:1], 224)[0]
    assert np.abs(ours - _torch_resize(image, 224, antialias=False)).max() <= 1

    wide = cv2.imencode(".jpg", cv2.resize(image, (224, 168))[:, :, ::-1])[1].tobytes()
    small = np.zeros((96, 96, 3), np.uint8)
    np.testing.assert_array_equal(device_images.decode_stored(wide, small), [0, 0, 72, 96])
    expected = cv2.resize(mae_pipeline.decode_rgb(wide), (96, 72), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small[:72], expected)


@pytest.mark.parametrize(
    ("image_size", "patch", "tolerance"),
    # 112 -> 224 (Aff-Wild2 at the paper's input): the same bicubic as the host path (measured: identical pixels).
    # 112 -> 64 (the tiny presets): antialiased now, un-antialiased cubic on the host before (measured: 0.017).
    [(224, 16, 1e-5), (64, 8, 0.05)],
)
def test_features_match_the_opencv_host_path(synthetic_affwild2, image_size, patch, tolerance):
    jpegs = _face_crops(synthetic_affwild2, 8)
    config = ViTConfig(width=64, depth=2, num_heads=2, mlp_dim=128, image_size=image_size, patch_size=patch, pool="gap")
    model = ViT(config)
    params = params_io.init_params(config, seed=0)
    features = jax.jit(lambda x: model.apply({"params": params}, x, method=ViT.features))

    host = np.stack([mae_pipeline.decode_resize(j, image_size=image_size) for j in jpegs])
    before = np.asarray(features(mae_pipeline.normalize_images(jnp.asarray(host))))
    pixels, boxes = device_images.empty_batch(len(jpegs), 112)
    for row, jpeg in enumerate(jpegs):
        boxes[row] = device_images.decode_stored(jpeg, pixels[row])
    after = np.asarray(features(device_images.prepare_images(pixels, boxes, image_size=image_size)))
    assert np.abs(after - before).max() <= tolerance, np.abs(after - before).max()


def test_crop_boxes_follow_torchvision_random_resized_crop():
    transforms = import_torchvision().transforms
    count, side, scale, ratio = 4000, 112, (0.2, 1.0), (3 / 4, 4 / 3)
    rng = np.random.default_rng(0)
    ours = np.array(
        [device_images.sample_crop(np.array([0, 0, side, side]), rng, scale, ratio, 0.5)[0] for _ in range(count)]
    )
    torch.manual_seed(0)
    image = torch.zeros(3, side, side)
    theirs = np.array([transforms.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(count)])
    # Same algorithm, different random streams: every marginal must agree in distribution.
    for name, a, b in (
        ("area", ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]),
        ("aspect", ours[:, 3] / ours[:, 2], theirs[:, 3] / theirs[:, 2]),
        ("top", ours[:, 0], theirs[:, 0]),
        ("left", ours[:, 1], theirs[:, 1]),
    ):
        assert stats.ks_2samp(a, b).pvalue > 1e-3, name
    assert (ours[:, :2] >= 0).all() and (ours[:, :2] + ours[:, 2:] <= side).all()
