"""Stage 2: fine-tune a pretrained ViT encoder on one ABAW task (AU, EXPR or VA), one readable loop.

Model: the encoder with global average pooling over the patch tokens, `fc_norm` and a linear head (the
official MAE fine-tuning model); VA outputs pass through tanh, so they lie in [-1, 1]. Losses (paper eq. 1,
2, 4, `eval.losses`): weighted BCE per AU, weighted CE per expression, (1 - CCC_V) + (1 - CCC_A) over the
batch; class weights default to `max count / count` over the training labels. AdamW with layer-wise lr
decay, drop path, linear warmup then per-step cosine.

Sharding follows the pretraining job: a (data, fsdp) mesh, each process reads its slice of the global
batch (`data.frame_pipeline`), one jitted step with explicit shardings and a donated state, run under a
transfer guard. Every `eval_every` steps (and at the end) the model scores every frame of the evaluation
split: the task metric (for EXPR also the accuracy) and its per-class breakdown are printed and appended to
`metrics.jsonl`, and the parameters are kept in `best/` when the metric improves.

The frames are Aff-Wild2's (with extra EXPR image folders), or those of another release (`config.data.source`:
AffectNet, RAF-DB or BP4D in its official layout, or its synthetic mini-release), trained on its training split
and scored on its own evaluation split, the metric averaged over the labels the source has
(`tasks.SOURCE_LABELS`: e.g. 7 of the 8 EXPR classes, 10 of the 12 AUs) and named so. Each evaluation of such a
run also scores the Aff-Wild2 validation split of `config.data`'s release (unless `config.data.affwild2_eval` is
False) with the same metric over the same labels; it is logged as `eval_affwild2_*` and kept beside the best step's
scores as `affwild2_*`, while the best step is still picked by the source's own metric.

Rerunning with the same workdir resumes parameters, optimizer state, step, RNG, data iterator and the
best-so-far. At the end the best parameters are exported to `export/encoder` (params_io, with head),
`export/encoder_official.*` (official layout) and `export/finetune.json` (task, output transform, metric name,
best step and its scores, with the Aff-Wild2 validation scores of that step for another source).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from abaw_jax import tasks
from abaw_jax.data import (
    affectnet,
    bp4d,
    device_images,
    frame_pipeline,
    mae_pipeline,
    rafdb,
    release,
    synthetic_sources,
)
from abaw_jax.eval import losses, metrics
from abaw_jax.models import encoders, flops, params_io, torch_weights
from abaw_jax.models.vit import ATTENTION_IMPLEMENTATIONS, VIT_SIZES, ViT, ViTConfig
from abaw_jax.runtime import checkpointing, optimizer, sharding, telemetry, train_state
from abaw_jax.runtime import config_checks as checks
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.artefacts import BEST_FILE, FINETUNE_EXPORT
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.telemetry import log
from abaw_jax.runtime.train_state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Where the training frames come from: Aff-Wild2 (`config.data`'s release) or one other source (`data.affectnet`,
# `data.rafdb`, `data.bp4d`), whose labels map onto the task by `tasks.SOURCE_LABELS`.
SOURCES = ("affwild2", *synthetic_sources.SOURCES)
TINY_PRETRAIN_WORKDIR = "/tmp/abaw_mae_tiny"
# Settings that change how the job runs or reports, never what it trains (eval_every is not one: it decides
# which step is kept as best).
COSMETIC_KEYS = (
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
    "model.remat",
    "data.worker_count",
    "data.worker_buffer_size",
    "data.cache_dir",
    "data.affwild2_eval",  # scores the model on Aff-Wild2 as well; the source's own metric picks the best step
)


def outputs_from_logits(task: tasks.Task, logits: jax.Array) -> jax.Array:
    """What the loss takes: AU / EXPR logits, VA values bounded to [-1, 1] by tanh."""
    return jnp.tanh(logits) if task.kind == "continuous" else logits


def scores_from_logits(task: tasks.Task, logits: jax.Array) -> jax.Array:
    """What the metric takes: AU probabilities, EXPR logits, VA values."""
    return jax.nn.sigmoid(logits) if task.kind == "binary" else outputs_from_logits(task, logits)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: ViT,
    task: tasks.Task,
    class_weights: jax.Array | None,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    x = device_images.prepare_images(batch["image"], batch["box"], batch["flip"], image_size=model.config.image_size)
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_rng})
        return losses.task_loss(task, outputs_from_logits(task, logits), batch["label"], batch["mask"], class_weights)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    new_state, grad_norm = train_state.apply_gradients(state, loss, grads, tx)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step)}


def eval_step(
    params: Any, batch: dict[str, jax.Array], *, model: ViT, task: tasks.Task
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    x = device_images.prepare_images(batch["image"], batch["box"], image_size=model.config.image_size)
    logits = model.apply({"params": params}, x)
    return scores_from_logits(task, logits), batch["label"], batch["mask"], batch["index"]


def validate_config(config: ml_collections.ConfigDict) -> tasks.Task:
    """The task, after checking every config value this job reads (not the encoder or the release)."""
    try:
        task = tasks.get_task(config.task)
    except ValueError as e:
        raise JobError(f"config.task: {e}") from None
    for key in (
        "batch_size",
        "eval_batch_size",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "model.image_size",
        "data.worker_buffer_size",
        "data.synthetic_videos",
        "data.synthetic_frames_per_video",
    ):
        checks.integer(config, key, minimum=1)
    for key in (
        "total_steps",
        "warmup_steps",
        "eval_every",
        "num_epochs",
        "warmup_epochs",
        "seed",
        "data.worker_count",
        "data.fold_seed",
    ):
        checks.integer(config, key, minimum=0)
    if not config.total_steps and not config.num_epochs:
        raise JobError("config.total_steps and config.num_epochs are both 0: set one of them")
    checks.number(config, "base_lr", minimum=0, exclusive=True)
    checks.fraction(config, "b1", inclusive=True)
    checks.fraction(config, "b2", inclusive=True)
    checks.number(config, "weight_decay", minimum=0)
    checks.number(config, "grad_clip", minimum=0)
    checks.number(config, "layer_decay", minimum=0, maximum=1)
    if config.layer_decay == 0:
        raise JobError(f"config.layer_decay must be in (0, 1], got {config.layer_decay!r}")
    checks.number(config, "drop_path", minimum=0)
    if config.drop_path >= 1:
        raise JobError(f"config.drop_path must be in [0, 1), got {config.drop_path!r}")
    checks.choice(config, "model.size", VIT_SIZES)
    checks.choice(config, "model.dtype", DTYPES)
    if config.data.split not in frame_pipeline.SPLIT_CHOICES:
        raise JobError(f"config.data.split must be one of {frame_pipeline.SPLIT_CHOICES}, got {config.data.split!r}")
    scale = tuple(config.data.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise JobError(f"config.data.crop_scale must be (low, high) with 0 < low <= high <= 1, got {scale}")
    if config.data.image_folders and task.kind != "multiclass":
        raise JobError(f"config.data.image_folders holds expression images; config.task={task.name} cannot use them")
    source = checks.choice(config, "data.source", SOURCES)
    if source == "affwild2":
        if not config.data.affwild2_train and not config.data.image_folders:
            raise JobError("config.data.affwild2_train=False needs config.data.image_folders: nothing to train on")
        for key in ("source_root", "source_crops"):
            if config.data[key]:
                raise JobError(
                    f"config.data.{key} is set, but config.data.source=affwild2 does not read it; set "
                    f"config.data.source to {'/'.join(SOURCES[1:])} (or use a preset such as affectnet_expr)"
                )
    else:
        validate_source_config(config, task)
    checks.choice(config, "data.affwild2_eval", (True, False))
    weights = tuple(config.class_weights)
    if weights:
        if task.kind == "continuous":
            raise JobError(f"config.class_weights must be empty for VA (its loss is 1 - CCC), got {weights}")
        if len(weights) != task.num_outputs or min(weights) <= 0:
            raise JobError(
                f"config.class_weights must hold {task.num_outputs} positive values for "
                f"{task.name} ({', '.join(task.label_names)}), got {weights}"
            )
    for key in ("batch_size", "eval_batch_size"):
        check_batch_layout(config[key], jax.device_count(), jax.process_count(), key)
    return task


def validate_source_config(config: ml_collections.ConfigDict, task: tasks.Task) -> None:
    """The settings of a training source other than Aff-Wild2 (`config.data.source`)."""
    source = config.data.source
    if f"{source}_{task.key}" not in tasks.SOURCE_LABELS:
        offered = [s.task for s in tasks.SOURCE_LABELS.values() if s.key.startswith(source + "_")]
        raise JobError(f"config.data.source={source} has no {task.name} labels (it has {', '.join(offered)})")
    if config.data.image_folders:
        raise JobError(f"config.data.image_folders adds Aff-Wild2 EXPR images; not with config.data.source={source}")
    root = checks.path(config, "data.source_root", kind="dir", allow_empty=True)
    crops = checks.path(config, "data.source_crops", kind="dir", allow_empty=True)
    if crops and not root:
        raise JobError(
            "config.data.source_crops is set but config.data.source_root is empty (the mini-release brings its "
            "own crops): set both or neither"
        )
    if root and not crops and synthetic_sources.CROPS[source]:
        raise JobError(
            f"config.data.source_crops must name the crops of the {source} release at {root} "
            f"(python -m data_prep.prepare_sources --source={source} writes them)"
        )
    if source == "bp4d":
        checks.choice(config, "data.source_fold", tuple(bp4d.FOLDS))


def _encoder_path(config: ml_collections.ConfigDict) -> str:
    if config.encoder:
        return config.encoder
    if config.model.size == "tiny":
        if not os.path.isdir(os.path.join(TINY_PRETRAIN_WORKDIR, "export", "encoder")):
            raise JobError(
                f"config.encoder is empty and the tiny pretraining workdir {TINY_PRETRAIN_WORKDIR} has "
                "no export/encoder; make it first with: python -m abaw_jax.main "
                f"--config=configs/mae.py:tiny --workdir={TINY_PRETRAIN_WORKDIR}"
            )
        return TINY_PRETRAIN_WORKDIR
    raise JobError(
        "config.encoder is empty: set --config.encoder to a pretraining workdir, a params folder, "
        "an official MAE .pth or a transformers folder"
    )


def load_model(config: ml_collections.ConfigDict, task: tasks.Task) -> tuple[encoders.LoadedEncoder, ViT]:
    """The encoder named by the config with a fresh task head, checked against config.model.size, for
    config.model.image_size pixels (another size than the encoder's resamples its position table)."""
    path = _encoder_path(config)
    try:
        encoder = encoders.load_encoder(
            path,
            num_classes=task.num_outputs,
            drop_path_rate=config.drop_path,
            seed=config.seed,
            image_size=config.model.image_size,
        )
    except (encoders.EncoderLoadError, FileNotFoundError, ValueError) as e:
        raise JobError(f"config.encoder: {e}") from None
    cfg = encoder.config
    size = VIT_SIZES[config.model.size]
    found = dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    if found != size:
        raise JobError(
            f"config.encoder={path} is not a ViT-{config.model.size} ({size}): it has {found}; "
            "set config.model.size to match the encoder"
        )
    attention = config.model.attention
    if attention == "auto":
        attention = "cudnn" if jax.devices()[0].device_kind.startswith("NVIDIA") else "xla"
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise JobError(
            f"config.model.attention must be 'auto' or one of {ATTENTION_IMPLEMENTATIONS}, "
            f"got {config.model.attention!r}"
        )
    return encoder, ViT(cfg, dtype=DTYPES[config.model.dtype], remat=config.model.remat, attention=attention)


def source_classes(config: ml_collections.ConfigDict, task: tasks.Task) -> tuple[int, ...]:
    """Indices of the task labels the training source has, which its metric averages (Aff-Wild2: all)."""
    if config.data.source == "affwild2":
        return tuple(range(task.num_outputs))
    return tasks.SOURCE_LABELS[f"{config.data.source}_{task.key}"].covered


def metric_name(task: tasks.Task, classes: tuple[int, ...]) -> str:
    """The task metric's name; when it averages fewer labels than the task has, it says how many and which not."""
    if len(classes) == task.num_outputs:
        return task.metric_name
    unit = {"binary": "AUs", "multiclass": "classes", "continuous": "dimensions"}[task.kind]
    left_out = ", ".join(n for i, n in enumerate(task.label_names) if i not in classes)
    return f"{task.metric_name.split(' (')[0]} (mean of {len(classes)} {unit}, without {left_out})"


def load_source_frames(
    config: ml_collections.ConfigDict, task: tasks.Task
) -> tuple[frame_pipeline.LabelledFrames, frame_pipeline.LabelledFrames, str]:
    """(training frames, evaluation frames, a description) of AffectNet, RAF-DB or BP4D: the release at
    config.data.source_root with its prepared crops at config.data.source_crops, or the cached mini-release."""
    source = config.data.source
    root = config.data.source_root or synthetic_sources.cached_release(source, config.data.cache_dir or None)
    crops = config.data.source_crops
    if not config.data.source_root and synthetic_sources.CROPS[source]:
        crops = str(root / synthetic_sources.CROPS[source])
    try:
        if source == "affectnet":
            train, evaluation = affectnet.train_and_evaluation_frames(root, crops, task.name)
        elif source == "rafdb":
            train, evaluation = rafdb.train_and_evaluation_frames(root, crops or None)
        else:
            train, evaluation = bp4d.train_and_evaluation_frames(root, crops, config.data.source_fold)
    except (FileNotFoundError, ValueError) as e:
        raise JobError(str(e)) from None
    mapping = tasks.SOURCE_LABELS[f"{source}_{task.key}"]
    missing = tasks.missing_labels_message(task, train.labels, train.valid, mapping.source)
    if missing:
        log(missing)
    description = (
        f"{int(train.valid.sum()):,} training frames and {len(evaluation):,} evaluation frames of {mapping.source} "
        f"({root}; metric over {len(mapping.covered)} of {task.num_outputs} {task.name} labels)"
    )
    return train, evaluation, description


def affwild2_split(
    config: ml_collections.ConfigDict, task: tasks.Task
) -> tuple[release.ReleasePaths, frame_pipeline.LabelledFrames, frame_pipeline.LabelledFrames]:
    """(the release, training frames, evaluation frames) of `config.data.split` of `config.data`'s Aff-Wild2."""
    paths = release.resolve(config.data)
    train, evaluation = frame_pipeline.affwild2_frames(
        paths.annotations, paths.crops, task.name, split=config.data.split, fold_seed=config.data.fold_seed
    )
    return paths, train, evaluation


def load_affwild2_evaluation(
    config: ml_collections.ConfigDict, task: tasks.Task
) -> tuple[frame_pipeline.LabelledFrames, str] | None:
    """(the Aff-Wild2 evaluation frames, a description) that a run on another source is also scored on, or None
    (an Aff-Wild2 run, or config.data.affwild2_eval=False)."""
    if config.data.source == "affwild2" or not config.data.affwild2_eval:
        return None
    try:
        paths, _, evaluation = affwild2_split(config, task)
    except (FileNotFoundError, ValueError) as e:
        raise JobError(f"{e} (the Aff-Wild2 validation scores; config.data.affwild2_eval=False skips them)") from None
    description = (
        f"also scored on {int(evaluation.valid.sum()):,} Aff-Wild2 evaluation frames ({config.data.split} split of "
        f"{paths.root}{', the synthetic release' if paths.synthetic else ''})"
    )
    return evaluation, description


def load_frames(
    config: ml_collections.ConfigDict, task: tasks.Task
) -> tuple[frame_pipeline.LabelledFrames, frame_pipeline.LabelledFrames, str]:
    """(training frames, evaluation frames, a description of both) from the release and image folders."""
    if config.data.source != "affwild2":
        return load_source_frames(config, task)
    try:
        paths, train, evaluation = affwild2_split(config, task)
        parts = [train] if config.data.affwild2_train else []
        folders = [f for f in config.data.image_folders.split(",") if f.strip()]
        parts += [frame_pipeline.image_folder_frames(f.strip(), task.name) for f in folders]
    except (FileNotFoundError, ValueError) as e:
        raise JobError(str(e)) from None
    train = frame_pipeline.LabelledFrames.concatenate(parts)
    description = (
        f"{int(train.valid.sum()):,} training frames ({config.data.split} split of {paths.root}"
        f"{' + ' + ', '.join(folders) if folders else ''}), {len(evaluation):,} evaluation frames "
        f"({int(evaluation.valid.sum()):,} with a valid label)"
    )
    return train, evaluation, description


def default_class_weights(
    config: ml_collections.ConfigDict, task: tasks.Task, train: frame_pipeline.LabelledFrames
) -> np.ndarray | None:
    if task.kind == "continuous":
        return None
    if config.class_weights:
        return np.asarray(config.class_weights, np.float32)
    try:
        return losses.class_weights(task, train.labels, train.valid)
    except ValueError as e:
        raise JobError(f"class weights from the training labels: {e}; set config.class_weights") from None


def check_batch_layout(batch_size: int, num_devices: int, num_processes: int, key: str) -> None:
    if batch_size % num_devices or batch_size % num_processes:
        raise JobError(
            f"config.{key}={batch_size} must split evenly over the {num_devices} devices and {num_processes} processes"
        )


class BestParams:
    """The best parameters so far by the task metric: `<workdir>/best/step_<N>` (params_io) + `best.json`.

    `best.json` is replaced atomically after the new parameters are written, and folders it does not name
    are removed, so a kill at any point leaves one complete best.
    """

    def __init__(self, workdir: str, config: ViTConfig):
        self.directory = os.path.join(workdir, "best")
        self._file = os.path.join(workdir, BEST_FILE)
        self._config = config
        self.record: dict[str, Any] | None = None
        if os.path.exists(self._file):
            with open(self._file, encoding="utf-8") as f:
                self.record = json.load(f)
        self._clean()

    @property
    def metric(self) -> float:
        return -np.inf if self.record is None else self.record["metric"]

    def offer(self, step: int, scores: Evaluation, params: Any, affwild2: Evaluation | None = None) -> bool:
        """Keeps `params` when `scores.metric` beats the best so far (collective: every process calls it); the
        Aff-Wild2 validation scores of a run on another source, if any, are recorded beside them."""
        if scores.metric <= self.metric:
            return False
        name = f"step_{step:07d}"
        if jax.process_index() == 0 and os.path.exists(os.path.join(self.directory, name)):
            shutil.rmtree(os.path.join(self.directory, name))
        multihost_utils.sync_global_devices("best dir ready")
        params_io.save_params(os.path.join(self.directory, name), jax.device_get(params), self._config)
        self.record = {
            "step": step,
            "metric": scores.metric,
            **scores.extra(),
            "per_class": scores.per_class,
            **({} if affwild2 is None else affwild2.fields("affwild2_")),
            "params": name,
        }
        if jax.process_index() == 0:
            with open(self._file + ".tmp", "w", encoding="utf-8") as f:
                json.dump(self.record, f, indent=2)
            os.replace(self._file + ".tmp", self._file)
        self._clean()
        return True

    def load(self) -> dict[str, Any]:
        params, _ = params_io.load_params(os.path.join(self.directory, self.record["params"]))
        return params

    def _clean(self) -> None:
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        keep = None if self.record is None else self.record["params"]
        for name in os.listdir(self.directory):
            if name != keep:
                shutil.rmtree(os.path.join(self.directory, name))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation: the task metric (what picks the best step), its per-label scores over the labels it
    averages, the valid frames scored and, for expressions, the accuracy over them."""

    metric: float
    per_class: dict[str, float]
    valid: int
    accuracy: float | None

    def extra(self) -> dict[str, float]:
        """Scores recorded beside the metric (not used to pick the best step)."""
        return {} if self.accuracy is None else {"accuracy": self.accuracy}

    def fields(self, prefix: str) -> dict[str, Any]:
        """The metric, the extra scores, the valid frames and the per-label scores (a dict under `per_class`) under
        keys led by `prefix`: what `best.json` keeps of an evaluation beside the one that picks the best step."""
        return {**self._scores(prefix), f"{prefix}per_class": self.per_class}

    def scalars(self, prefix: str) -> dict[str, float]:
        """The same with one key per label (`<prefix><label>`): what `metrics.jsonl` gets."""
        return {**self._scores(prefix), **{prefix + label: v for label, v in self.per_class.items()}}

    def _scores(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}metric": self.metric,
            **{prefix + key: v for key, v in self.extra().items()},
            f"{prefix}valid_frames": self.valid,
        }

    def summary(self, name: str) -> str:
        """`<name> <metric>, <extra scores> on <N> frames` for the evaluation line."""
        extra = "".join(f", {key} {v:.4f}" for key, v in self.extra().items())
        return f"{name} {self.metric:.4f}{extra} on {self.valid:,} frames"


def evaluate(
    eval_fn,
    params: Any,
    frames: frame_pipeline.LabelledFrames,
    task: tasks.Task,
    mesh: Mesh,
    config: ml_collections.ConfigDict,
    skipped_dir: str,
) -> Evaluation:
    """The scores of every frame of `frames`, the metric averaged over the labels the training source has."""
    loader = frame_pipeline.make_eval_loader(
        frames,
        global_batch_size=config.eval_batch_size,
        worker_count=config.data.worker_count,
        worker_buffer_size=config.data.worker_buffer_size,
        skipped_records_dir=skipped_dir,
    )
    parts = []
    for local in loader:
        batch = {key: sharding.global_batch(value, mesh) for key, value in local.items()}
        with jax.transfer_guard("disallow"):
            parts.append(jax.device_get(eval_fn(params, batch)))
    # Rows back in frame order (grain workers interleave them); padding rows (index >= count) dropped.
    outputs, labels, masks, index = (np.concatenate(x) for x in zip(*parts))
    count = len(frames)
    order = np.argsort(index)[:count]
    if not np.array_equal(index[order], np.arange(count)):
        raise JobError(f"the evaluation loader did not return every frame once ({count} frames)")
    outputs, labels, masks = outputs[order], labels[order], masks[order]
    valid = int(metrics.valid_count(masks))
    if not valid:
        raise JobError(
            f"no evaluation frame with a valid label could be scored ({count} frames; corrupt "
            f"crops are listed in {skipped_dir})"
        )
    classes = source_classes(config, task)
    metric, per_class = jax.device_get(metrics.task_scores(task, outputs, labels, masks, classes=classes))
    accuracy = None
    if task.kind == "multiclass":
        accuracy = float(np.mean(outputs.argmax(-1)[masks] == labels[masks]))
    return Evaluation(
        metric=float(metric),
        per_class={task.label_names[i]: float(per_class[i]) for i in classes},
        valid=valid,
        accuracy=accuracy,
    )


def _export(params: Any, cfg: ViTConfig, task: tasks.Task, name: str, best: dict[str, Any], workdir: str) -> None:
    """Writes `export/` from the best parameters and their record (`BestParams.record`); an Aff-Wild2 metric in
    the record is named by the same `name`, averaged over the same labels."""
    params = jax.device_get(params)
    export_dir = os.path.join(workdir, "export")
    if jax.process_index() == 0 and os.path.exists(export_dir):
        shutil.rmtree(export_dir)  # an earlier run of this workdir
    multihost_utils.sync_global_devices("export dir ready")
    params_io.save_params(os.path.join(export_dir, "encoder"), params, cfg)
    if jax.process_index() == 0:
        written = torch_weights.export_official(
            torch_weights.flax_to_official(params), os.path.join(export_dir, "encoder_official")
        )
        summary = {
            "task": task.name,
            "label_names": list(task.label_names),
            "outputs": {
                "binary": "sigmoid(head) per AU",
                "multiclass": "softmax(head) over classes",
                "continuous": "tanh(head): valence, arousal",
            }[task.kind],
            "metric_name": name,
            **({"affwild2_metric_name": f"Aff-Wild2 validation {name}"} if "affwild2_metric" in best else {}),
            **{k: v for k, v in best.items() if k != "params"},
        }
        with open(os.path.join(export_dir, FINETUNE_EXPORT), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        log(
            f"Exported the fine-tuned encoder (step {best['step']}, {name} {best['metric']:.4f}): "
            + ", ".join([os.path.join(export_dir, "encoder")] + written)
        )


def run(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Runs (or resumes) fine-tuning of `config.task` in `workdir`, holding its session; returns the final state."""
    task = validate_config(config)
    with workdir_lib.session(workdir) as stop_requested:
        return _run(config, workdir, task, stop_requested)


def _run(
    config: ml_collections.ConfigDict, workdir: str, task: tasks.Task, stop_requested: Callable[[], bool]
) -> TrainState:
    num_devices, num_processes = jax.device_count(), jax.process_count()
    try:
        mesh = sharding.make_mesh(config.mesh.fsdp)
    except ValueError as e:
        raise JobError(str(e)) from None
    train_frames, eval_frames, data_description = load_frames(config, task)
    affwild2_eval = load_affwild2_evaluation(config, task)
    if affwild2_eval is not None:
        data_description += "; " + affwild2_eval[1]
    encoder, model = load_model(config, task)
    cfg = encoder.config
    weights = default_class_weights(config, task, train_frames)
    name = metric_name(task, source_classes(config, task))

    steps_per_epoch = max(int(train_frames.valid.sum()) // config.batch_size, 1)
    total_steps = config.total_steps or steps_per_epoch * config.num_epochs
    warmup_steps = config.warmup_steps or steps_per_epoch * config.warmup_epochs
    eval_every = config.eval_every or steps_per_epoch
    peak_lr = optimizer.peak_learning_rate(config.base_lr, config.batch_size)
    schedule = optimizer.learning_rate_schedule(peak_lr, warmup_steps, total_steps)
    tx = optimizer.make_optimizer(
        schedule,
        b1=config.b1,
        b2=config.b2,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        lr_scales=optimizer.layer_decay_scales(encoder.params, cfg.depth, config.layer_decay),
    )

    def init_fn(params, rng):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng,
            nonfinite_steps=jnp.zeros((), jnp.int32),
        )

    rng = jax.random.key(config.seed)
    abstract_state = jax.eval_shape(init_fn, encoder.params, rng)
    state_shardings = sharding.fsdp_shardings(abstract_state, mesh)
    state = jax.jit(init_fn, out_shardings=state_shardings)(encoder.params, rng)
    weight_text = (
        ""
        if weights is None
        else " | class weights " + " ".join(f"{n} {w:.2f}" for n, w in zip(task.label_names, weights))
    )
    log(
        f"Fine-tuning {task.name} from {encoder.source} ({encoder.kind}, ViT-{config.model.size} "
        f"{cfg.image_size}px, {optimizer.tree_size(state.params):,} parameters): {data_description}; "
        f"{num_devices} devices in {num_processes} processes, mesh {dict(mesh.shape)}, batch {config.batch_size}, "
        f"{total_steps} steps, peak lr {peak_lr:.3g}, layer decay {config.layer_decay}{weight_text}"
    )
    for note in encoder.notes:
        log(f"Encoder: {note}")

    skipped_dir = os.path.join(workdir, "skipped_records")
    loader = frame_pipeline.make_train_loader(
        train_frames,
        global_batch_size=config.batch_size,
        seed=config.seed,
        worker_count=config.data.worker_count,
        worker_buffer_size=config.data.worker_buffer_size,
        scale=tuple(config.data.crop_scale),
        skipped_records_dir=skipped_dir,
    )
    data_iter = iter(loader)

    description = {"task": task.name, "encoder_sha256": encoder.sha256, **params_io.config_to_dict(cfg)}
    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints, model_description=description
    )
    abstract = checkpointing.abstract_with_shardings(abstract_state, state_shardings)
    try:
        latest, restored = checkpointer.restore_latest(abstract, data_iter)
    except checkpointing.CheckpointMismatchError as e:
        checkpointer.close()
        raise JobError(str(e)) from None
    if latest is not None:
        state = restored
        log(f"Resumed from {checkpointer.directory} at step {latest}")

    class_weights = None if weights is None else jnp.asarray(weights)
    step_fn = jax.jit(
        functools.partial(train_step, model=model, task=task, class_weights=class_weights, tx=tx, schedule=schedule),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, task=task),
        in_shardings=(state_shardings.params, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )

    is_main = jax.process_index() == 0
    writer = telemetry.MetricWriter(workdir, enabled=is_main)
    best = BestParams(workdir, cfg)
    replicate = jax.jit(lambda tree: tree, out_shardings=sharding.replicated(mesh))
    throughput = telemetry.Throughput(
        config.batch_size,
        flops.vit_flops_per_image(cfg)["train"],
        num_devices,
        flops.device_peak_flops(jax.devices()[0]),
    )
    step = int(jax.device_get(state.step))
    first_step = step
    last_good_checkpoint = latest
    try:
        while step < total_steps:
            if stop_requested():
                checkpointer.stop_for_sigterm(step, state, data_iter, last_good_checkpoint)
            wait_start = time.perf_counter()
            local = next(data_iter)
            throughput.data_wait += time.perf_counter() - wait_start
            batch = {key: sharding.global_batch(value, mesh) for key, value in local.items()}
            with jax.transfer_guard("disallow"):
                state, step_metrics = step_fn(state, batch)
            step += 1
            if step == first_step + 1:
                jax.block_until_ready(state)
                throughput.start(step)
            is_last = step == total_steps
            log_now = step % config.log_every == 0 or step == first_step + 1 or is_last
            evaluate_now = step % eval_every == 0 or is_last
            if log_now or evaluate_now or step % config.checkpoint_every == 0:
                scalars = jax.device_get(step_metrics)
                train_state.stop_if_nonfinite(
                    state.nonfinite_steps, step, float(scalars["loss"]), last_good_checkpoint, checkpointer.directory
                )
                if log_now:
                    scalars.update(throughput.measure(step, total_steps))
                    log(telemetry.progress_line(step, total_steps, scalars))
                    writer.write(step, scalars)
            if evaluate_now:
                scores = evaluate(eval_fn, state.params, eval_frames, task, mesh, config, skipped_dir)
                affwild2 = None
                if affwild2_eval is not None:
                    affwild2 = evaluate(eval_fn, state.params, affwild2_eval[0], task, mesh, config, skipped_dir)
                improved = best.offer(step, scores, replicate(state.params), affwild2)
                log(
                    f"eval step {step}: {scores.summary(name)}{' (best so far)' if improved else ''} | "
                    + " ".join(f"{label} {v:.3f}" for label, v in scores.per_class.items())
                    + ("" if affwild2 is None else f" | Aff-Wild2 validation {affwild2.summary(name)}")
                )
                writer.write(
                    step,
                    {**scores.scalars("eval_"), **({} if affwild2 is None else affwild2.scalars("eval_affwild2_"))},
                )
                throughput.start(step)  # evaluation time is not training throughput
            if step % config.checkpoint_every == 0 or is_last:
                checkpointer.save(step, state, data_iter)
                last_good_checkpoint = step
    finally:
        checkpointer.close()
        writer.close()
    skipped = mae_pipeline.read_skipped_records(skipped_dir) if os.path.isdir(skipped_dir) else []
    if skipped:
        log(f"Skipped {len(skipped)} corrupt records (ids in {skipped_dir})")
    if best.record is None:
        raise JobError(f"no evaluation was run in {workdir} (total_steps={total_steps}); nothing to export")
    _export(best.load(), cfg, task, name, best.record, workdir)
    return state
