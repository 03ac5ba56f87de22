"""Stage 5: from the fusion job's per-member predictions to tuned, scored, ensembled labels and submission files.

One pass, in order:
  1. read the predictions folder (`abaw_jax.data.predictions`) and the release's labels for every labelled track;
     fill the frames without a face (`eval.coverage`);
  2. assemble the out-of-fold predictions (each labelled track from the fold member that held it out) and tune
     the post-processing on them (`eval.tuning`: sigma, then AU thresholds or EXPR class biases);
  3. score each member on its own held-out tracks before and after post-processing (the paper's Tables 1-3);
  4. an ablation in the layout of the paper's Table 5 (single member vs vote, SDD routing, smoothing alone, then
     the tuned AU thresholds / EXPR biases on top, static per-frame predictions vs TMF on Validation_Set and on
     the test tracks), on the test tracks when the release has their labels (the synthetic one), else on
     Validation_Set (where the whole and fold members trained on most videos: optimistic);
  5. the submission file for the test list, checked against the example file, and its test metric when the
     release has test labels; timeline plots of a few validation tracks.
Writes `tables.md`, `results.json`, `per_video.json`, `submissions/<TASK>.txt`, `plots/<track>.png` and
`final/<track>.npz` (the submitted test tracks' post-processed scores and labels, `eval.postprocess`, for comparing
with the predictor) in the workdir (names: `runtime.artefacts`); `results.json["postprocess"]` holds the tuned
post-processing as the predictor bundle reads it. `per_video.json` holds, for every score of `results.json`
(`tables/<member>/<before|after>`, `ablation/<setting>`, `test_metric`), the scored videos and their sufficient
statistics (`report.bootstrap.video_statistics`), from which the report bootstraps intervals over videos.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from abaw_jax import tasks
from abaw_jax.data import affwild2, features, release
from abaw_jax.data.predictions import STATIC_MEMBER, Predictions, PredictionsError
from abaw_jax.eval import coverage, ensemble, metrics, plots, postprocess, scene_router, submission, tuning
from abaw_jax.report import bootstrap
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.artefacts import FINAL_DIR, PER_VIDEO_FILE, PREDICTIONS_DIR, RESULTS_FILE, TABLES_FILE
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.telemetry import log

SCENE_ROUTINGS = ("list", "router", "none")
# Settings that change the figures drawn or the memory used, never a score or a submission.
COSMETIC_KEYS = ("num_plots", "tuning.chunk", "data.cache_dir")


@dataclasses.dataclass
class Tracks:
    """Padded arrays of some tracks: members' filled outputs (M, V, T, C), face/mask (V, T), labels, valid."""

    names: list[str]
    outputs: np.ndarray
    face: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    valid: np.ndarray | None

    def select(self, names: Sequence[str]) -> "Tracks":
        index = [self.names.index(n) for n in names]
        pick = lambda a: None if a is None else a[index]
        return Tracks(
            list(names), self.outputs[:, index], self.face[index], self.mask[index], pick(self.labels), pick(self.valid)
        )


def validate_config(config: ml_collections.ConfigDict) -> tasks.Task:
    """The task, after checking every config value this job reads (not the input folders)."""
    try:
        task = tasks.get_task(config.task)
    except ValueError as e:
        raise JobError(f"config.task: {e}") from None
    t = config.tuning
    checks = [
        (
            "ensemble.method",
            config.ensemble.method,
            config.ensemble.method in ensemble.METHODS,
            f"one of {ensemble.METHODS}",
        ),
        (
            "ensemble.reaction_routing",
            config.ensemble.reaction_routing,
            config.ensemble.reaction_routing in ensemble.ROUTINGS,
            f"one of {ensemble.ROUTINGS}",
        ),
        ("scene_routing", config.scene_routing, config.scene_routing in SCENE_ROUTINGS, f"one of {SCENE_ROUTINGS}"),
        ("tuning.sigmas", t.sigmas, 0 in t.sigmas and min(t.sigmas) >= 0, "non-negative values including 0"),
        ("tuning.thresholds", t.thresholds, all(0 < v < 1 for v in t.thresholds), "values in (0, 1)"),
        ("tuning.bias_rounds", t.bias_rounds, t.bias_rounds >= 0, ">= 0"),
        ("tuning.chunk", t.chunk, t.chunk >= 1, ">= 1"),
        ("num_plots", config.num_plots, config.num_plots >= 0, ">= 0"),
        ("fold_members", config.fold_members, len(config.fold_members) >= 2, "at least 2 members"),
        ("ensemble.general", config.ensemble.general, len(config.ensemble.general) >= 1, "at least one member"),
        (
            "fusion_workdir",
            config.fusion_workdir,
            bool(config.fusion_workdir or config.predictions_dir),
            "a fusion workdir (or config.predictions_dir)",
        ),
    ]
    for key, found, ok, expected in checks:
        if not ok:
            raise JobError(f"config.{key} must be {expected}, got {found!r}")
    return task


def _predictions_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    if config.predictions_dir:
        return pathlib.Path(config.predictions_dir)
    directory = pathlib.Path(config.fusion_workdir) / PREDICTIONS_DIR
    if not (directory / "manifest.json").exists():
        hint = (
            (
                f"; make it with: python -m abaw_jax.main --config=configs/fusion.py:{config.fusion_preset} "
                f"--workdir={config.fusion_workdir}"
            )
            if config.fusion_preset
            else ""
        )
        raise JobError(
            f"config.fusion_workdir={config.fusion_workdir}: no predictions ({directory / 'manifest.json'} "
            f"does not exist){hint}"
        )
    return directory


def _labels(task: tasks.Task, path: pathlib.Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels in metric form (invalid rows zeroed) and validity, checked against the predicted frame count."""
    labels, valid = affwild2.parse_annotation_file(path, task.name)
    if len(labels) != num_frames:
        raise JobError(
            f"{path}: {len(labels)} annotated frames, but the predictions have {num_frames} for this "
            "track (predictions must cover frames 1..N of the annotation file)"
        )
    shape = (-1,) + (1,) * (labels.ndim - 1)
    labels = np.where(valid.reshape(shape), labels, 0)
    return labels.astype(np.float32 if task.kind == "continuous" else np.int32), valid


def _load(
    predictions: Predictions,
    members: Sequence[str],
    names: Sequence[str],
    task: tasks.Task,
    label_files: dict[str, pathlib.Path] | None,
) -> Tracks:
    outputs, faces, labels, valid = [], [], [], []
    for name in names:
        outputs.append(np.stack([predictions.outputs(m, name) for m in members]).transpose(1, 0, 2))
        faces.append(predictions.face_mask(name))
        if label_files is not None:
            track_labels, track_valid = _labels(task, label_files[name], predictions.num_frames(name))
            labels.append(track_labels)
            valid.append(track_valid)
    stacked, mask = coverage.pad_batch(outputs)  # (V, T, M, C)
    face, _ = coverage.pad_batch(faces, stacked.shape[1])
    filled = postprocess.fill_members(stacked.transpose(2, 0, 1, 3), face, mask)
    padded = (lambda arrays: coverage.pad_batch(arrays, stacked.shape[1])[0]) if label_files is not None else None
    return Tracks(
        list(names), filled, face, mask, padded(labels) if padded else None, padded(valid) if padded else None
    )


def _score(task: tasks.Task, final: jnp.ndarray, labels: np.ndarray, valid: np.ndarray) -> tuple[float, np.ndarray]:
    """(metric, per-class) of final labels: AU 0/1, EXPR classes, VA values."""
    metric, per_class = metrics.label_scores(task, final, labels, valid)
    return float(metric), np.asarray(per_class)


def _final(task: tasks.Task, data: Tracks, use: np.ndarray, tuned: tuning.Tuned | None, method: str) -> np.ndarray:
    return tuning.final_labels(task.name, data.outputs, data.mask, use, tuned, method)


def _member_finals(task: tasks.Task, data: Tracks, tuned: tuning.Tuned | None) -> np.ndarray:
    """Each member's own final labels on every track of `data`: (M, V, T, ...)."""
    alone = np.ones((1, len(data.names)), bool)
    return np.stack(
        [
            tuning.final_labels(task.name, data.outputs[m : m + 1], data.mask, alone, tuned, "soft")
            for m in range(data.outputs.shape[0])
        ]
    )


def _per_video(task: tasks.Task, final: np.ndarray, data: Tracks, tracks: np.ndarray) -> dict:
    """The scored videos (the chosen tracks (V,) of `data`) and their sufficient statistics, for per_video.json."""
    counted = data.valid & data.mask & tracks[:, None]
    statistics = bootstrap.video_statistics(task.name, np.asarray(final), data.labels, counted)[tracks]
    return {"videos": [n for n, t in zip(data.names, tracks) if t], "statistics": statistics.tolist()}


def _scores_row(task: tasks.Task, final: np.ndarray, data: Tracks, tracks: np.ndarray) -> dict:
    """Metric and per-class scores of final labels (V, T, ...) on the chosen tracks (V,) of `data`."""
    counted = data.valid & data.mask & tracks[:, None]
    metric, per_class = _score(task, jnp.asarray(final), data.labels, counted)
    face_metric, _ = _score(task, jnp.asarray(final), data.labels, counted & data.face)
    return {
        "metric": metric,
        "per_class": per_class.tolist(),
        "metric_face_frames": face_metric,
        "frames": int(counted.sum()),
    }


def _reaction_flags(config, paths: release.ReleasePaths, names: Sequence[str], router_flags: dict[str, bool]):
    if config.scene_routing == "none":
        return np.zeros(len(names), bool)
    if config.scene_routing == "router":
        return np.array([router_flags[n] for n in names])
    if paths.reaction_list is None:
        raise JobError(
            "config.scene_routing='list' needs the release's reaction list (config.data.reaction_list); "
            "use config.scene_routing=none or router"
        )
    listed = affwild2.read_video_list(paths.reaction_list)
    return np.array([affwild2.is_listed(n, listed) for n in names])


def _scene_router(config, paths: release.ReleasePaths, predictions: Predictions) -> tuple[dict[str, bool], dict]:
    """Router predictions for every track, and its accuracy on the Validation_Set tracks."""
    base = pathlib.Path(config.features_dir)
    if not base.is_dir():
        raise JobError(
            f"config.features_dir={config.features_dir!r} is not a folder (the scene router reads the "
            "feature store's visual features)"
        )
    name = config.router_feature_set or next(
        (d.name for d in sorted(base.iterdir()) if (d / features.MANIFEST).exists()), ""
    )
    if not name:
        raise JobError(f"config.features_dir={base} holds no visual feature set (a folder with {features.MANIFEST})")
    if paths.reaction_list is None:
        raise JobError(
            "the scene router learns from the release's reaction list (config.data.reaction_list), which does not exist"
        )
    store = features.FeatureStore({name: base / name})
    listed = affwild2.read_video_list(paths.reaction_list)
    names = predictions.tracks()
    store.check([name], names)
    stats = np.stack([scene_router.video_statistics(*store.load(n, [name], predictions.num_frames(n))) for n in names])
    truth = np.array([affwild2.is_listed(n, listed) for n in names])
    train = np.array([predictions.split(n) == "Train_Set" for n in names])
    held_out = np.array([predictions.split(n) == "Validation_Set" for n in names])
    try:
        router, fit = scene_router.fit_and_validate(stats, truth, train, held_out)
    except ValueError as e:
        raise JobError(f"scene router on the Train_Set tracks: {e}") from None
    report = {
        "feature_set": name,
        "train_tracks": fit["train_videos"],
        "validation_tracks": fit["validation_videos"],
        "validation_accuracy": fit["validation_accuracy"],
    }
    log(
        f"scene router on {name!r}: {report['validation_tracks']} Validation_Set tracks, accuracy "
        f"{report['validation_accuracy']:.3f}"
    )
    return dict(zip(names, router.predict(stats).tolist())), report


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    task = validate_config(config)
    if jax.process_index() != 0:
        # Evaluation is host work on files with process-local jits; one process writes its files.
        log(f"evaluation runs on process 0; process {jax.process_index()} waits")
        return {}
    try:
        with workdir_lib.session(workdir):
            return _run(config, pathlib.Path(workdir), task)
    except (
        PredictionsError,
        submission.SubmissionError,
        affwild2.AnnotationError,
        features.FeatureStoreError,
        FileNotFoundError,
    ) as e:
        raise JobError(str(e)) from None


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path, task: tasks.Task) -> dict:
    predictions = Predictions(_predictions_dir(config))
    if predictions.task.name != task.name:
        raise JobError(f"{predictions.directory} holds {predictions.task.name} predictions; config.task={task.name}")
    paths = release.resolve(config.data)
    fold_members = list(config.fold_members)
    general = list(config.ensemble.general)
    members = ensemble.required_members(config)
    predictions.require_members(members)
    index = {m: i for i, m in enumerate(members)}
    test_list = _check_test_inputs(predictions, paths, task)
    workdir.mkdir(parents=True, exist_ok=True)

    # 1. Labelled tracks, with every member's filled outputs.
    task_dir = affwild2.find_task_dir(paths.annotations, task.name)
    labelled = [t for t in predictions.tracks() if predictions.split(t) != "test"]
    label_files = {t: task_dir / predictions.split(t) / f"{t}.txt" for t in labelled}
    missing = [str(p) for p in label_files.values() if not p.exists()]
    if missing:
        raise JobError(f"{len(missing)} predicted tracks have no annotation file, e.g. {missing[:3]}")
    data = _load(predictions, members, labelled, task, label_files)
    log(f"{task.name}: {len(labelled)} labelled tracks, {int(data.mask.sum())} frames, members {members}")

    # 2. Out-of-fold predictions, and tuning on them.
    oof_member = [index[predictions.out_of_fold_member(t, fold_members)] for t in labelled]
    oof = data.outputs[np.array(oof_member), np.arange(len(labelled))]
    tuned = tuning.tune(
        task.name,
        oof,
        data.labels,
        data.valid,
        data.mask,
        config.tuning.sigmas,
        threshold_grid=config.tuning.thresholds if task.kind == "binary" else (),
        bias_grid=config.tuning.expr_bias if task.kind == "multiclass" else (),
        bias_rounds=config.tuning.bias_rounds,
        chunk=config.tuning.chunk,
    )
    tuning_rows = [
        (s["step"], " ".join(f"{v:g}" for v in np.atleast_1d(s["value"])), s["before"], s["after"]) for s in tuned.steps
    ]

    # 3. Tables 1-3: each member on its own held-out tracks, and the out-of-fold assembly.
    finals = {stage: _member_finals(task, data, post) for stage, post in (("before", None), ("after", tuned))}
    every = np.arange(len(labelled))
    per_member, per_video = {}, {}
    for member in [config.official_member] + fold_members:
        held_out = np.array([predictions.role(member, t) == "heldout" for t in labelled])
        if not held_out.any():
            raise JobError(f"member {member!r} holds out no labelled track of {predictions.directory}")
        per_member[member] = {
            "tracks": int(held_out.sum()),
            **{stage: _scores_row(task, finals[stage][index[member]], data, held_out) for stage in finals},
        }
        for stage in finals:
            per_video[f"tables/{member}/{stage}"] = _per_video(task, finals[stage][index[member]], data, held_out)
    oof_finals = {stage: finals[stage][np.array(oof_member), every] for stage in finals}
    all_labelled = np.ones(len(labelled), bool)
    per_member["out-of-fold"] = {
        "tracks": len(labelled),
        **{stage: _scores_row(task, oof_finals[stage], data, all_labelled) for stage in finals},
    }
    for stage in finals:
        per_video[f"tables/out-of-fold/{stage}"] = _per_video(task, oof_finals[stage], data, all_labelled)

    # Scene routing for every track (labelled and test).
    router_flags, router_report = ({}, None)
    if config.features_dir or config.scene_routing == "router":
        router_flags, router_report = _scene_router(config, paths, predictions)

    # 4. Test tracks (predictions of every member) and the ablation.
    truth_dir = paths.ground_truth_dir(task)
    truth_files = {n: truth_dir / f"{n}.txt" for n in test_list} if truth_dir and truth_dir.is_dir() else None
    if truth_files and not all(p.exists() for p in truth_files.values()):
        truth_files = None
    test = _load(predictions, members, test_list, task, truth_files)
    ablation_data = (
        test
        if truth_files
        else data.select([n for n in labelled if predictions.split(n) == "Validation_Set"] or labelled)
    )
    ablation_set = "test (synthetic labels)" if truth_files else "Validation_Set (members trained on some of it)"
    ablation = _ablation(config, task, ablation_data, members, general, paths, router_flags, tuned, per_video)
    if config.static_predictions:
        validation = [n for n in labelled if predictions.split(n) == "Validation_Set"]
        ablation += _static_rows(config, task, data, validation, "Validation_Set", index, per_video)
        static = Predictions(config.static_predictions)
        if truth_files and all(static.role(STATIC_MEMBER, n) is not None for n in test_list):
            ablation += _static_rows(config, task, test, list(test_list), "test", index, per_video)

    # 5. Submission, its check and its test metric; plots.
    post = postprocess.PostProcess.from_tuned(
        tuned,
        members,
        method=config.ensemble.method,
        general=general,
        reaction_member=config.ensemble.reaction_member,
        routing=config.ensemble.reaction_routing,
    )
    test_reaction = _reaction_flags(config, paths, test_list, router_flags)
    scores, final = postprocess.final_outputs(post, test.outputs, test.mask, test_reaction)
    per_track = {n: final[i, : predictions.num_frames(n)] for i, n in enumerate(test_list)}
    _write_final(workdir / FINAL_DIR, test_list, scores, final, test, test_reaction)
    submission_path = workdir / "submissions" / f"{task.name}.txt"
    rows = submission.write_submission(submission_path, task.name, paths.example_file(task), per_track)
    submission.check_submission(submission_path, paths.example_file(task), task.name)
    log(f"wrote {submission_path} ({rows} rows, checked against {paths.example_file(task)})")
    test_metric = None
    if truth_files:
        test_metric, _ = _score(task, jnp.asarray(final), test.labels, test.valid & test.mask)
        per_video["test_metric"] = _per_video(task, final, test, np.ones(len(test_list), bool))
        log(f"synthetic test {task.metric_name}: {test_metric:.4f}")
    plotted = _plots(task, data, oof_finals["after"], workdir, config.num_plots, predictions)

    results = {
        "task": task.name,
        "predictions": str(predictions.directory),
        "members": members,
        "tuning": tuned.to_json(),
        "tables": per_member,
        "ablation_set": ablation_set,
        "ablation": ablation,
        "scene_router": router_report,
        "submission": str(submission_path),
        "submission_rows": rows,
        "test_metric": test_metric,
        "plots": plotted,
        "postprocess": post.to_json(),
        "final": str(workdir / FINAL_DIR),
    }
    text = _tables_markdown(task, tuning_rows, per_member, ablation_set, ablation, router_report, test_metric)
    (workdir / TABLES_FILE).write_text(text, encoding="utf-8")
    (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (workdir / PER_VIDEO_FILE).write_text(json.dumps(per_video) + "\n", encoding="utf-8")
    print(text, flush=True)
    return results


def _write_final(
    directory: pathlib.Path,
    names: Sequence[str],
    scores: np.ndarray,
    final: np.ndarray,
    test: Tracks,
    is_reaction: np.ndarray,
) -> None:
    """`<directory>/<track>.npz` per submitted test track: `scores` (N, C) (`postprocess.final_outputs`), `labels`
    (the submission's values), `face` (N,) and `is_reaction` (the scene routing used), frame k at row k-1."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        n = int(test.mask[i].sum())
        np.savez(
            directory / f"{name}.npz",
            scores=scores[i, :n],
            labels=final[i, :n],
            face=test.face[i, :n],
            is_reaction=bool(is_reaction[i]),
        )


def _check_test_inputs(predictions: Predictions, paths: release.ReleasePaths, task: tasks.Task) -> tuple[str, ...]:
    """The test list, after checking (before any work) that the example file and the predictions agree with it."""
    test_list = affwild2.read_video_list(paths.test_list(task))
    if not test_list:
        raise JobError(f"{paths.test_list(task)} lists no test videos")
    absent = [n for n in test_list if n not in predictions.tracks()]
    if absent:
        raise JobError(
            f"test videos {absent} (in {paths.test_list(task)}) have no predictions in {predictions.directory}"
        )
    _, locations = submission.read_example(paths.example_file(task), task.name)
    counts: dict[str, int] = {}
    for location in locations:
        name = location.rsplit("/", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    for name in test_list:
        if counts.get(name, 0) != predictions.num_frames(name):
            raise JobError(
                f"{paths.example_file(task)} lists {counts.get(name, 0)} frames of test video {name!r}, "
                f"but {predictions.directory} has predictions for {predictions.num_frames(name)}"
            )
    return test_list


def _routing(config, members: Sequence[str], general: Sequence[str], is_reaction: np.ndarray) -> np.ndarray:
    return ensemble.routing_mask(
        members,
        is_reaction,
        general=general,
        reaction_member=config.ensemble.reaction_member,
        routing=config.ensemble.reaction_routing,
    )


def _post_variants(tuned: tuning.Tuned) -> list[tuple[str, tuning.Tuned | None]]:
    """(setting suffix, post-processing) of the ablation: none, the tuned sigma alone, and the sigma with the tuned
    AU thresholds / EXPR biases (when tuning chose any), so that smoothing and thresholds show separately."""
    variants = [("", None), (" + smoothing", dataclasses.replace(tuned, thresholds=None, bias=None))]
    if tuned.thresholds is not None:
        variants.append((" + smoothing + thresholds", tuned))
    elif tuned.bias is not None:
        variants.append((" + smoothing + biases", tuned))
    return variants


def _ablation(
    config, task: tasks.Task, data: Tracks, members, general, paths, router_flags, tuned, per_video: dict
) -> list[dict]:
    """Table-5 rows: what each part of the method adds on `data`; each row's per-video statistics go into
    `per_video` under `ablation/<setting>`."""
    no_sdd = np.array([[m in general] * len(data.names) for m in members])
    rows = []
    every = np.ones(len(data.names), bool)
    own = _member_finals(task, data, tuned)
    singles = [_scores_row(task, own[members.index(m)], data, every)["metric"] for m in general]
    single = f"single member (mean of {len(general)}), post-processed"
    rows.append({"setting": single, "metric": float(np.mean(singles))})
    # A mean of scores: each member's statistics are kept (K, V, C, S), and a resample averages their metrics.
    parts = [_per_video(task, own[members.index(m)], data, every) for m in general]
    per_video[f"ablation/{single}"] = {**parts[0], "statistics": [p["statistics"] for p in parts]}
    method, other = config.ensemble.method, "soft" if config.ensemble.method == "vote" else "vote"
    routed = config.scene_routing != "none"
    posts = _post_variants(tuned)
    variants = [(method, False, suffix, post) for suffix, post in posts]
    if routed:
        is_reaction = _reaction_flags(config, paths, data.names, router_flags)
        sdd = _routing(config, members, general, is_reaction)
        variants += [(method, True, suffix, post) for suffix, post in posts]
    if task.kind != "continuous":  # VA has one way to combine: the mean
        variants.append((other, routed, *posts[-1]))
    for how, with_sdd, suffix, post in variants:
        use = sdd if with_sdd else no_sdd
        final = _final(task, data, use, post, how)
        metric, _ = _score(task, final, data.labels, data.valid & data.mask)
        name = "mean" if task.kind == "continuous" else how
        row = {"setting": f"{name}{' + SDD' if with_sdd else ''}{suffix}", "metric": metric}
        if with_sdd:  # SDD changes nothing on a set without reaction tracks; the report says so
            row["reaction_tracks"] = int(np.sum(is_reaction))
        rows.append(row)
        per_video[f"ablation/{row['setting']}"] = _per_video(task, final, data, every)
    return rows


def _static_rows(
    config, task: tasks.Task, data: Tracks, names: list[str], set_name: str, index: dict, per_video: dict
) -> list[dict]:
    """Static fine-tuned per-frame predictions vs the TMF official member, both raw, on the tracks `names` of
    `data` (Validation_Set, or the test tracks when they have labels); statistics into `per_video`."""
    static = Predictions(config.static_predictions)
    static.require_members([STATIC_MEMBER])
    absent = [n for n in names if static.role(STATIC_MEMBER, n) is None]
    if absent:
        raise JobError(
            f"config.static_predictions={config.static_predictions}: member 'static' has no predictions "
            f"for {set_name} tracks {absent[:5]}"
        )
    subset = data.select(names)
    outputs = _load(static, [STATIC_MEMBER], names, task, None).outputs  # (1, V, T', C): T' is the longest of `names`
    # `subset` keeps the frame axis of all of `data`'s tracks, which may be longer than any of `names`.
    padding = [(0, 0)] * outputs.ndim
    padding[2] = (0, subset.mask.shape[1] - outputs.shape[2])
    static_data = dataclasses.replace(subset, outputs=np.pad(outputs, padding))
    every = np.ones(len(names), bool)
    rows = []
    for setting, source, member in (
        (f"static fine-tuned encoder, per frame ({set_name})", static_data, 0),
        (f"TMF {config.official_member} ({set_name})", subset, index[config.official_member]),
    ):
        final = _member_finals(task, source, None)[member]
        rows.append({"setting": setting, "metric": _scores_row(task, final, source, every)["metric"]})
        per_video[f"ablation/{setting}"] = _per_video(task, final, source, every)
    return rows


def _plots(
    task: tasks.Task, data: Tracks, final: np.ndarray, workdir: pathlib.Path, count: int, predictions: Predictions
) -> list[str]:
    """Timelines of the post-processed out-of-fold labels of the first `count` Validation_Set tracks."""
    written = []
    for name in [n for n in data.names if predictions.split(n) == "Validation_Set"][:count]:
        i = data.names.index(name)
        length = int(data.mask[i].sum())
        path = plots.plot_timeline(
            workdir / "plots" / f"{name}.png",
            task.name,
            final[i, :length],
            data.labels[i, :length],
            data.valid[i, :length],
            data.face[i, :length],
            title=f"{task.name} {name}: out-of-fold, post-processed",
        )
        written.append(str(path))
    return written


def _tables_markdown(
    task: tasks.Task, tuning_rows, per_member, ablation_set, ablation, router_report, test_metric
) -> str:
    names = list(task.label_names)
    parts = [
        f"## {task.name}: {task.metric_name}\n",
        _table("Tuning on out-of-fold predictions", ["step", "value", "before", "after"], tuning_rows),
    ]
    for stage, title in (("before", "raw outputs"), ("after", "after post-processing")):
        rows = [
            (label, row["tracks"], *row[stage]["per_class"], row[stage]["metric"], row[stage]["metric_face_frames"])
            for label, row in per_member.items()
        ]
        parts.append(
            _table(
                f"Per member on its held-out tracks, {title} (the paper's Tables 1-3)",
                ["member", "tracks", *names, task.name, f"{task.name} (face frames)"],
                rows,
            )
        )
    parts.append(
        _table(
            f"Ablation on {ablation_set} (the paper's Table 5 layout)",
            ["setting", task.name],
            [(r["setting"], r["metric"]) for r in ablation],
        )
    )
    if router_report:
        parts.append(_table("Scene router", list(router_report), [tuple(router_report.values())]))
    if test_metric is not None:
        parts.append(f"Synthetic test {task.metric_name} of the submission: {test_metric:.4f}\n")
    return "\n".join(parts)
