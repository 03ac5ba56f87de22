r"""Decode + augment throughput of the MAE input pipeline against the PyTorch MAE input path.

  python -m benchmarks.data_pipeline [--face_sizes=112,224,448 --num_images=256 --image_size=224]

Generates JPEG faces (crops of scikit-image's astronaut, quality 90) with the given side lengths,
then measures img/s per core as images per CPU second of this process (OpenCV and torch limited to
one thread, so the figure holds on a busy machine too):
  ours      : `mae_pipeline.decode_random_resized_crop` (OpenCV decode with DCT scaling, bicubic
              RandomResizedCrop, flip) -> uint8; normalisation happens later on the accelerator;
  ours+norm : the same plus ImageNet normalisation to float32 on the host, for a like-for-like row;
  torch     : the reference MAE path, PIL decode + torchvision RandomResizedCrop(224, scale=(0.2, 1),
              bicubic) + RandomHorizontalFlip + ToTensor + Normalize.
and prints img/s per core and the ratio to torch per face size. It then builds face shards from the
faces of the largest size and measures the end-to-end grain DataLoader (ArrayRecord reads, decode,
augment, batching, transfer from the workers) with each of --worker_counts workers, in img/s and
img/s per worker (wall clock, so it reflects what else runs on the machine). The goal is >= 400 img/s
per core at 224x224.
"""

import io
import pathlib
import tempfile
import time
from collections.abc import Callable

import cv2
import numpy as np
from absl import app, flags
from PIL import Image
from skimage import data as skdata

from abaw_jax.data import face_shards, mae_pipeline
from abaw_jax.torch_compat import import_torchvision

_FACE_SIZES = flags.DEFINE_list("face_sizes", ["112", "224", "448"], "Side lengths of the generated JPEG faces.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "Faces per size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output side of RandomResizedCrop.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "Minimum CPU seconds per measurement.")
_WORKER_COUNTS = flags.DEFINE_list("worker_counts", ["1", "2"], "grain worker counts to time.")
_LOADER_BATCH_SIZE = flags.DEFINE_integer("loader_batch_size", 64, "Batch size of the loader.")
_LOADER_BATCHES = flags.DEFINE_integer("loader_batches", 40, "Timed loader batches (after 5).")


def make_faces(side: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` JPEG faces of side `side`: jittered crops around the astronaut's face, resized."""
    astronaut = skdata.astronaut()
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        top, left = rng.integers(0, 60, size=2)
        extent = int(rng.integers(180, 260))
        crop = astronaut[top : top + extent, 100 + left : 100 + left + extent]
        face = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="JPEG", quality=90)
        faces.append(buffer.getvalue())
    return faces


def images_per_cpu_second(fn: Callable[[bytes], object], faces: list[bytes], min_seconds: float) -> float:
    """Calls fn on the faces round-robin for at least min_seconds of CPU time after a warm-up pass.

    With every library limited to one thread, this process's CPU time is one core's time, so the
    figure is img/s per core even when other jobs share the machine.
    """
    for face in faces:
        fn(face)
    count, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < min_seconds:
        for face in faces:
            fn(face)
        count += len(faces)
    return count / elapsed


def per_core_rows(
    faces_by_size: dict[int, list[bytes]], image_size: int, min_seconds: float
) -> list[tuple[int, float, float, float]]:
    """(face side, ours, ours+norm, torch) in img/s on one core for each face size."""
    import torch  # pylint: disable=g-import-not-at-top

    import_torchvision()
    from torchvision import transforms  # pylint: disable=g-import-not-at-top

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    reference = transforms.Compose(
        [
            transforms.RandomResizedCrop(
                image_size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mae_pipeline.IMAGENET_MEAN, mae_pipeline.IMAGENET_STD),
        ]
    )
    mean = np.asarray(mae_pipeline.IMAGENET_MEAN, np.float32) * 255
    inv_std = 1 / (np.asarray(mae_pipeline.IMAGENET_STD, np.float32) * 255)
    rng = np.random.default_rng(0)

    def ours(face: bytes) -> np.ndarray:
        return mae_pipeline.decode_random_resized_crop(face, rng, image_size=image_size)

    def ours_normalised(face: bytes) -> np.ndarray:
        return (ours(face).astype(np.float32) - mean) * inv_std

    def torch_reference(face: bytes):
        return reference(Image.open(io.BytesIO(face)).convert("RGB"))

    return [
        (
            side,
            images_per_cpu_second(ours, faces, min_seconds),
            images_per_cpu_second(ours_normalised, faces, min_seconds),
            images_per_cpu_second(torch_reference, faces, min_seconds),
        )
        for side, faces in faces_by_size.items()
    ]


def loader_images_per_second(source, worker_count: int, batch_size: int, image_size: int, batches: int) -> float:
    """Steady-state img/s of the grain DataLoader (5 warm-up batches excluded)."""
    loader = mae_pipeline.make_mae_loader(
        source,
        global_batch_size=batch_size,
        image_size=image_size,
        seed=0,
        num_epochs=None,
        worker_count=worker_count,
        worker_buffer_size=4,
    )
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    sides = [int(s) for s in _FACE_SIZES.value]
    faces_by_size = {side: make_faces(side, _NUM_IMAGES.value) for side in sides}
    print(
        f"Decode + augment to {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}, one core, "
        f"{_NUM_IMAGES.value} JPEG faces per size (img/s per core):"
    )
    print(f"{'face side':>9} {'JPEG KiB':>8} {'ours':>8} {'ours+norm':>9} {'torch':>8} {'ours/torch':>10}")
    for side, ours, ours_norm, torch_rate in per_core_rows(faces_by_size, _IMAGE_SIZE.value, _MIN_SECONDS.value):
        kib = np.mean([len(f) for f in faces_by_size[side]]) / 1024
        print(f"{side:>9} {kib:>8.1f} {ours:>8.0f} {ours_norm:>9.0f} {torch_rate:>8.0f} {ours / torch_rate:>10.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "faces"
        root.mkdir()
        for i, face in enumerate(faces_by_size[max(sides)]):
            (root / f"{i:05d}.jpg").write_bytes(face)
        face_shards.build_face_shards(
            {"bench": root},
            pathlib.Path(tmp) / "tfds",
            quality_filter=face_shards.QualityFilter(min_face_size=1, min_blur_var=0.0),
        )
        source = face_shards.load_face_source(pathlib.Path(tmp) / "tfds")
        print(
            f"\ngrain DataLoader end to end over face shards ({max(sides)}px faces, batch {_LOADER_BATCH_SIZE.value}):"
        )
        print(f"{'workers':>7} {'img/s':>8} {'img/s/worker':>12}")
        for worker_count in (int(w) for w in _WORKER_COUNTS.value):
            rate = loader_images_per_second(
                source, worker_count, _LOADER_BATCH_SIZE.value, _IMAGE_SIZE.value, _LOADER_BATCHES.value
            )
            print(f"{worker_count:>7} {rate:>8.0f} {rate / max(worker_count, 1):>12.0f}")


if __name__ == "__main__":
    app.run(main)
