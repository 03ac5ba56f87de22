"""The grain input pipeline for MAE pretraining (and the shared image pieces of the fine-tuning pipeline):
JPEG faces -> augmented uint8 batches.

    source = face_shards.load_face_source(data_dir)
    loader = make_mae_loader(source, global_batch_size=4096, image_size=224, seed=0,
                             num_epochs=None, worker_count=16)
    it = iter(loader)                          # grain.DataLoaderIterator
    batch = next(it)                           # {"image": uint8 [batch // shard_count, 224, 224, 3]}
    images = normalize_images(batch["image"])  # on device, inside the jitted step

Host side, per record: decode the JPEG, RandomResizedCrop (scale 0.2-1.0, ratio 3/4-4/3, bicubic, the
box drawn exactly as torchvision's `RandomResizedCrop.get_params` draws it) and a horizontal flip with
p=0.5. When the crop is at least twice the output size, the JPEG is decoded at 1/2, 1/4 or 1/8 scale
(libjpeg DCT scaling), which both saves time and stands in for the antialiasing that OpenCV's cubic
resize lacks. The randomness comes from the per-record generator grain derives from (seed, global
record index), and the global index advances across epochs, so crops differ per epoch but a restored
iterator reproduces them exactly. Normalisation by the ImageNet mean/std happens on device
(`normalize_images`): uint8 moves 4x fewer bytes host->device than float32.

Sharding: `grain.sharding.ShardByJaxProcess(drop_remainder=True)` by default. All processes share one
seeded global order of the records and process p reads the p-th contiguous slice of every global batch
(`ProcessContiguousSampler`), global_batch_size // process_count images; the assembled global batch t is
exactly batch t of a single-process run, so the loss trajectory does not depend on the number of hosts.
Corrupt records can make the processes' batch counts differ at the end of a finite
run, so multi-process training should use num_epochs=None and stop after a number of steps.

Corrupt records (bytes that do not decode, or a JPEG that `media.jpeg.check_jpeg` rejects: truncated, even
with an end-of-image marker appended) are skipped and never batched. Each skip is logged as a warning with the
record id, from whichever process decoded it (grain workers write to the parent's stderr). With
`skipped_records_dir` set, every skip also appends the id to `<dir>/skipped_records.<pid>.txt`, which
`read_skipped_records(dir)` collects
across all worker processes; after a restore, records decoded between the checkpoint and the
interruption are decoded and logged again.

Checkpointing: `it.get_state()` / `it.set_state(state)` (JSON bytes) restore exactly, also with
worker processes (the restoring loader must have the same worker_count). With orbax, save the iterator
next to the model state through the handler that grain registers:

    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it)))
    mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(it)))

The restore sets the state of `it` in place (one JSON file per process).

Worker processes watch their parent and exit when it is gone, so a training process killed outright
(SIGKILL, the OOM killer) does not leave them running; on a normal exit Python stops them itself.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import io
import multiprocessing
import os
import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from grain.multiprocessing import SharedMemoryArray
from PIL import Image

from abaw_jax.media.jpeg import CorruptImageError, check_jpeg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SKIPPED_FILE_GLOB = "skipped_records.*.txt"
# cv2.imdecode flag per DCT down-scaling factor; only the full-size flag returns RGB directly. EXIF
# orientation is ignored, as PIL (the header read here, and torchvision's loader) ignores it.
_IMDECODE_FLAGS = {
    1: cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Draws (top, left, crop_height, crop_width) the way torchvision's RandomResizedCrop does.

    Up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio (width / height);
    if none fits inside the image, the largest centred crop whose aspect ratio lies in `ratio`.
    """
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_width = int(round(np.sqrt(target_area * aspect)))
        crop_height = int(round(np.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width, crop_height = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_width, crop_height = int(round(height * max(ratio))), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def encoded_image_shape(encoded: bytes) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            width, height = image.size
    except Image.UnidentifiedImageError as e:
        raise CorruptImageError("not an image format PIL recognises") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"unreadable image header: {e}") from e
    return height, width


def decode_rgb(encoded: bytes, reduction: int = 1) -> np.ndarray:
    """Decodes to uint8 RGB [H, W, 3], optionally DCT-downscaled by `reduction` in (1, 2, 4, 8)."""
    check_jpeg(encoded)  # OpenCV would decode a cut-short JPEG with a grey band where its data ends
    pixels = cv2.imdecode(np.frombuffer(encoded, np.uint8), _IMDECODE_FLAGS[reduction])
    if pixels is None:
        raise CorruptImageError("OpenCV could not decode the bytes")
    if reduction > 1:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels


def dct_reduction(crop_height: int, crop_width: int, image_size: int) -> int:
    """The largest factor in (1, 2, 4, 8) that keeps the reduced crop at least `image_size` per side."""
    reduction = 1
    while reduction < 8 and min(crop_height, crop_width) >= 2 * reduction * image_size:
        reduction *= 2
    return reduction


def decode_random_resized_crop(
    encoded: bytes,
    rng: np.random.Generator,
    *,
    image_size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
) -> np.ndarray:
    """Decode + RandomResizedCrop (bicubic) + horizontal flip of one image -> uint8 [S, S, 3]."""
    height, width = encoded_image_shape(encoded)
    box = random_resized_crop_box(height, width, rng, scale, ratio)
    flip = rng.random() < flip_prob
    resized = decode_crop_resize(encoded, box, (height, width), image_size)
    return np.ascontiguousarray(resized[:, ::-1]) if flip else resized


def decode_resize(encoded: bytes, *, image_size: int) -> np.ndarray:
    """Decode + deterministic bicubic resize of the whole image -> uint8 [S, S, 3] (evaluation)."""
    height, width = encoded_image_shape(encoded)
    return decode_crop_resize(encoded, (0, 0, height, width), (height, width), image_size)


def decode_crop_resize(
    encoded: bytes, box: tuple[int, int, int, int], shape: tuple[int, int], image_size: int
) -> np.ndarray:
    """Decodes the (top, left, height, width) `box` of an image of header `shape` and resizes it to S x S
    (bicubic), DCT-downscaling the decode when the box is at least twice the output size."""
    height, width = shape
    top, left, crop_height, crop_width = box
    reduction = dct_reduction(crop_height, crop_width, image_size)
    pixels = decode_rgb(encoded, reduction)
    if reduction == 1 and pixels.shape[:2] != (height, width):
        raise CorruptImageError(f"header says {height}x{width}, pixels are {pixels.shape[:2]}")
    # libjpeg rounds reduced sizes up; map the box to the reduced grid, covering at least one pixel.
    y0, x0 = top // reduction, left // reduction
    y1 = max(y0 + 1, min(pixels.shape[0], -(-(top + crop_height) // reduction)))
    x1 = max(x0 + 1, min(pixels.shape[1], -(-(left + crop_width) // reduction)))
    return cv2.resize(pixels[y0:y1, x0:x1], (image_size, image_size), interpolation=cv2.INTER_CUBIC)


@dataclasses.dataclass(frozen=True)
class CropFlipAugment(grain.transforms.RandomMap):
    """Record {"image": bytes, "id": ...} -> {"image": uint8 [S, S, 3]}, or None if the image is corrupt."""

    image_size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    skipped_records_dir: str | None = None

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
        use_one_opencv_thread()
        exit_with_parent()
        try:
            image = decode_random_resized_crop(
                element["image"],
                rng,
                image_size=self.image_size,
                scale=self.scale,
                ratio=self.ratio,
                flip_prob=self.flip_prob,
            )
        except CorruptImageError as e:
            log_skipped_record(self.skipped_records_dir, record_id(element), str(e))
            return None
        return {"image": image}


def log_skipped_record(skipped_records_dir: str | None, record: str, reason: str) -> None:
    """Logs a corrupt record and, with `skipped_records_dir`, appends its id there (see the module docstring)."""
    logging.warning("Skipping corrupt record %s: %s", record, reason)
    if skipped_records_dir is not None:
        path = pathlib.Path(skipped_records_dir) / f"skipped_records.{os.getpid()}.txt"
        with path.open("a", encoding="utf-8") as f:
            f.write(record + "\n")


class DropSkipped(grain.transforms.Filter):
    """Drops the None that CropFlipAugment returns for a corrupt record."""

    def filter(self, element: dict[str, Any] | None) -> bool:
        return element is not None


class ProcessContiguousSampler:
    """Hands each process a contiguous slice of every global batch of one seeded global order.

    grain's DataLoader asks process p (of P) for sampler positions k = i * P + p for its i-th record.
    This maps that record to position (t * P + p) * b + j of the wrapped global order, where b is the
    per-process batch and t, j = divmod(i, b). Process p's batch t is then rows p*b .. (p+1)*b - 1 of
    the single-process batch t, records, per-record augmentation and order alike, so the assembled
    global batch (and the loss trajectory) does not depend on the number of processes.
    """

    def __init__(self, sampler: grain.samplers.IndexSampler, *, local_batch_size: int, shard_count: int):
        self._sampler = sampler
        self._local = local_batch_size
        self._count = shard_count
        global_batch = local_batch_size * shard_count
        # Only whole global batches: a partial last one is dropped anyway, and reading it would index
        # past the end of a finite order.
        self._length = len(sampler) // global_batch * global_batch

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        # grain compares sampler reprs when restoring an iterator: a resumed run must read the same layout.
        return f"ProcessContiguousSampler({self._sampler!r}, local_batch_size={self._local}, shard_count={self._count})"

    def __getitem__(self, position: int):
        if not 0 <= position < self._length:
            raise IndexError(position)
        i, shard = divmod(position, self._count)
        t, j = divmod(i, self._local)
        return self._sampler[(t * self._count + shard) * self._local + j]


def make_mae_loader(
    source: Sequence[dict[str, Any]],
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    num_epochs: int | None,
    worker_count: int,
    worker_buffer_size: int = 2,
    shard_options: grain.sharding.ShardOptions | None = None,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    skipped_records_dir: str | os.PathLike | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.DataLoader:
    """A seeded, sharded, checkpointable loader of augmented MAE batches (see the module docstring).

    Args:
      source: random-access records {"image": encoded bytes, "id": bytes or str, ...}, e.g.
        `face_shards.load_face_source(data_dir)`.
      global_batch_size: images per step over all shards; must divide by the shard count.
      image_size: output height = width.
      seed: shuffling and augmentation seed (32-bit, non-negative).
      num_epochs: passes over the data; None repeats forever.
      worker_count: grain worker processes; 0 decodes in this process.
      worker_buffer_size: batches each worker prepares ahead.
      shard_options: defaults to ShardByJaxProcess(drop_remainder=True).
      scale, ratio, flip_prob: RandomResizedCrop area fraction and aspect ranges; flip probability.
      skipped_records_dir: if set, where every skipped corrupt record's id is appended.
      read_options: grain reading threads/buffer per process.
    """
    shard_options, local_batch_size = batch_layout(global_batch_size, shard_options, skipped_records_dir)
    sampler = ProcessContiguousSampler(
        grain.samplers.IndexSampler(
            num_records=len(source),
            shard_options=grain.sharding.NoSharding(),
            shuffle=True,
            num_epochs=num_epochs,
            seed=seed,
        ),
        local_batch_size=local_batch_size,
        shard_count=shard_options.shard_count,
    )
    operations = [
        CropFlipAugment(
            image_size=image_size,
            scale=tuple(scale),
            ratio=tuple(ratio),
            flip_prob=flip_prob,
            skipped_records_dir=None if skipped_records_dir is None else os.fspath(skipped_records_dir),
        ),
        DropSkipped(),
        grain.transforms.Batch(batch_size=local_batch_size, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=shard_options,
        read_options=read_options,
    )


def read_skipped_records(skipped_records_dir: str | os.PathLike) -> list[str]:
    """Ids of all skipped corrupt records logged in `skipped_records_dir`, from every process."""
    ids = []
    for path in sorted(pathlib.Path(skipped_records_dir).glob(_SKIPPED_FILE_GLOB)):
        ids.extend(path.read_text(encoding="utf-8").splitlines())
    return ids


def batch_layout(
    global_batch_size: int,
    shard_options: grain.sharding.ShardOptions | None,
    skipped_records_dir: str | os.PathLike | None,
) -> tuple[grain.sharding.ShardOptions, int]:
    """(shard options, per-process batch size) of a loader; makes the skipped-records folder if one is named.

    `shard_options` defaults to ShardByJaxProcess(drop_remainder=True); the global batch must split evenly.
    """
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if global_batch_size % shard_options.shard_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} does not divide by the "
            f"{shard_options.shard_count} data shards (JAX processes)."
        )
    if skipped_records_dir is not None:
        pathlib.Path(skipped_records_dir).mkdir(parents=True, exist_ok=True)
    return shard_options, global_batch_size // shard_options.shard_count


def normalize_images(images: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """uint8 [..., 3] RGB -> (x / 255 - ImageNet mean) / ImageNet std, computed in float32."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
    std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def record_id(element: dict[str, Any]) -> str:
    """A record's "id" as text, for logs and the skipped-records files."""
    value = element.get("id", "<no id>")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_parent_watch: list[int] = []


def exit_with_parent() -> None:
    """In a grain worker process, exits when the training process is gone (e.g. killed with SIGKILL).

    grain's workers are daemon processes: Python stops them when the parent exits normally, but a parent
    killed outright leaves them running, each holding its buffers. A thread per worker polls the parent.
    """
    parent = multiprocessing.parent_process()
    if _parent_watch or parent is None:
        return
    _parent_watch.append(parent.pid)  # not getppid(): the parent may already be gone by now

    def watch():
        while os.getppid() == _parent_watch[0]:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def free_shared_memory_at_exit() -> None:
    """Frees the shared memory of the last batches grain's workers sent, before Python's resource tracker looks.

    The parent frees each batch's shared memory when the array is deleted, but on grain's background thread
    (`SharedMemoryArray.enable_async_del`); the last batches of a run are deleted as it ends, their requests wait
    on that daemon thread, the interpreter exits first, and the resource tracker printed "There appear to be N
    leaked shared_memory objects to clean up at shutdown" after every run (and unlinked them itself). Here, at
    exit: collect what is unreachable, switch later deletions back to synchronous, and wait for the queued ones.
    """
    gc.collect()
    deleter = SharedMemoryArray._del_thread_pool  # noqa: SLF001 - grain has no public hook
    if deleter is None:
        return
    SharedMemoryArray._disable_async_del()  # noqa: SLF001
    deleter.close()
    deleter.join()


# Registered at import, before any loader starts: atexit runs handlers last-in first-out, so this runs before
# multiprocessing's own exit handler stops the worker processes.
atexit.register(free_shared_memory_at_exit)


def use_one_opencv_thread() -> None:
    # Loader parallelism comes from grain workers; OpenCV's own thread pool would oversubscribe cores.
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
