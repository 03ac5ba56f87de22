"""Stage 4: TMF fusion ensembles, every member trained at once in one vmapped, jitted step.

Data. Every labelled track of the task (Train_Set + Validation_Set) and every test track is loaded from the
feature store once and concatenated into per-frame arrays (features, face mask, labels, label validity), which
live on the device(s), replicated. A track has N rows, frame k at row k-1: N = annotation rows for a labelled
track, the example file's frame count for a test track (labelled from the synthetic release's ground truth
when there is one, for reporting only).

Members (`abaw_jax.data.clips`): official, fold1..K, whole, reaction. Each has its own clip stream (random
offsets per epoch), class weights from its own training labels, feature standardisation from its own
training frames (per-dimension mean and std), dropout RNG, BatchNorm statistics, AdamW state and learning
rate (`optax.inject_hyperparams`, so rates may differ per member). Their states are stacked on a leading
member axis, sharded over a `member` mesh axis when there are several devices.

Step. The host sends only (members, clips, L) row indices and padding masks; the step gathers the clips
from the device arrays, and `jax.vmap` runs `member_train_step` over the member axis: a member's loss is the
task loss (eq. 1, 2, 4) over its frames that are real (not padding), have a face, and have a valid label.
On CPUs (`config.member_loop='auto'`) the same step loops over the members with `lax.map` instead, since
XLA's batched matmuls on CPU are 2.4x slower than a loop of plain ones (benchmarks/fusion_ensemble.py).

Evaluation, once per epoch: every member predicts every track with overlapping windows (`clip_len` every
`eval_stride` frames) whose outputs are averaged per frame; a member's score is the task metric over the
valid, face-present frames of its held-out tracks, and its best epoch's parameters are kept. Members with no
held-out tracks (whole, reaction) keep their last epoch. At the end the job prints per-member tables (the
layout of the paper's Tables 1-3: held-out, and test ground truth when the release has it), writes
tables.txt and scores.json, and writes every member's per-frame outputs for every track to
<workdir>/predictions (`abaw_jax.data.predictions`: sigmoid probabilities for AU, softmax for EXPR, values
for VA) and the final members to <workdir>/export/ (`models.fusion.save_ensemble`: stacked parameters and
BatchNorm statistics, standardisation, TMFConfig, member names, feature sets and dims in order, clip_len and
eval_stride: all the predictor needs to run them on new features). Rerunning with the same workdir resumes from
the last checkpoint (taken after each epoch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from abaw_jax import tasks
from abaw_jax.data import affwild2, clips, features, predictions, release
from abaw_jax.eval import losses, metrics
from abaw_jax.models import fusion
from abaw_jax.runtime import checkpointing, telemetry, train_state
from abaw_jax.runtime import config_checks as checks
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.artefacts import PREDICTIONS_DIR, SCORES_FILE
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.telemetry import log

MEMBER_AXIS = "member"
RNG_IMPLS = ("rbg", "threefry2x32")
# Settings that change how the job runs or reports, never what it trains: the evaluation batch only groups
# windows, and member_loop runs the same per-member computation batched (vmap) or one by one (map).
COSMETIC_KEYS = ("log_every", "keep_checkpoints", "eval_batch", "member_loop", "data.cache_dir")
TINY_FEATURES_DIR = "/tmp/abaw_features_tiny"  # where the tiny presets read (and stage 3's tiny preset writes)


@flax.struct.dataclass
class MemberState:
    """One member's training state; in the ensemble every leaf has a leading member axis."""

    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    feature_mean: jax.Array  # (D,)
    feature_std: jax.Array  # (D,)
    class_weights: jax.Array  # (C,); ones for VA
    nonfinite_steps: jax.Array  # (); steps skipped for a non-finite loss or gradient (train_state.guarded_update)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    members: MemberState
    best_params: Any
    best_batch_stats: Any
    best_score: jax.Array  # (M,), -inf until a member is evaluated
    best_step: jax.Array  # (M,)


@flax.struct.dataclass
class FrameData:
    """Per-frame arrays of all tracks, concatenated (rows = frames)."""

    features: jax.Array  # (R, D) float32
    face: jax.Array  # (R,) bool
    labels: jax.Array  # (R,) int32 EXPR, (R, 12) int32 AU, (R, 2) float32 VA
    valid: jax.Array  # (R,) bool


def make_optimizer(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, decay on every parameter), rate and decay in the state."""
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay
    )


def gather(data: FrameData, rows: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Clips (..., L) of the per-frame arrays; `mask` False marks padding."""
    return {
        "features": data.features[rows],
        "face": data.face[rows],
        "labels": data.labels[rows],
        "valid": data.valid[rows],
        "mask": mask,
    }


def member_train_step(
    member: MemberState,
    batch: dict[str, jax.Array],
    *,
    model: fusion.TMF,
    task: tasks.Task,
    tx: optax.GradientTransformation,
) -> tuple[MemberState, dict[str, jax.Array]]:
    """One AdamW step of one member on its batch (B, L, ...): dropout on, BatchNorm on batch statistics."""
    rng, dropout_rng = jax.random.split(member.rng)
    x = (batch["features"] - member.feature_mean) / member.feature_std
    loss_mask = batch["mask"] & batch["face"] & batch["valid"]

    def loss_fn(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": member.batch_stats},
            x,
            batch["face"],
            batch["mask"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss = losses.task_loss(task, outputs, batch["labels"], loss_mask, member.class_weights)
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(member.params)
    params, opt_state, finite, _ = train_state.guarded_update(loss, grads, member.params, member.opt_state, tx)
    batch_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), batch_stats, member.batch_stats)
    new = member.replace(
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rng=rng,
        nonfinite_steps=member.nonfinite_steps + (~finite).astype(jnp.int32),
    )
    return new, {"loss": loss, "frames": jnp.sum(loss_mask)}


def ensemble_train_step(
    state: TrainState,
    data: FrameData,
    rows: jax.Array,
    mask: jax.Array,
    *,
    model: fusion.TMF,
    task: tasks.Task,
    tx: optax.GradientTransformation,
    member_loop: str = "vmap",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """All members' steps in one jitted step: rows/mask (M, B, L) index the device-resident frame arrays.

    `member_loop` 'vmap' batches the members' matmuls (what accelerators want); 'map' runs the members one
    after another inside the step (`lax.map`), which keeps plain matrix products: faster on CPUs, whose
    batched matmuls are slower than a loop of plain ones. Both compute the same per-member updates."""
    batch = gather(data, rows, mask)
    step = functools.partial(member_train_step, model=model, task=task, tx=tx)
    if member_loop == "vmap":
        members, step_metrics = jax.vmap(step)(state.members, batch)
    elif member_loop == "map":
        members, step_metrics = jax.lax.map(lambda args: step(*args), (state.members, batch))
    else:
        raise ValueError(f"member_loop must be 'vmap' or 'map', got {member_loop!r}")
    return state.replace(step=state.step + 1, members=members), step_metrics


def keep_best(state: TrainState, improved: jax.Array, scores: jax.Array) -> TrainState:
    """Copies the current parameters of the members where `improved` (M,) into the best slots."""

    def pick(new, old):
        return jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    return state.replace(
        best_params=jax.tree.map(pick, state.members.params, state.best_params),
        best_batch_stats=jax.tree.map(pick, state.members.batch_stats, state.best_batch_stats),
        best_score=jnp.where(improved, scores, state.best_score),
        best_step=jnp.where(improved, state.step, state.best_step),
    )


def member_mesh(num_members: int, devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D `member` mesh over the most devices that divide the member count evenly."""
    devices = devices if devices is not None else jax.devices()
    size = max(k for k in range(1, len(devices) + 1) if num_members % k == 0)
    return Mesh(np.asarray(devices[:size]), (MEMBER_AXIS,))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Every leaf with a leading member axis split over `member`; the step counter replicated."""
    member = NamedSharding(mesh, P(MEMBER_AXIS))
    return jax.tree.map(lambda x: member if x.ndim else NamedSharding(mesh, P()), state)


# --------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class LoadedData:
    tracks: clips.Tracks
    splits: dict[str, str]  # track -> Train_Set | Validation_Set | test
    features: np.ndarray
    face: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    set_dims: dict[str, int]


def open_store(config: ml_collections.ConfigDict) -> tuple[features.FeatureStore, list[str]]:
    directory = pathlib.Path(config.features_dir) if config.features_dir else None
    if directory is None or not directory.is_dir():
        preset = ":tiny" if config.features_dir == TINY_FEATURES_DIR else ""
        raise JobError(
            f"config.features_dir={config.features_dir!r} is not a feature store folder; make it with: "
            f"python -m abaw_jax.main --config=configs/extract_features.py{preset} "
            f"--workdir={config.features_dir or '<features dir>'}"
        )
    names = list(checks.names(config, "visual_sets") + checks.names(config, "audio_sets"))
    if not names:
        raise JobError("config.visual_sets and config.audio_sets name no feature set")
    available = sorted(p.name for p in directory.iterdir() if p.is_dir())
    missing = [n for n in names if n not in available]
    if missing:
        raise JobError(
            f"config.visual_sets/audio_sets name {missing}, which the store {directory} lacks; it has {available}"
        )
    try:
        store = features.FeatureStore({n: directory / n for n in names})
    except features.FeatureStoreError as e:
        raise JobError(str(e)) from e
    for key, kind in (("visual_sets", "visual"), ("audio_sets", "audio")):
        wrong = [n for n in checks.names(config, key) if store.sets[n].kind != kind]
        if wrong:
            raise JobError(f"config.{key} names {wrong}, which are not {kind} feature sets in {directory}")
    return store, names


def load_data(
    config: ml_collections.ConfigDict,
    task: tasks.Task,
    paths: release.ReleasePaths,
    store: features.FeatureStore,
    names: list[str],
) -> LoadedData:
    """Every labelled track (all annotation rows) and every test track, concatenated."""
    try:
        task_dir = affwild2.find_task_dir(paths.annotations, task.name)
    except FileNotFoundError as e:
        raise JobError(f"config.data.annotations: {e}") from e
    label_files: dict[str, tuple[pathlib.Path, str]] = {}
    for split in affwild2.SPLITS:
        for path in sorted((task_dir / split).glob("*.txt")):
            if path.stem in label_files:
                raise JobError(f"{path}: {path.stem} is also in {label_files[path.stem][0]}")
            label_files[path.stem] = (path, split)
    if not label_files:
        raise JobError(f"config.data.annotations: no {task.name} annotation files under {task_dir}")
    template = affwild2.read_submission_template(paths.example_file(task), task.name)
    test_names = affwild2.read_video_list(paths.test_list(task))
    truth_dir = paths.ground_truth_dir(task)

    lengths, splits, parsed = {}, {}, {}
    for track, (path, split) in label_files.items():
        parsed[track] = affwild2.parse_annotation_file(path, task.name)
        lengths[track], splits[track] = len(parsed[track][0]), split
    for track in test_names:
        count = len(template.frames_of(track))
        if count == 0:
            raise JobError(
                f"{paths.example_file(task)} has no rows for test video {track!r} (listed in {paths.test_list(task)})"
            )
        lengths[track], splits[track] = count, "test"
        truth = truth_dir / f"{track}.txt" if truth_dir else None
        if truth is not None and truth.exists():
            parsed[track] = affwild2.parse_annotation_file(truth, task.name)
    tracks = clips.Tracks.from_lengths(lengths)
    try:
        dim = store.check(names, tracks.names)
    except features.FeatureStoreError as e:
        raise JobError(f"{e} (config.features_dir={config.features_dir})") from e
    set_dims = {n: store.sets[n].dim for n in names}

    rows = tracks.num_rows
    x = np.zeros((rows, dim), np.float32)
    face = np.zeros(rows, bool)
    label_shape = () if task.kind == "multiclass" else (task.num_outputs,)
    labels = np.zeros((rows,) + label_shape, np.float32 if task.kind == "continuous" else np.int32)
    valid = np.zeros(rows, bool)
    for i, track in enumerate(tracks.names):
        start, n = int(tracks.offset[i]), int(tracks.length[i])
        try:
            x[start : start + n], face[start : start + n] = store.load(track, names, n)
        except features.FeatureStoreError as e:
            raise JobError(f"{e} (config.features_dir={config.features_dir})") from e
        if track in parsed:
            track_labels, track_valid = parsed[track]
            k = min(n, len(track_labels))
            labels[start : start + k] = (
                np.maximum(track_labels[:k], 0) if task.kind != "continuous" else track_labels[:k]
            )
            valid[start : start + k] = track_valid[:k]
    return LoadedData(tracks, splits, x, face, labels, valid, set_dims)


def _rows_of(tracks: clips.Tracks, names: tuple[str, ...]) -> np.ndarray:
    if not names:
        return np.zeros(0, np.int64)
    return np.concatenate(
        [
            np.arange(
                tracks.offset[tracks.position(n)], tracks.offset[tracks.position(n)] + tracks.length[tracks.position(n)]
            )
            for n in names
        ]
    )


def member_constants(task: tasks.Task, data: LoadedData, member: clips.Member) -> dict[str, np.ndarray]:
    """Class weights and feature standardisation from the member's own training frames."""
    rows = _rows_of(data.tracks, member.train)
    present = rows[data.face[rows]]
    present = present if len(present) else rows
    mean = data.features[present].mean(axis=0)
    std = data.features[present].std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    if task.kind == "continuous":
        weights = np.ones(task.num_outputs, np.float32)
    else:
        usable = rows[data.valid[rows] & data.face[rows]]
        weights = losses.class_weights(task, data.labels[usable], np.ones(len(usable), bool))
    return {
        "feature_mean": mean.astype(np.float32),
        "feature_std": std.astype(np.float32),
        "class_weights": weights.astype(np.float32),
    }


def member_learning_rates(config: ml_collections.ConfigDict, members: list[clips.Member]) -> np.ndarray:
    rates = {m.name: float(config.learning_rate) for m in members}
    for item in filter(None, (s.strip() for s in str(config.member_learning_rates).split(","))):
        name, _, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if name.strip() not in rates or not rate > 0:
            raise JobError(
                f"config.member_learning_rates: expected 'member=rate' with a member of this run "
                f"({list(rates)}) and a positive rate, found {item!r}"
            )
        rates[name.strip()] = rate
    return np.array([rates[m.name] for m in members], np.float32)


# ---------------------------------------------------------------------------------------------- run


def validate_config(config: ml_collections.ConfigDict) -> tasks.Task:
    """The task, after checking every config value this job reads (not the feature store)."""
    try:
        task = tasks.get_task(config.task)
    except ValueError as e:
        raise JobError(f"config.task: {e}") from e
    for key in (
        "clip_len",
        "batch_clips",
        "num_epochs",
        "eval_stride",
        "eval_batch",
        "log_every",
        "keep_checkpoints",
        "model.proj_dim",
        "model.width",
        "model.depth",
        "model.num_heads",
        "model.mlp_dim",
        "model.head_dim",
    ):
        checks.integer(config, key, minimum=1)
    for key in ("seed", "fold_seed"):
        checks.integer(config, key, minimum=0)
    checks.number(config, "model.dropout", minimum=0, maximum=1)
    folds = [n for n in checks.names(config, "members") if n.startswith("fold")]
    checks.integer(config, "num_folds", minimum=2 if folds else 1)
    if config.eval_stride > config.clip_len:
        raise JobError(
            f"config.eval_stride={config.eval_stride} must not exceed config.clip_len={config.clip_len} "
            "(windows must overlap or touch so every frame is predicted)"
        )
    if config.member_loop not in ("auto", "vmap", "map"):
        raise JobError(f"config.member_loop must be 'auto', 'vmap' or 'map', got {config.member_loop!r}")
    if config.rng_impl not in RNG_IMPLS:
        raise JobError(f"config.rng_impl must be one of {RNG_IMPLS}, got {config.rng_impl!r}")
    checks.number(config, "learning_rate", minimum=0, exclusive=True)
    checks.number(config, "weight_decay", minimum=0)
    return task


def model_config(config: ml_collections.ConfigDict, task: tasks.Task, input_dim: int) -> fusion.TMFConfig:
    m = config.model
    try:
        return fusion.TMFConfig(
            input_dim=input_dim,
            num_outputs=task.num_outputs,
            bounded=task.kind == "continuous",
            proj_dim=m.proj_dim,
            width=m.width,
            depth=m.depth,
            num_heads=m.num_heads,
            mlp_dim=m.mlp_dim,
            head_dim=m.head_dim,
            dropout=m.dropout,
        )
    except ValueError as e:
        raise JobError(f"config.model: {e}") from e


def init_state(
    rng: jax.Array,
    constants: dict[str, jax.Array],
    learning_rates: jax.Array,
    *,
    cfg: fusion.TMFConfig,
    tx: optax.GradientTransformation,
) -> TrainState:
    """The stacked state of len(learning_rates) fresh members (member i from fold_in(rng, i))."""
    count = learning_rates.shape[0]
    # lax.map, not vmap: the member initialisations compile once as a loop body (vmap compiles 2-3x slower).
    variables = jax.lax.map(lambda i: fusion.init_variables(cfg, jax.random.fold_in(rng, 2 * i)), jnp.arange(count))

    def one(params, lr):
        opt_state = tx.init(params)
        opt_state.hyperparams["learning_rate"] = lr
        return opt_state

    members = MemberState(
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=jax.vmap(one)(variables["params"], learning_rates),
        rng=jax.vmap(lambda i: jax.random.fold_in(rng, 2 * i + 1))(jnp.arange(count)),
        feature_mean=constants["feature_mean"],
        feature_std=constants["feature_std"],
        class_weights=constants["class_weights"],
        nonfinite_steps=jnp.zeros((count,), jnp.int32),
    )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        members=members,
        best_params=members.params,
        best_batch_stats=members.batch_stats,
        best_score=jnp.full((count,), -jnp.inf, jnp.float32),
        best_step=jnp.zeros((count,), jnp.int32),
    )


def member_scores(
    outputs: jax.Array, labels: jax.Array, masks: jax.Array, *, task: tasks.Task
) -> tuple[jax.Array, jax.Array]:
    """(metric (M,), per-class (M, C)) of every member's per-frame outputs (M, R, C) over its rows masks (M, R)."""
    return jax.vmap(lambda o, m: metrics.task_scores(task, o, labels, m))(outputs, masks)


def _row_masks(data: LoadedData, selections: list[tuple[str, ...]]) -> np.ndarray:
    """(M, R) masks of the valid, face-present rows of each member's selected tracks."""
    masks = np.zeros((len(selections), data.tracks.num_rows), bool)
    for i, names in enumerate(selections):
        masks[i, _rows_of(data.tracks, names)] = True
    return masks & data.valid & data.face


def format_table(task: tasks.Task, title: str, rows: dict[str, tuple[float, np.ndarray]]) -> str:
    """The paper's Tables 1-3 layout: a row per member, a column per class, then the average."""
    percent = task.kind != "continuous"
    fmt = (lambda v: f"{100 * v:.2f}") if percent else (lambda v: f"{v:.4f}")
    lines = [title, "\t".join(["Member", *task.label_names, "Avg."])]
    for name, (mean, per_class) in rows.items():
        lines.append("\t".join([name, *(fmt(v) for v in per_class), fmt(mean)]))
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the ensemble in `workdir`, holding its session; writes predictions and tables and
    returns the scores."""
    task = validate_config(config)
    with workdir_lib.session(workdir) as stop_requested:
        return _run(config, workdir, task, stop_requested)


def _run(
    config: ml_collections.ConfigDict, workdir: str, task: tasks.Task, stop_requested: Callable[[], bool]
) -> dict[str, Any]:
    store, set_names = open_store(config)
    try:
        paths = release.resolve(config.data)
    except FileNotFoundError as e:
        raise JobError(str(e)) from e
    data = load_data(config, task, paths, store, set_names)
    labelled = {t: s for t, s in data.splits.items() if s != "test"}
    reaction = None
    if paths.reaction_list is not None:
        reaction = affwild2.read_video_list(paths.reaction_list)
    try:
        members = clips.select_members(
            list(checks.names(config, "members")),
            labelled,
            num_folds=config.num_folds,
            fold_seed=config.fold_seed,
            reaction_videos=reaction,
        )
        labelled_frames = {t: int(data.valid[_rows_of(data.tracks, (t,))].sum()) for t in labelled}
        clips.check_labelled(members, labelled_frames, task.name)
        constants = [member_constants(task, data, m) for m in members]
    except (clips.MemberError, ValueError) as e:
        raise JobError(f"config.members: {e}") from e
    learning_rates = member_learning_rates(config, members)
    num_members = len(members)

    cfg = model_config(config, task, data.features.shape[1])
    model = fusion.TMF(cfg)
    tx = make_optimizer(config.learning_rate, config.weight_decay)
    mesh = member_mesh(num_members)
    replicated = NamedSharding(mesh, P())
    member_sharding = NamedSharding(mesh, P(MEMBER_AXIS))
    stacked = {k: np.stack([c[k] for c in constants]) for k in constants[0]}
    init_fn = functools.partial(init_state, cfg=cfg, tx=tx)
    rng = jax.random.key(config.seed, impl=config.rng_impl)
    abstract = jax.eval_shape(init_fn, rng, stacked, learning_rates)
    shardings = state_shardings(abstract, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)(rng, stacked, learning_rates)

    frame_data = jax.device_put(
        FrameData(features=data.features, face=data.face, labels=data.labels, valid=data.valid), replicated
    )
    samplers = [
        clips.ClipSampler(
            data.tracks,
            m.train,
            clip_len=config.clip_len,
            batch_clips=config.batch_clips,
            seed=config.seed,
            member_index=i,
        )
        for i, m in enumerate(members)
    ]
    steps_per_epoch = max(math.ceil(s.clips_per_epoch() / config.batch_clips) for s in samplers)
    total_steps = steps_per_epoch * config.num_epochs
    log(
        f"TMF {task.name}: {num_members} members {[m.name for m in members]}, "
        f"{sum(x.size for x in jax.tree.leaves(state.members.params)) // num_members:,} parameters each, "
        f"features {data.set_dims} ({data.features.shape[1]}-d), {len(data.tracks.names)} tracks "
        f"({data.tracks.num_rows:,} frames, {data.features.nbytes / 2**20:.1f} MiB on the device), "
        f"mesh {dict(mesh.shape)}, members {config.member_loop}, {steps_per_epoch} steps/epoch x "
        f"{config.num_epochs} epochs"
    )

    description = {
        "task": task.name,
        "model": dataclasses.asdict(cfg),
        "feature_sets": data.set_dims,
        "members": [m.name for m in members],
    }
    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        model_description=description,
        with_data=False,
    )
    try:
        latest, restored = checkpointer.restore_latest(checkpointing.abstract_with_shardings(abstract, shardings))
    except checkpointing.CheckpointMismatchError as e:
        checkpointer.close()
        raise JobError(str(e)) from e
    if latest is not None:
        state = restored
        log(f"Resumed from {checkpointer.directory} at step {latest}")

    member_loop = config.member_loop
    if member_loop == "auto":
        member_loop = "map" if jax.devices()[0].platform == "cpu" else "vmap"
    step_fn = jax.jit(
        functools.partial(ensemble_train_step, model=model, task=task, tx=tx, member_loop=member_loop),
        in_shardings=(shardings, replicated, member_sharding, member_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    # What the host reads comes out replicated: every process of a multi-host run holds all of it.
    predict_fn = jax.jit(
        functools.partial(fusion.ensemble_predict, model=model, kind=task.kind), out_shardings=replicated
    )
    to_host = jax.jit(lambda tree: tree, out_shardings=replicated)
    keep_best_fn = jax.jit(keep_best, out_shardings=shardings, donate_argnums=0)
    heldout_masks = _row_masks(data, [m.heldout for m in members])
    has_heldout = heldout_masks.any(axis=1)
    score_fn = jax.jit(functools.partial(member_scores, task=task), out_shardings=replicated)

    def predict_all(params, batch_stats) -> np.ndarray:
        """(M, R, C) per-frame outputs of every member on every track, windows averaged."""

        def apply(rows, mask):
            rows, mask = jax.device_put((rows, mask), replicated)
            return predict_fn(
                params,
                batch_stats,
                state.members.feature_mean,
                state.members.feature_std,
                frame_data.features,
                frame_data.face,
                rows,
                mask,
            )

        return clips.windowed_outputs(
            apply, data.tracks, data.tracks.names, config.clip_len, config.eval_stride, config.eval_batch
        )

    is_main = jax.process_index() == 0
    writer = telemetry.MetricWriter(workdir, enabled=is_main)
    step = int(jax.device_get(state.step))
    start_time, first_step = time.perf_counter(), step
    try:
        while step < total_steps:
            if stop_requested():
                checkpointer.stop_for_sigterm(step, state, None, checkpointer.latest_step())
            batches = [s.batch(step) for s in samplers]
            rows, mask = jax.device_put(
                (np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])), member_sharding
            )
            with jax.transfer_guard("disallow"):
                state, step_metrics = step_fn(state, frame_data, rows, mask)
            step += 1
            if step % config.log_every == 0 or step % steps_per_epoch == 0:
                losses_now = np.asarray(step_metrics["loss"])
                rate = (step - first_step) * config.batch_clips * num_members / (time.perf_counter() - start_time)
                log(
                    f"step {step}/{total_steps} | loss "
                    + " ".join(f"{m.name} {loss:.4f}" for m, loss in zip(members, losses_now))
                    + f" | {rate:.1f} clips/s"
                )
                writer.write(step, {f"loss/{m.name}": loss for m, loss in zip(members, losses_now)})
            if step % steps_per_epoch == 0:
                train_state.stop_if_nonfinite(
                    to_host(state.members.nonfinite_steps),
                    step,
                    " ".join(f"{m.name} {loss:.4f}" for m, loss in zip(members, np.asarray(step_metrics["loss"]))),
                    checkpointer.latest_step(),
                    checkpointer.directory,
                    [m.name for m in members],
                )
                outputs = predict_all(state.members.params, state.members.batch_stats)
                scores = np.where(has_heldout, np.asarray(score_fn(outputs, data.labels, heldout_masks)[0]), -np.inf)
                improved = scores > np.asarray(to_host(state.best_score))
                state = keep_best_fn(state, improved, scores.astype(np.float32))
                epoch = step // steps_per_epoch
                log(
                    f"epoch {epoch}/{config.num_epochs} held-out {task.metric_name}: "
                    + " ".join(f"{m.name} {s:.4f}" for m, s in zip(members, scores) if m.heldout)
                )
                writer.write(step, {f"heldout/{m.name}": s for m, s in zip(members, scores) if m.heldout})
                checkpointer.save(step, state)
    finally:
        checkpointer.close()
        writer.close()

    pick = jax.jit(
        lambda best, last: jax.tree.map(
            lambda b, last_value: jnp.where(has_heldout.reshape((-1,) + (1,) * (b.ndim - 1)), b, last_value), best, last
        )
    )
    final_params = pick(state.best_params, state.members.params)
    final_stats = pick(state.best_batch_stats, state.members.batch_stats)
    outputs = predict_all(final_params, final_stats)
    export = to_host((final_params, final_stats, state.members.feature_mean, state.members.feature_std))
    if is_main:
        fusion.save_ensemble(
            os.path.join(workdir, fusion.EXPORT_DIR),
            fusion.EnsembleExport(
                task=task.name,
                config=cfg,
                members=tuple(m.name for m in members),
                feature_sets=data.set_dims,
                clip_len=config.clip_len,
                eval_stride=config.eval_stride,
                params=export[0],
                batch_stats=export[1],
                feature_mean=export[2],
                feature_std=export[3],
            ),
        )
    return _report(
        workdir, task, data, members, outputs, np.asarray(to_host(state.best_step)), paths, score_fn, write=is_main
    )


def _report(
    workdir: str,
    task: tasks.Task,
    data: LoadedData,
    members: list[clips.Member],
    outputs: np.ndarray,
    best_step: np.ndarray,
    paths: release.ReleasePaths,
    score_fn,
    *,
    write: bool = True,
) -> dict[str, Any]:
    """Prints the per-member tables and scores, and (when `write`: process 0) writes them and the predictions
    folder."""
    test_tracks = tuple(t for t, s in data.splits.items() if s == "test")
    reaction_list = affwild2.read_video_list(paths.reaction_list) if paths.reaction_list is not None else ()
    reaction_tests = tuple(t for t in test_tracks if affwild2.is_listed(t, reaction_list))

    def table(selections: list[tuple[str, ...]]) -> dict[str, tuple[float, np.ndarray]]:
        masks = _row_masks(data, selections)
        mean, per_class = jax.device_get(score_fn(outputs, data.labels, masks))
        return {m.name: (float(mean[i]), per_class[i]) for i, m in enumerate(members) if masks[i].any()}

    heldout = table([m.heldout for m in members])
    test_scores = table([test_tracks] * len(members))
    reaction_scores = table([reaction_tests] * len(members))
    tables = [
        format_table(
            task,
            f"{task.name} held-out {task.metric_name} (each member on its own held-out videos, best epoch)",
            heldout,
        )
    ]
    if test_scores:
        tables.append(format_table(task, f"{task.name} test ground truth ({len(test_tracks)} videos)", test_scores))
    if reaction_scores:
        tables.append(
            format_table(
                task,
                f"{task.name} test ground truth, reaction videos only ({len(reaction_tests)} videos)",
                reaction_scores,
            )
        )
    text = "\n\n".join(tables)
    log(text)

    def as_json(table):
        return {
            name: {"metric": mean, "per_class": dict(zip(task.label_names, map(float, per_class)))}
            for name, (mean, per_class) in table.items()
        }

    result = {
        "task": task.name,
        "heldout": as_json(heldout),
        "test": as_json(test_scores),
        "test_reaction": as_json(reaction_scores),
        "members": {
            m.name: {"train": list(m.train), "heldout": list(m.heldout), "best_step": int(s)}
            for m, s in zip(members, best_step)
        },
    }
    if not write:
        return result
    pathlib.Path(workdir, "tables.txt").write_text(text + "\n", encoding="utf-8")
    pathlib.Path(workdir, SCORES_FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    writer = predictions.PredictionWriter(os.path.join(workdir, PREDICTIONS_DIR), task)
    for i, track in enumerate(data.tracks.names):
        start, n = int(data.tracks.offset[i]), int(data.tracks.length[i])
        writer.add_track(track, data.splits[track], data.face[start : start + n])
        for j, member in enumerate(members):
            role = (
                "test"
                if data.splits[track] == "test"
                else "train"
                if track in member.train
                else "heldout"
                if track in member.heldout
                else "other"
            )
            writer.write(member.name, track, outputs[j, start : start + n], role)
    writer.flush()
    log(f"Wrote {len(members)} members' predictions for {len(data.tracks.names)} tracks to {writer.directory}")
    return result
