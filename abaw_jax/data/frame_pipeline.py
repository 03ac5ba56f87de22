"""Labelled face crops of one task for fine-tuning: frame lists, grain loaders for training and evaluation.

    train, evaluation = frame_pipeline.affwild2_frames(annotations, crops, "EXPR", split="official")
    loader = frame_pipeline.make_train_loader(train, global_batch_size=512, seed=0, worker_count=8)
    batch = next(iter(loader))   # {"image": uint8 [b, B, B, 3], "box": float32 [b, 4], "flip": bool [b],
                                 #  "label": ..., "mask": bool [b]}
    x = device_images.prepare_images(batch["image"], batch["box"], batch["flip"], image_size=224)  # on device
    for batch in frame_pipeline.make_eval_loader(evaluation, global_batch_size=512, worker_count=8):
        ...                      # every frame once: "image", "box", "label", "mask" and "index" int64 [b],
                                 # its row in `evaluation`

Labels per frame: AU int32 [12] in {0, 1}, EXPR int32 class index, VA float32 [2]; `mask` is False for a
frame whose label is invalid (-1 / -5), a padding row or a corrupt crop. Training reads valid frames only
(`LabelledFrames.valid_only`), so an invalid label is never trained on; evaluation reads every frame once,
each row carrying its `index` in the frame list (rows >= len(frames) are padding that fills the last global
batch), and the mask keeps invalid ones out of the metric. With worker_count=0 the rows come in frame order;
grain workers each batch their own share of the records, so with workers use `index` to put outputs back.

Both loaders are sharded per JAX process like the MAE loader (`mae_pipeline.ProcessContiguousSampler`):
process p reads the p-th contiguous slice of every global batch, so the assembled global batch t is batch t
of a single-process run. Images travel at their stored size B (`data.device_images`: the host only decodes;
resize and normalisation run on the device, in the step, through `device_images.prepare_images`). Training:
RandomResizedCrop + flip, the box and the flip drawn per record on the host as the MAE pipeline draws them, the
crop resized to the encoder's image size and flipped on the device (corrupt crops skipped and counted in
`skipped_records_dir`), repeating forever and checkpointable. Evaluation: the box of the whole crop, the same
device resize that feature extraction and `predict` use; a corrupt crop is counted the same way and its frame
masked.

Sources. Aff-Wild2 through `affwild2.load_task`: the official Train_Set / Validation_Set, or a video-level
fold `fold1`..`fold5` of `affwild2.kfold_splits` over both (the `_left`/`_right` halves of a video stay
together). EXPR can also read an image folder per class (`<root>/<class>/*.jpg`, the common AffectNet /
RAF-DB export layout) with class folders named by the EXPR label names (any case) or by index 0..7.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from abaw_jax import tasks
from abaw_jax.data import affwild2, device_images, mae_pipeline
from abaw_jax.data.face_shards import list_image_files
from abaw_jax.media.jpeg import CorruptImageError
from abaw_jax.media.video import IMAGE_EXTENSIONS

SPLIT_CHOICES = ("official", "fold1", "fold2", "fold3", "fold4", "fold5")
NUM_FOLDS = 5
BATCH_KEYS = ("label", "mask")
_LABEL_DTYPES = {"binary": np.int32, "multiclass": np.int32, "continuous": np.float32}


@dataclasses.dataclass(frozen=True)
class LabelledFrames:
    """A flat list of labelled crops of one task; every array has one row per frame.

    Attributes:
      task: "AU", "EXPR" or "VA".
      paths: (N,) crop files.
      labels: AU (N, 12) int32, EXPR (N,) int32, VA (N, 2) float32, in the annotation encoding.
      valid: (N,) bool, False where the label is the invalid marker.
      names: (N,) track (annotation name) or class folder each frame comes from.
      frames: (N,) 1-based frame index in its track (0 for image-folder images).
    """

    task: str
    paths: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    names: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, index: np.ndarray) -> LabelledFrames:
        return LabelledFrames(
            self.task, self.paths[index], self.labels[index], self.valid[index], self.names[index], self.frames[index]
        )

    def valid_only(self) -> LabelledFrames:
        return self.select(np.flatnonzero(self.valid))

    @staticmethod
    def concatenate(parts: Sequence[LabelledFrames]) -> LabelledFrames:
        if len({p.task for p in parts}) != 1:
            raise ValueError(f"cannot mix tasks {sorted({p.task for p in parts})}")
        return LabelledFrames(
            parts[0].task,
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("paths", "labels", "valid", "names", "frames")),
        )


def from_video_labels(videos: Sequence[affwild2.VideoLabels], task: str) -> LabelledFrames:
    """The frames of annotation files (aligned to their crops), in the given order."""
    task_info = tasks.get_task(task)
    dtype = _LABEL_DTYPES[task_info.kind]
    label_shape = (task_info.num_outputs,) if task_info.kind != "multiclass" else ()
    if not videos:
        return LabelledFrames(
            task_info.name,
            np.zeros((0,), object),
            np.zeros((0,) + label_shape, dtype),
            np.zeros((0,), bool),
            np.zeros((0,), object),
            np.zeros((0,), np.int64),
        )
    return LabelledFrames(
        task=task_info.name,
        paths=np.array([str(p) for v in videos for p in v.crop_paths], object),
        labels=np.concatenate([v.labels for v in videos]).astype(dtype),
        valid=np.concatenate([v.valid for v in videos]),
        names=np.array([v.name for v in videos for _ in range(len(v))], object),
        frames=np.concatenate([v.frames for v in videos]).astype(np.int64),
    )


def affwild2_frames(
    annotations: str | os.PathLike, crops: str | os.PathLike, task: str, *, split: str = "official", fold_seed: int = 0
) -> tuple[LabelledFrames, LabelledFrames]:
    """(training frames, evaluation frames) of `task` for `split` ('official' or 'fold1'..'fold5').

    Raises FileNotFoundError when the task folder or a video's crop folder is missing, ValueError for an
    unknown split or when either side has no valid labelled frame with a crop.
    """
    task = tasks.get_task(task).name
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    if split == "official":
        train = affwild2.load_task(annotations, task, crops, ("Train_Set",))
        evaluation = affwild2.load_task(annotations, task, crops, ("Validation_Set",))
        train_names, eval_names = list(train), list(evaluation)
        videos = {**train, **evaluation}
    else:
        videos = affwild2.load_task(annotations, task, crops, affwild2.SPLITS)
        fold = affwild2.kfold_splits(videos, NUM_FOLDS, fold_seed)[int(split[len("fold") :]) - 1]
        train_names, eval_names = list(fold.train), list(fold.validation)
    result = []
    for side, names in (("training", train_names), ("evaluation", eval_names)):
        frames = from_video_labels([videos[n] for n in names], task)
        if not frames.valid.any():
            raise ValueError(
                f"no {side} frame of {task} ({split} split) has both a valid label and a crop: "
                f"{len(names)} annotation files under {annotations}, {len(frames)} frames with a crop in {crops}"
            )
        result.append(frames)
    return result[0], result[1]


def image_folder_frames(root: str | os.PathLike, task: str = "EXPR") -> LabelledFrames:
    """Images of `<root>/<class>/*` (`IMAGE_EXTENSIONS`) labelled by their class folder (EXPR only).

    Class folders are the EXPR label names (any case); any other folder name is an error that lists them, and so
    is a folder without images. Numbered folders are refused: shared copies number them by their own release's
    codes (AffectNet 1 = Happy, RAF-DB 1 = Surprise, EXPR 1 = Anger), so no reading of a number is safe.
    """
    task_info = tasks.get_task(task)
    if task_info.kind != "multiclass":
        raise ValueError(
            f"image folders per class hold expression labels; task {task_info.name} has {task_info.kind} labels"
        )
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} is not a folder")
    classes = {name.lower(): i for i, name in enumerate(task_info.label_names)}
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    numbered = [p.name for p in folders if p.name.isdigit()]
    if numbered:
        raise ValueError(
            f"{root}: class folders {numbered} are numbers, which mean different classes in different releases "
            f"(AffectNet 1 = Happy, RAF-DB 1 = Surprise); rename them to the EXPR labels "
            f"{list(task_info.label_names)}, or train on the release in its official layout (--config.data.source)"
        )
    unknown = [p.name for p in folders if p.name.lower() not in classes]
    if unknown:
        raise ValueError(
            f"{root}: class folders {unknown} are not EXPR classes; expected the names "
            f"{list(task_info.label_names)} (any case)"
        )
    paths, labels, names = [], [], []
    for folder in folders:
        files = list_image_files(folder)
        paths += [str(f) for f in files]
        labels += [classes[folder.name.lower()]] * len(files)
        names += [folder.name] * len(files)
    if not paths:
        raise ValueError(
            f"{root}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in class folders {[p.name for p in folders]}"
        )
    return LabelledFrames(
        task_info.name,
        np.array(paths, object),
        np.array(labels, np.int32),
        np.ones(len(paths), bool),
        np.array(names, object),
        np.zeros(len(paths), np.int64),
    )


class FrameSource:
    """grain random-access source over `LabelledFrames`: {"image": bytes, "label", "mask", "index", "id"}.

    With `length` > len(frames), positions past the end are padding rows (no image, mask False).
    """

    def __init__(self, frames: LabelledFrames, length: int | None = None):
        self._frames = frames
        self._length = len(frames) if length is None else length

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"FrameSource({self._frames.task}, {len(self._frames)} frames, length={self._length})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= len(self._frames):
            return {
                "image": None,
                "label": np.zeros_like(self._frames.labels[0]),
                "mask": np.False_,
                "index": np.int64(index),
                "id": "<padding>",
            }
        path = self._frames.paths[index]
        try:
            encoded = pathlib.Path(path).read_bytes()
        except OSError:
            encoded = b""  # decoding fails, so the frame is skipped (training) or masked (evaluation)
        return {
            "image": encoded,
            "label": self._frames.labels[index],
            "mask": np.bool_(self._frames.valid[index]),
            "index": np.int64(index),
            "id": path,
        }


def _decoded(element: dict[str, Any], buffer_size: int, skipped_records_dir: str | None) -> tuple[np.ndarray, ...]:
    """(uint8 [B, B, 3] buffer, float32 [4] box, decoded) of a record (`device_images.decode_stored`); a padding
    row or a corrupt crop (logged and counted) gives a zero buffer, a whole-buffer box and False."""
    mae_pipeline.use_one_opencv_thread()
    mae_pipeline.exit_with_parent()
    buffer, boxes = device_images.empty_batch(1, buffer_size)
    if element["image"] is None:
        return buffer[0], boxes[0], False
    try:
        return buffer[0], device_images.decode_stored(element["image"], buffer[0]), True
    except CorruptImageError as e:
        mae_pipeline.log_skipped_record(skipped_records_dir, mae_pipeline.record_id(element), str(e))
        return buffer[0], boxes[0], False


@dataclasses.dataclass(frozen=True)
class DecodeForEval(grain.transforms.Map):
    """Record -> {"image": uint8 [B, B, 3], "box": float32 [4], "label", "mask", "index"}: the crop at its stored
    size in a buffer of `buffer_size` px (`device_images`), the resize happening on the device; a padding row or
    a corrupt crop gives zeros and mask False (a corrupt one is also logged and counted, as in training)."""

    buffer_size: int
    skipped_records_dir: str | None = None

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        image, box, decoded = _decoded(element, self.buffer_size, self.skipped_records_dir)
        mask = np.bool_(element["mask"] and decoded)
        return {"image": image, "box": box, "label": element["label"], "mask": mask, "index": element["index"]}


@dataclasses.dataclass(frozen=True)
class DecodeAndDrawCrop(grain.transforms.RandomMap):
    """Record -> {"image": uint8 [B, B, 3], "box": float32 [4], "flip": bool, "label", "mask"}, or None for a
    corrupt crop (logged, counted, then dropped): the RandomResizedCrop box and the flip are drawn here as the
    host augmentation draws them (`device_images.sample_crop`), the crop is resized and flipped on the device."""

    buffer_size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    skipped_records_dir: str | None = None

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
        image, box, decoded = _decoded(element, self.buffer_size, self.skipped_records_dir)
        if not decoded:
            return None
        box, flip = device_images.sample_crop(box, rng, self.scale, self.ratio, self.flip_prob)
        return {"image": image, "box": box, "flip": np.bool_(flip), **{key: element[key] for key in BATCH_KEYS}}


def default_buffer_size(frames: LabelledFrames, buffer_size: int | None) -> int:
    """`buffer_size`, or when None the stored size of the first readable crop (`device_images.stored_size`)."""
    if buffer_size is not None:
        return buffer_size
    try:
        return device_images.stored_size(frames.paths)
    except CorruptImageError as e:
        raise ValueError(f"{frames.task} frames: {e}") from None


def make_train_loader(
    frames: LabelledFrames,
    *,
    global_batch_size: int,
    seed: int,
    worker_count: int,
    buffer_size: int | None = None,
    worker_buffer_size: int = 2,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    skipped_records_dir: str | os.PathLike | None = None,
    shard_options: grain.sharding.ShardOptions | None = None,
) -> grain.DataLoader:
    """Batches of the valid frames at their stored size with a crop box and a flip each, shuffled, repeating
    forever (see the module docstring); `buffer_size` defaults to the first valid frame's stored size."""
    valid = frames.valid_only()
    if len(valid) < global_batch_size:
        raise ValueError(
            f"{len(valid)} valid training frames of {frames.task}, fewer than one batch of {global_batch_size}"
        )
    shard_options, local_batch_size = mae_pipeline.batch_layout(global_batch_size, shard_options, skipped_records_dir)
    sampler = mae_pipeline.ProcessContiguousSampler(
        grain.samplers.IndexSampler(
            num_records=len(valid), shard_options=grain.sharding.NoSharding(), shuffle=True, num_epochs=None, seed=seed
        ),
        local_batch_size=local_batch_size,
        shard_count=shard_options.shard_count,
    )
    operations = [
        DecodeAndDrawCrop(
            default_buffer_size(valid, buffer_size),
            scale=tuple(scale),
            ratio=tuple(ratio),
            flip_prob=flip_prob,
            skipped_records_dir=None if skipped_records_dir is None else os.fspath(skipped_records_dir),
        ),
        mae_pipeline.DropSkipped(),
        grain.transforms.Batch(batch_size=local_batch_size, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=FrameSource(valid),
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=shard_options,
    )


def num_eval_batches(num_frames: int, global_batch_size: int, worker_count: int = 0) -> int:
    """Global batches of `make_eval_loader`: a multiple of the worker count, since each grain worker batches
    its own share of the records and must get whole batches (or it would drop frames)."""
    workers = max(worker_count, 1)
    return -(-num_frames // (global_batch_size * workers)) * workers


def make_eval_loader(
    frames: LabelledFrames,
    *,
    global_batch_size: int,
    worker_count: int,
    buffer_size: int | None = None,
    worker_buffer_size: int = 2,
    skipped_records_dir: str | os.PathLike | None = None,
    shard_options: grain.sharding.ShardOptions | None = None,
) -> grain.DataLoader:
    """Every frame once at its stored size with its box and `index`; the global batches cover `num_eval_batches`
    x batch rows, the rows with index >= len(frames) padding with mask False (see the module docstring for the
    order); `buffer_size` defaults to the first frame's stored size."""
    shard_options, local_batch_size = mae_pipeline.batch_layout(global_batch_size, shard_options, skipped_records_dir)
    length = num_eval_batches(len(frames), global_batch_size, worker_count) * global_batch_size
    sampler = mae_pipeline.ProcessContiguousSampler(
        grain.samplers.IndexSampler(
            num_records=length, shard_options=grain.sharding.NoSharding(), shuffle=False, num_epochs=1, seed=0
        ),
        local_batch_size=local_batch_size,
        shard_count=shard_options.shard_count,
    )
    operations = [
        DecodeForEval(
            default_buffer_size(frames, buffer_size),
            None if skipped_records_dir is None else os.fspath(skipped_records_dir),
        ),
        grain.transforms.Batch(batch_size=local_batch_size, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=FrameSource(frames, length),
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=shard_options,
    )
