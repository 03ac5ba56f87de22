"""Frozen per-frame features: every face crop of every track through frozen encoders, and audio features.

Stage 3 of the pipeline. For each visual set `name` in `config.sets` (an encoder path in
`config.encoders[name]`, anything `models.encoders.load_encoder` reads), every crop of every track of
the release (each task's Train_Set and Validation_Set annotations and test list) goes through the frozen
encoder's pooled, `fc_norm`-ed feature (`ViT.features`) and lands in `<workdir>/<name>/`, written by
`data.features.VisualSetWriter` (layout and manifest in that module). For each audio kind in
`config.audio`, `abaw_jax.media.audio` computes frame-aligned features of every video into `<workdir>/<kind>/`
(WAV files in `<workdir>/wav/`). `data.features.FeatureStore` reads both.

Loop: crops stream track after track in global batches of `config.batch_size` (the last one padded);
host threads read and decode the JPEGs at their stored size (`data.device_images.decode_stored`, nothing else
on the host) a few batches ahead, each process decoding its contiguous slice of every global batch; one jitted
step, the batch sharded over all devices and the parameters replicated, resizes the uint8 crops to the
encoder's input and normalises them on device (`device_images.prepare_images`, the transform fine-tuning
evaluated with) and returns the features (and the task head's outputs) replicated, so process 0 writes them.
Dispatch is asynchronous: the device works on batch t while the host stores batch t-1 and decodes batch t+k.

Frames: a track's array has `num_frames` rows, the largest of its annotation row counts over all tasks,
its frame count in the test example files and its last crop index; frames without a crop, and frames
whose crop does not decode (logged, counted in the manifest's `corrupt_frames`), are masked.

Resume: a track is written (arrays, then the manifest) once all its crops are through; rerunning skips
tracks the manifest lists, so an interrupted run redoes at most the tracks in flight.

Static predictions (for the stage-5 ablation): when `config.head_tasks[name]` names a task and the encoder
carries that task's head (a fine-tune export), the head's per-frame outputs (sigmoid for AU, softmax
for EXPR, tanh for VA) go to `<workdir>/predictions_<name>/` (`data.predictions` format, member
`static`, roles train / heldout / test for Train_Set / Validation_Set / test tracks). Rows of frames
without a usable crop are 0 there (their `faces/` mask is False).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from abaw_jax import tasks
from abaw_jax.data import affwild2, device_images, release
from abaw_jax.data.features import FeatureStoreError, VisualSetWriter
from abaw_jax.data.predictions import STATIC_MEMBER, PredictionWriter
from abaw_jax.media.jpeg import CorruptImageError
from abaw_jax.models import encoders
from abaw_jax.models.vit import ATTENTION_IMPLEMENTATIONS, ViT
from abaw_jax.runtime import config_checks as checks
from abaw_jax.runtime import sharding, telemetry
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.artefacts import FINETUNE_EXPORT
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.telemetry import log

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
STORAGE_DTYPES = ("float16", "float32")
WAV_DIR = "wav"
PREDICTIONS_PREFIX = "predictions_"
# Settings that change how fast features are computed, never their values.
COSMETIC_KEYS = ("log_every", "batch_size", "decode_threads", "prefetch_batches", "data.cache_dir")
# Must match the fine-tuning job's outputs: probabilities for AU and EXPR, VA bounded to [-1, 1].
HEAD_ACTIVATIONS = {"binary": jax.nn.sigmoid, "multiclass": jax.nn.softmax, "continuous": jnp.tanh}
_ROLES = {"Train_Set": "train", "Validation_Set": "heldout", "test": "test"}
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The tiny presets' fixed chain of workdirs (README) and the config that makes each.
_TINY_WORKDIRS = {
    "/tmp/abaw_mae_tiny": "configs/mae.py:tiny",
    **{f"/tmp/abaw_finetune_{t}_tiny": f"configs/finetune.py:{t}_tiny" for t in tasks.TASK_KEYS},
}


@dataclasses.dataclass
class Track:
    """A face track of the release: where its crops are and what each task says about it.

    Attributes:
      name: `<video>`, `<video>_left` or `<video>_right`.
      frames: (n,) sorted 1-based frame indices of its crops.
      crop_dir: `<crops>/<name>`.
      rows: per task name, the frames that task labels or predicts (annotation rows, or the track's
        frame count in the test example file).
      splits: per task name, "Train_Set", "Validation_Set" or "test".
    """

    name: str
    frames: np.ndarray
    crop_dir: pathlib.Path
    rows: dict[str, int] = dataclasses.field(default_factory=dict)
    splits: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return max([*self.rows.values(), int(self.frames[-1]) if len(self.frames) else 0])


def validate_config(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(visual set names, audio kinds) after checking every config value this job reads."""
    sets, kinds = checks.names(config, "sets", distinct=False), checks.names(config, "audio", distinct=False)
    if not sets and not kinds:
        raise JobError("config.sets and config.audio are both empty: nothing to extract")
    for name in sets:
        if name not in config.encoders:
            raise JobError(
                f"config.sets names {name!r}, which has no entry in config.encoders ({sorted(config.encoders)})"
            )
    for name in (*sets, *kinds):
        if not _SET_NAME.match(name) or name == WAV_DIR or name.startswith(PREDICTIONS_PREFIX):
            raise JobError(
                f"feature set name {name!r} (config.sets / config.audio) must be a plain folder name "
                f"of letters, digits, '_', '.', '-', not {WAV_DIR!r} nor {PREDICTIONS_PREFIX}*"
            )
    repeated = sorted({n for n in (*sets, *kinds) if (*sets, *kinds).count(n) > 1})
    if repeated:
        raise JobError(
            f"feature set names {repeated} appear twice in config.sets / config.audio; each names "
            "one folder of the store"
        )
    if kinds:
        from abaw_jax.media import audio as audio_lib  # librosa and av load only when audio is asked for
    for kind in kinds:
        if kind not in (*audio_lib.ENCODER_KINDS, audio_lib.VGGISH_KIND):
            continue
        vggish = kind == audio_lib.VGGISH_KIND
        if not config.audio_models.get(kind):
            needs = "torchvggish's state dict (.pth)" if vggish else "a transformers folder"
            raise JobError(
                f"config.audio names {kind!r}, whose model config.audio_models.{kind} is empty: set it "
                f"to {needs} on this machine (nothing is downloaded)"
            )
        try:
            checks.path(config, f"audio_models.{kind}", kind="file" if vggish else "dir")
        except JobError as e:
            raise type(e)(
                f"{e}; without the published model, `python -m data_prep.make_stand_in_audio --out_dir=<folder>` "
                "writes an untrained stand-in (for CPU runs of the machinery, not for results)"
            ) from None
    for name, task in config.head_tasks.items():
        if task:
            try:
                tasks.get_task(task)
            except ValueError as e:
                raise JobError(f"config.head_tasks.{name}: {e}") from None
    if config.model.dtype not in ("auto", *COMPUTE_DTYPES):
        raise JobError(
            f"config.model.dtype must be 'auto' or one of {sorted(COMPUTE_DTYPES)}, got {config.model.dtype!r}"
        )
    if config.model.attention not in ("auto", *ATTENTION_IMPLEMENTATIONS):
        raise JobError(
            f"config.model.attention must be 'auto' or one of {ATTENTION_IMPLEMENTATIONS}, "
            f"got {config.model.attention!r}"
        )
    if config.storage_dtype not in ("auto", *STORAGE_DTYPES):
        raise JobError(f"config.storage_dtype must be 'auto' or one of {STORAGE_DTYPES}, got {config.storage_dtype!r}")
    for key in ("batch_size", "prefetch_batches", "log_every"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise JobError(f"config.{key} must be a positive integer, got {config[key]!r}")
    if not isinstance(config.decode_threads, int) or config.decode_threads < 0:
        raise JobError(f"config.decode_threads must be >= 0 (0: one per CPU core), got {config.decode_threads!r}")
    devices, processes = jax.device_count(), jax.process_count()
    if config.batch_size % devices or config.batch_size % processes:
        raise JobError(
            f"config.batch_size={config.batch_size} must split evenly over the {devices} devices "
            f"and {processes} processes"
        )
    return sets, kinds


def collect_tracks(paths: release.ReleasePaths) -> dict[str, Track]:
    """Every track named by any task's Train_Set / Validation_Set annotations or test list, with its crops."""
    tracks: dict[str, Track] = {}

    def track(name: str) -> Track:
        if name not in tracks:
            crop_dir = paths.crops / name
            frames = affwild2.list_crops(crop_dir) if crop_dir.is_dir() else np.zeros(0, np.int64)
            tracks[name] = Track(name, frames, crop_dir)
        return tracks[name]

    try:
        for task in tasks.TASKS.values():
            task_dir = affwild2.find_task_dir(paths.annotations, task.name)
            for split in affwild2.SPLITS:
                for path in sorted((task_dir / split).glob("*.txt")):
                    labels, _ = affwild2.parse_annotation_file(path, task.name)
                    entry = track(path.stem)
                    entry.rows[task.name], entry.splits[task.name] = len(labels), split
            template = affwild2.read_submission_template(paths.example_file(task), task.name)
            for name in affwild2.read_video_list(paths.test_list(task)):
                frames = template.frames_of(name)
                entry = track(name)
                entry.rows[task.name], entry.splits[task.name] = int(frames.max(initial=0)), "test"
    except (FileNotFoundError, affwild2.AnnotationError) as e:
        raise JobError(str(e)) from e
    if not tracks:
        raise JobError(f"config.data.annotations: no annotation files under {paths.annotations}")
    if not any(len(t.frames) for t in tracks.values()):
        raise JobError(
            f"config.data.crops: {paths.crops} holds no <track>/<k:05d>.jpg crops for any of the "
            f"{len(tracks)} tracks of the annotations and test lists (e.g. {sorted(tracks)[:3]})"
        )
    without = sorted(t.name for t in tracks.values() if not len(t.frames))
    if without:
        log(f"{len(without)} tracks have no crops at all (written with every frame masked): {without}")
    unused = sorted(d.name for d in paths.crops.iterdir() if d.is_dir() and d.name not in tracks)
    if unused:
        log(
            f"{len(unused)} crop folders belong to no annotation file or test list and are not extracted, "
            f"e.g. {unused[:5]}"
        )
    return dict(sorted(tracks.items()))


def _encoder_source(name: str, path: str) -> str:
    if not path:
        raise JobError(
            f"config.encoders.{name} is empty: give the encoder of set {name!r} (a pretraining or "
            "fine-tuning workdir, a params folder, an official .pth, a transformers folder), or leave "
            "the set out of config.sets"
        )
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path) and path in _TINY_WORKDIRS:
        raise JobError(
            f"config.encoders.{name}: {path} does not exist; make it first with: python -m "
            f"abaw_jax.main --config={_TINY_WORKDIRS[path]} --workdir={path}"
        )
    # A workdir's export, not the whole workdir: the manifest's hash then names the weights alone (a
    # workdir's logs and checkpoints change without the encoder changing).
    export = os.path.join(path, "export", "encoder")
    return export if os.path.isdir(export) else path


def load_set_encoder(name: str, path: str, task: tasks.Task | None) -> tuple[encoders.LoadedEncoder, bool]:
    """(the encoder of set `name`, whether it carries `task`'s trained head)."""
    source = _encoder_source(name, path)
    # The fine-tuning job's export says which task its head was trained for.
    summary = pathlib.Path(source).parent / FINETUNE_EXPORT
    if task is not None and summary.is_file():
        trained = json.loads(summary.read_text(encoding="utf-8")).get("task")
        if trained and trained != task.name:
            raise JobError(
                f"config.head_tasks.{name}={task.name!r}, but {source} was fine-tuned for {trained} "
                f"({summary}); fix config.encoders.{name} or config.head_tasks.{name}"
            )
    try:
        loaded = encoders.load_encoder(source, num_classes=task.num_outputs if task else 0)
    except encoders.EncoderLoadError as e:
        raise JobError(f"config.encoders.{name}: {e}") from e
    return loaded, task is not None and "head.weight" not in loaded.fresh_keys


def extract_step(
    params: Any, images_uint8: jax.Array, boxes: jax.Array, valid: jax.Array, *, model: ViT, task: tasks.Task | None
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """(pooled features (B, width) f32, head outputs (B, C) f32 or None, valid (B,)) of a uint8 batch at its stored
    size with its crop boxes (`device_images.prepare_images`)."""
    x = device_images.prepare_images(images_uint8, boxes, image_size=model.config.image_size)

    def apply(module: ViT, x: jax.Array):
        feature = module.features(x)
        if task is None:
            return feature.astype(jnp.float32), None
        return feature.astype(jnp.float32), HEAD_ACTIVATIONS[task.kind](module.head(feature).astype(jnp.float32))

    features, outputs = model.apply({"params": params}, x, method=apply)
    return features, outputs, valid


def jit_extract_step(model: ViT, task: tasks.Task | None, mesh: Mesh):
    """`extract_step` jitted with replicated parameters, the batch split over the mesh, replicated outputs."""
    return jax.jit(
        functools.partial(extract_step, model=model, task=task),
        in_shardings=(sharding.replicated(mesh),) + (sharding.batch_sharding(mesh),) * 3,
        out_shardings=sharding.replicated(mesh),
    )


_DECODE_CHUNK = 16  # crops per decode task: fewer, larger tasks keep the submitting thread off the critical path


def _decode_into(
    pixels: np.ndarray, boxes: np.ndarray, valid: np.ndarray, rows: range, paths: list[pathlib.Path]
) -> list[str]:
    """Decodes `paths` into `pixels[rows]` at their stored size, sets `boxes[rows]` and `valid[rows]`; returns a
    message per crop that failed."""
    failures = []
    for row, path in zip(rows, paths):
        try:
            boxes[row] = device_images.decode_stored(path.read_bytes(), pixels[row])
            valid[row] = True
        except (CorruptImageError, OSError) as e:
            failures.append(f"corrupt crop {path}: {e}; its frame is masked")
    return failures


def decoded_batches(
    path_of: Callable[[int], pathlib.Path],
    count: int,
    *,
    global_batch: int,
    buffer_size: int,
    pool: concurrent.futures.Executor,
    prefetch: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, range]]:
    """(this process's uint8 slice [b, B, B, 3] at buffer size B, its crop boxes, its valid flags, the global
    batch's item range) per global batch (`device_images`: crops at their stored size).

    Items 0..count-1 are the crops `path_of(i)`; the rows of the last global batch past `count` are padding
    (zero images, not valid). Process p decodes rows p*b .. (p+1)*b - 1 of every global batch (b = global
    batch / processes) on `pool`, `prefetch` batches ahead. A crop that does not decode is logged and marked
    not valid.
    """
    local = global_batch // jax.process_count()
    first = jax.process_index() * local
    starts = range(0, count, global_batch)
    pending: collections.deque = collections.deque()

    def submit(start: int) -> None:
        pixels, boxes = device_images.empty_batch(local, buffer_size)
        valid = np.zeros(local, bool)
        mine = range(start + first, min(start + first + local, count))
        futures = [
            pool.submit(
                _decode_into,
                pixels,
                boxes,
                valid,
                range(row, min(row + _DECODE_CHUNK, len(mine))),
                [path_of(i) for i in mine[row : row + _DECODE_CHUNK]],
            )
            for row in range(0, len(mine), _DECODE_CHUNK)
        ]
        pending.append((pixels, boxes, valid, range(start, min(start + global_batch, count)), futures))

    for start in starts[:prefetch]:
        submit(start)
    for index in range(len(starts)):
        if index + prefetch < len(starts):
            submit(starts[index + prefetch])
        pixels, boxes, valid, items, futures = pending.popleft()
        for future in futures:
            for message in future.result():
                log(message)
        yield pixels, boxes, valid, items


def buffer_size_of(path_of: Callable[[int], pathlib.Path], count: int, default: int) -> int:
    """The crops' stored size (`device_images.stored_size` over the first crops), or `default` when none reads."""
    try:
        return device_images.stored_size(path_of(i) for i in range(count))
    except CorruptImageError:
        return default


class _TrackBuffer:
    """Features of one track's crops as they come back from the device."""

    def __init__(self, track: Track, dim: int, num_outputs: int):
        self.track = track
        self.features = np.zeros((len(track.frames), dim), np.float32)
        self.outputs = np.zeros((len(track.frames), num_outputs), np.float32)
        self.valid = np.zeros(len(track.frames), bool)
        self.remaining = len(track.frames)


def _resolve_auto(config: ml_collections.ConfigDict) -> tuple[str, str, str]:
    accelerator = jax.devices()[0].platform != "cpu"
    compute = config.model.dtype if config.model.dtype != "auto" else ("bfloat16" if accelerator else "float32")
    # bf16-computed features fit float16 without loss (its 10-bit mantissa holds bf16's 7 bits over the
    # range LayerNorm outputs live in) at half the disk and page-cache size of float32.
    storage = (
        config.storage_dtype if config.storage_dtype != "auto" else ("float16" if compute == "bfloat16" else "float32")
    )
    attention = config.model.attention
    if attention == "auto":
        attention = "cudnn" if jax.devices()[0].device_kind.startswith("NVIDIA") else "xla"
    return compute, storage, attention


def extract_visual_set(
    name: str,
    config: ml_collections.ConfigDict,
    tracks: dict[str, Track],
    workdir: str,
    mesh: Mesh,
    pool: concurrent.futures.Executor,
    stop_requested: Callable[[], bool] = lambda: False,
) -> None:
    """Writes (or completes) the visual set `name` in `<workdir>/<name>/`; on SIGTERM (`stop_requested`) stops
    after the track being written, which a rerun then skips."""
    head_task = config.head_tasks.get(name, "")
    task = tasks.get_task(head_task) if head_task else None
    loaded, has_head = load_set_encoder(name, config.encoders[name], task)
    compute, storage, attention = _resolve_auto(config)
    cfg = loaded.config
    is_main = jax.process_index() == 0
    try:
        writer = VisualSetWriter(
            os.path.join(workdir, name), dim=cfg.width, dtype=storage, encoder=loaded.description()
        )
    except FeatureStoreError as e:
        raise JobError(f"feature set {name!r}: {e}") from e
    predictions = None
    if task is not None and config.static_predictions:
        if has_head:
            predictions = PredictionWriter(os.path.join(workdir, PREDICTIONS_PREFIX + name), task)
        else:
            log(
                f"set {name}: the encoder has no trained {task.name} head (config.head_tasks.{name}); "
                "no static predictions"
            )
    multihost_utils.sync_global_devices(f"feature set {name} opened")

    def needs_prediction(track: Track) -> bool:
        return (
            predictions is not None
            and task.name in track.splits
            and predictions.manifest["members"].get(STATIC_MEMBER, {}).get(track.name) is None
        )

    todo = [t for t in tracks.values() if not writer.done(t.name) or needs_prediction(t)]
    # Item i is crop `positions[i]` of track `todo[track_of[i]]`: two int arrays, not millions of paths.
    track_of = np.repeat(np.arange(len(todo)), [len(t.frames) for t in todo])
    positions = np.concatenate([np.arange(len(t.frames)) for t in todo] or [np.zeros(0, np.int64)])
    count = len(track_of)

    def path_of(i: int) -> pathlib.Path:
        track = todo[track_of[i]]
        return track.crop_dir / f"{track.frames[positions[i]]:05d}.jpg"

    log(
        f"set {name}: {loaded.kind} encoder {loaded.source} (ViT width {cfg.width}, depth {cfg.depth}, "
        f"{cfg.image_size}px), {compute} compute, {storage} storage, {attention} attention, "
        f"{len(tracks) - len(todo)} of {len(tracks)} tracks already done, {count:,} crops to go"
        + (f", static {task.name} predictions" if predictions else "")
    )

    model = ViT(cfg, dtype=COMPUTE_DTYPES[compute], attention=attention)
    params = jax.device_put(loaded.params, sharding.replicated(mesh))
    step = jit_extract_step(model, task if predictions else None, mesh)
    buffers = [_TrackBuffer(t, cfg.width, task.num_outputs if predictions else 0) for t in todo]
    corrupt_total = 0

    def finish(buffer: _TrackBuffer) -> None:
        track, ok = buffer.track, buffer.valid
        frames = track.frames[ok]
        values = buffer.features[ok].astype(storage)
        if not np.isfinite(values).all():
            raise JobError(
                f"set {name}, track {track.name}: non-finite features in {storage}"
                + (" (float16 overflow: use --config.storage_dtype=float32)" if storage == "float16" else "")
            )
        if not is_main:
            return
        if predictions is not None and task.name in track.splits:
            rows = track.rows[task.name]
            outputs = np.zeros((rows, task.num_outputs), np.float32)
            face = np.zeros(rows, bool)
            inside = frames <= rows
            outputs[frames[inside] - 1] = buffer.outputs[ok][inside]
            face[frames[inside] - 1] = True
            predictions.add_track(track.name, track.splits[task.name], face)
            predictions.write(STATIC_MEMBER, track.name, outputs, _ROLES[track.splits[task.name]])
            predictions.flush()
        writer.write(track.name, frames, values, track.num_frames, corrupt_frames=track.frames[~ok])

    def consume(outputs: tuple[Any, Any, Any], items: range) -> int:
        features, head_outputs, valid = jax.device_get(outputs)
        rows = len(items)
        batch_tracks, batch_positions = track_of[items.start : items.stop], positions[items.start : items.stop]
        # Items run track after track, so a batch holds a few contiguous runs of tracks.
        for index in np.unique(batch_tracks):
            run = np.flatnonzero(batch_tracks == index)
            buffer, where = buffers[index], batch_positions[run]
            buffer.valid[where] = valid[run]
            buffer.features[where] = features[run]
            if head_outputs is not None:
                buffer.outputs[where] = head_outputs[run]
            buffer.remaining -= len(run)
            if buffer.remaining == 0:
                finish(buffer)
                if stop_requested():
                    raise JobError(
                        f"stopped by SIGTERM in set {name} after track {buffer.track.name}; "
                        f"{len(writer.manifest['tracks'])} of {len(tracks)} tracks are written in "
                        f"{writer.directory}: rerun the same command to resume"
                    )
        return int(rows - valid[:rows].sum())

    for buffer in buffers:
        if buffer.remaining == 0:
            finish(buffer)  # a track without crops: every frame masked

    done, done_at_start, in_flight = 0, 0, None
    start = wait = 0.0
    batches = decoded_batches(
        path_of,
        count,
        global_batch=config.batch_size,
        buffer_size=buffer_size_of(path_of, count, cfg.image_size),
        pool=pool,
        prefetch=config.prefetch_batches,
    )
    for number, (wait_seconds, (*local, items)) in enumerate(_timed(batches), start=1):
        wait += wait_seconds
        batch = tuple(sharding.global_batch(value, mesh) for value in local)
        with jax.transfer_guard("disallow"):
            outputs = step(params, *batch)
        if in_flight is not None:
            corrupt_total += consume(*in_flight)
            done += len(in_flight[1])
        in_flight = (outputs, items)
        if number == 2:
            start, wait, done_at_start = time.perf_counter(), 0.0, done  # the first batch compiled
        if number > 2 and number % config.log_every == 0:
            log(_progress(name, done, count, done - done_at_start, time.perf_counter() - start, wait))
    if in_flight is not None:
        corrupt_total += consume(*in_flight)
        done += len(in_flight[1])
    if count and start:
        log(_progress(name, done, count, done - done_at_start, time.perf_counter() - start, wait))
    log(
        f"set {name}: {len(todo)} tracks written to {writer.directory} ({done:,} crops, {corrupt_total} corrupt "
        "and masked)" + (f"; static predictions in {predictions.directory}" if predictions else "")
    )


def _timed(iterator: Iterator) -> Iterator:
    """Yields (seconds waited for the item, item) pairs."""
    while True:
        before = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - before, item


def _progress(name: str, done: int, total: int, timed_frames: int, seconds: float, wait: float) -> str:
    rate = timed_frames / max(seconds, 1e-9)
    eta = telemetry.format_duration((total - done) / max(rate, 1e-9))
    return (
        f"set {name}: {done:,}/{total:,} crops | {rate:,.1f} frames/s | data wait "
        f"{100 * wait / max(seconds, 1e-9):.0f}% | ETA {eta}"
    )


def extract_audio_sets(
    kinds: Sequence[str],
    config: ml_collections.ConfigDict,
    tracks: dict[str, Track],
    paths: release.ReleasePaths,
    workdir: str,
) -> list[str]:
    """Writes `<workdir>/<kind>/<video>.npy + .json` for the videos of `tracks`; returns the failures."""
    from abaw_jax.media import audio, faces

    videos = sorted({affwild2.source_video(t) for t in tracks})
    try:
        files = {p.stem: p for p in faces.find_videos([paths.videos])}
    except FileNotFoundError as e:
        raise JobError(f"config.data.videos: {e}") from e
    absent = [v for v in videos if v not in files]
    if absent:
        log(f"{len(absent)} videos of the tracks have no file in {paths.videos} (no audio features): {absent}")
    failures = []
    for kind in kinds:
        try:
            featurizer = audio.make_featurizer(
                kind,
                config.audio_models.get(kind) or None,
                vggish_weights=config.audio_models.get("vggish") or None,
                vggish_pca=config.audio_models.get("vggish_pca") or None,
            )
        except (ValueError, FileNotFoundError) as e:
            raise JobError(f"config.audio ({kind!r}): {e}") from e
        out = pathlib.Path(workdir, kind)
        todo = [files[v] for v in videos if v in files and not (out / f"{v}.json").exists()]
        log(f"audio {kind}: {len(videos) - len(absent) - len(todo)} videos already done, {len(todo)} to go")
        start = time.perf_counter()
        report = audio.extract_all(todo, pathlib.Path(workdir, WAV_DIR), out, featurizer)
        log(
            f"audio {kind}: {len(report.done)} videos written to {out} in {time.perf_counter() - start:.1f} s"
            + (f"; no audio stream: {report.no_audio}" if report.no_audio else "")
        )
        failures += [f"{kind}/{video}: {error}" for video, error in report.failed.items()]
    return failures


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Extracts the visual sets `config.sets` and the audio sets `config.audio` into the store in `workdir`,
    holding its session. Settings, encoders and the release are checked first: a mistake creates no workdir."""
    sets, kinds = validate_config(config)
    for name in sets:
        _encoder_source(name, config.encoders[name])  # a wrong path stops now, not after hours of other sets
    try:
        paths = release.resolve(config.data)
        release.require_videos(paths, kinds)  # before hours of visual sets, not after
    except FileNotFoundError as e:
        raise JobError(str(e)) from e
    tracks = collect_tracks(paths)
    with workdir_lib.session(workdir) as stop_requested:
        _run(config, workdir, sets, kinds, paths, tracks, stop_requested)


def _run(
    config: ml_collections.ConfigDict,
    workdir: str,
    sets: tuple[str, ...],
    kinds: tuple[str, ...],
    paths: release.ReleasePaths,
    tracks: dict[str, Track],
    stop_requested: Callable[[], bool],
) -> None:
    log(
        f"{len(tracks)} tracks, {sum(len(t.frames) for t in tracks.values()):,} crops in {paths.crops}; "
        f"visual sets {list(sets)}, audio sets {list(kinds)} -> {workdir}"
    )
    mesh = sharding.make_mesh()
    with concurrent.futures.ThreadPoolExecutor(config.decode_threads or os.cpu_count()) as pool:
        for name in sets:
            extract_visual_set(name, config, tracks, workdir, mesh, pool, stop_requested)
    failures = extract_audio_sets(kinds, config, tracks, paths, workdir) if jax.process_index() == 0 else []
    if failures:
        raise JobError(f"{len(failures)} videos failed audio extraction (rerun to retry them): {failures}")
