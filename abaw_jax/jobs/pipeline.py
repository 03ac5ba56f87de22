"""The whole method in one run: every stage job in order, each in its own sub-folder (configs/abaw.py).

The pipeline only chains: each stage is the stage job itself (a `StageJob` from the registry main.py passes
in), called in this process with the stage's own config, whose input paths point at the folders of the stages
before it (`runtime.pipeline_dirs`). Around each stage it keeps `<stage>/stage.json`:

  {"stage", "job", "config", "inputs": {stage: fingerprint}, "fingerprint", "complete", "seconds"}

`config` is the stage's settings with every path inside the pipeline workdir written as `$WORKDIR/...`, so a
moved or copied workdir reads as the same run. A stage is up to date when its settings agree with the recorded
ones on every key but the job's cosmetic keys (logging intervals, worker counts, batch sizes of inference:
`StageJob.cosmetic_keys`) and every stage it reads is the one it was made from; then it is skipped. A stage with
the same settings that did not finish (killed, crashed) is run again in its folder, where the job resumes from
its own checkpoints. A stage whose settings changed runs afresh: its finished folder is first renamed to
`<stage>.previous` and deleted only once the new run completes, so an interrupted rerun loses nothing, and a
rerun with the old settings puts the old folder back instead of training again. Nothing finished is deleted
before its replacement is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from abaw_jax import table6
from abaw_jax.data import release
from abaw_jax.eval import ensemble
from abaw_jax.predictor import bundle
from abaw_jax.report import writer as report
from abaw_jax.runtime import config_checks as checks
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.errors import ExplainedError, JobError
from abaw_jax.runtime.pipeline_dirs import STAGE_FILE, TASKS, PipelineDirs, flat_settings, table6_variant
from abaw_jax.runtime.telemetry import format_duration, log
from abaw_jax.tasks import SOURCE_LABELS

# Bumped when what the report / bundle steps write changes, so finished runs redo them.
_STEP_VERSIONS = {"report": 3, "predictor": 2}
WORKDIR_MARK = "$WORKDIR"
PREVIOUS_SUFFIX = ".previous"
_STAGE_CONFIG_TEMPLATE = '''"""Settings of pipeline stage {name!r}, written by configs/abaw.py's pipeline
(edits here are not read back).

Rerun this stage alone:
  python -m abaw_jax.main --config={path} --workdir={directory}
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({values!r})
'''


@dataclasses.dataclass(frozen=True)
class StageJob:
    """A stage job as the registry hands it to the pipeline: its `run(config, workdir)`, its `validate_config`,
    and its cosmetic keys: dotted config keys that change how the job runs or reports, never its results."""

    run: Callable[[ml_collections.ConfigDict, str], Any]
    validate: Callable[[ml_collections.ConfigDict], Any]
    cosmetic_keys: tuple[str, ...] = ()


@dataclasses.dataclass
class Stage:
    """One step of the pipeline: a registered job with its config, or an in-process step (report, predictor).

    Its name is its folder's (`runtime.pipeline_dirs`); `inputs` are the folders of the stages it reads."""

    directory: str
    inputs: tuple[str, ...]
    job: str = ""
    config: ml_collections.ConfigDict | None = None
    step: Callable[[], Any] | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.directory)

    def settings(self, root: str) -> dict[str, Any]:
        """The stage's settings as stage.json records them: JSON values, paths under `root` made portable."""
        if self.config is not None:
            return portable(json.loads(json.dumps(self.config.to_dict(), sort_keys=True)), root)
        return {"version": _STEP_VERSIONS[self.name]}


def portable(value: Any, root: str) -> Any:
    """`value` with every path inside the pipeline workdir `root` written as `$WORKDIR/<path below root>`."""
    if isinstance(value, dict):
        return {key: portable(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item, root) for item in value]
    if isinstance(value, str) and (value == root or value.startswith(root + os.sep)):
        return WORKDIR_MARK + value[len(root) :]
    return value


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.to_dict())


def _tasks(config: ml_collections.ConfigDict, key: str) -> tuple[str, ...]:
    names = checks.names(config, key, distinct=False)
    if any(n not in TASKS for n in names) or len(set(names)) != len(names):
        raise JobError(f"config.{key} must be distinct tasks among {TASKS}, got {config[key]!r}")
    return names


def plan(config: ml_collections.ConfigDict, dirs: PipelineDirs) -> list[Stage]:
    """The stages of this config in order, each with its config wired to the folders of the stages it reads."""
    tasks = _tasks(config, "tasks")
    if not tasks:
        raise JobError("config.tasks must name at least one task of au, expr, va")
    ablation = _tasks(config, "audio_ablation")
    if not set(ablation) <= set(tasks):
        raise JobError(f"config.audio_ablation={config.audio_ablation!r} names tasks not in config.tasks={tasks}")

    def with_release(stage_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        stage_config = _copy(stage_config)
        for key, value in config.data.items():
            stage_config.data[key] = value
        return stage_config

    stages: list[Stage] = []
    if config.mae_encoder:
        encoder, encoder_inputs = config.mae_encoder, ()
    else:
        mae = _copy(config.mae)
        if config.data.root and not mae.data.data_dir:
            raise JobError(
                f"config.data.root={config.data.root} is a real release, but config.mae.data.data_dir "
                "is empty, so stage 1 would pretrain on the synthetic faces: set it to your face shards "
                "(python -m data_prep.build_face_shards), or skip pretraining with "
                "--config.mae_encoder=<pretrained MAE weights>"
            )
        if not mae.data.data_dir:
            mae.data.cache_dir = config.data.cache_dir
            mae.data.synthetic_videos = config.data.synthetic_videos
            mae.data.synthetic_frames_per_video = config.data.synthetic_frames_per_video
        stages.append(Stage(dirs.mae, (), "mae_pretrain", mae))
        encoder, encoder_inputs = dirs.mae, (dirs.mae,)

    fusions = _fusion_configs(config, tasks, ablation)
    listed = checks.names(config.features, "sets", distinct=False)
    named = {n for fusion in fusions.values() for n in checks.names(fusion, "visual_sets")}
    sources = tuple(s for s in SOURCE_LABELS if s in listed or s in named)
    for name in (*tasks, *sources):
        finetune = with_release(config.finetune[name])
        finetune.encoder = encoder
        stages.append(Stage(dirs.finetune(name), encoder_inputs, "finetune", finetune))

    extract = with_release(config.features)
    # The fine-tuned sets follow config.tasks and the sets the fusion stages name; other sets (mae) are kept.
    extract.sets = (*tasks, *sources, *(s for s in listed if s not in (*TASKS, *SOURCE_LABELS)))
    audio = checks.names(config.features, "audio", distinct=False)
    wanted = [
        k
        for k in table6.AUDIO_SETS
        if k not in audio and any(k in checks.names(f, "audio_sets") for f in fusions.values())
    ]
    if wanted:
        extract.audio = (*audio, *wanted)
    extract_inputs = [dirs.finetune(n) for n in (*tasks, *sources)]
    for name in (*tasks, *sources):
        extract.encoders[name] = dirs.finetune(name)
    if "mae" in extract.sets:
        extract.encoders.mae = encoder
        extract_inputs += list(encoder_inputs)
    stages.append(Stage(dirs.features, tuple(extract_inputs), "extract_features", extract))
    if config.data.root:  # a real release: a part it lacks stops the run now, not after pretraining
        _check_release(extract)

    for (task, variant), fusion in fusions.items():
        fusion = with_release(fusion)
        fusion.features_dir = dirs.features
        _check_extracted(extract, fusion, f"fusion.{task}" + (f" ({variant})" if variant else ""))
        stages.append(Stage(dirs.fusion(task, variant), (dirs.features,), "fusion", fusion))
    variants = {task: ("", "visual") if task in ablation else ("",) for task in tasks}
    for task in tasks:
        for variant in variants[task]:
            evaluate = with_release(config.evaluate[task])
            evaluate.fusion_workdir = dirs.fusion(task, variant)
            _check_members(
                config.fusion[task], f"fusion.{task}", f"evaluate.{task}", ensemble.required_members(evaluate)
            )
            inputs = [dirs.fusion(task, variant)]
            if not variant and extract.static_predictions:
                evaluate.static_predictions = os.path.join(dirs.features, f"predictions_{task}")
                inputs.append(dirs.features)
            stages.append(Stage(dirs.evaluate(task, variant), tuple(inputs), "evaluate", evaluate))

    ran = tuple(s.directory for s in stages)
    method = tuple(s.directory for s in stages if not s.name.endswith("_visual") and "_table6_" not in s.name)
    stages.append(Stage(dirs.report, ran, step=lambda: log(report.write_report(dirs, tasks=tasks))))
    stages.append(
        Stage(
            dirs.predictor,
            method,
            step=lambda: bundle.export_bundle(dirs, dirs.predictor, tasks=tasks, data_config=config.data),
        )
    )
    return stages


def _fusion_configs(
    config: ml_collections.ConfigDict, tasks: Sequence[str], ablation: Collection[str]
) -> dict[tuple[str, str], ml_collections.ConfigDict]:
    """{(task, `PipelineDirs` variant): fusion settings} of every fusion stage: the method, the audio ablation
    (visual sets only) and each Table 6 row of config.table6 (the row's sets, the official member only)."""
    try:
        rows = table6.parse_rows(config.table6)
    except ValueError as e:
        raise JobError(f"config.table6: {e}") from None
    fusions = {}
    for task in tasks:
        fusions[task, ""] = _copy(config.fusion[task])
        if task in ablation:
            fusions[task, "visual"] = _copy(config.fusion[task])
            fusions[task, "visual"].audio_sets = ""
        for number in rows:
            row = fusions[task, table6_variant(number)] = _copy(config.fusion[task])
            row.visual_sets = ",".join(table6.ROWS[number].visual_sets(task))
            row.audio_sets = ",".join(table6.ROWS[number].audio)
            # Table 6 scores each combination on the official Validation_Set: one member, trained on Train_Set.
            row.members = "official"
    return fusions


def _check_extracted(extract: ml_collections.ConfigDict, fusion: ml_collections.ConfigDict, fusion_key: str) -> None:
    """Stops before any training when a fusion stage names a set that stage 3 is not set to extract."""
    for key, extract_key in (("visual_sets", "sets"), ("audio_sets", "audio")):
        extracted = checks.names(extract, extract_key, distinct=False)
        absent = [n for n in checks.names(fusion, key) if n not in extracted]
        if absent:
            raise JobError(
                f"config.{fusion_key}.{key} names {absent}, which config.features.{extract_key}="
                f"{extract[extract_key]!r} does not extract"
            )


def _check_release(extract: ml_collections.ConfigDict) -> None:
    try:
        release.require_videos(release.resolve(extract.data), checks.names(extract, "audio"))
    except FileNotFoundError as e:
        raise JobError(str(e)) from None


def _check_members(fusion: ml_collections.ConfigDict, fusion_key: str, evaluate_key: str, needed: list[str]) -> None:
    """Stops before any training when stage 5 would ask stage 4 for members it is not set to train."""
    missing = [m for m in needed if m not in checks.names(fusion, "members")]
    if missing:
        raise JobError(
            f"config.{evaluate_key} reads members {missing}, which config.{fusion_key}.members="
            f"{fusion.members!r} does not train: add them there, or change config.{evaluate_key}'s "
            "fold_members / official_member / ensemble.general / scene_routing"
        )


# Settings added after stage records were first written, with the value that does what runs before them did: at
# that value a setting compares equal to its absence, so upgrading the package reruns no finished stage.
ADDED_SETTINGS = {
    "data.synthetic_preset": "",
    "data.source": "affwild2",
    "data.source_root": "",
    "data.source_crops": "",
    "data.source_fold": 1,
    "data.affwild2_eval": True,
}


def _comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} of `settings`, without the added settings at their old behaviour's value."""
    flat = flat_settings(dict(settings))
    return {k: v for k, v in flat.items() if k not in ADDED_SETTINGS or v != ADDED_SETTINGS[k]}


def result_settings(settings: Mapping[str, Any], cosmetic_keys: Collection[str]) -> dict[str, Any]:
    """{dotted key: value} of the settings that decide a stage's results (all but `cosmetic_keys`)."""
    return {k: v for k, v in _comparable(settings).items() if k not in cosmetic_keys}


def fingerprint(settings: Mapping[str, Any], inputs: Mapping[str, str], cosmetic_keys: Collection[str] = ()) -> str:
    blob = json.dumps({"settings": result_settings(settings, cosmetic_keys), "inputs": dict(inputs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changed_keys(old: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every setting that differs between a recorded run's config and `settings`."""
    before, after = _comparable(old), _comparable(settings)
    return [
        f"{k}: {before.get(k, '(absent)')!r} -> {after.get(k, '(absent)')!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def _listing(changes: list[str]) -> str:
    return "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")


def describe_change(
    old: Mapping[str, Any], settings: Mapping[str, Any], inputs: Mapping[str, str], cosmetic_keys: Collection[str] = ()
) -> str:
    """What differs, in the settings that decide results and in the inputs, between a stage's recorded run and
    this one, for the log line that explains a rerun."""
    changes = changed_keys(
        result_settings(old.get("config", {}), cosmetic_keys), result_settings(settings, cosmetic_keys)
    )
    changes += [f"input {k} changed" for k in sorted(inputs) if old.get("inputs", {}).get(k) != inputs[k]]
    return _listing(changes)


def _up_to_date(
    record: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    inputs: Mapping[str, str],
    cosmetic_keys: Collection[str],
) -> bool:
    """Whether `record` is a run of these result settings on these inputs (finished or not)."""
    if record is None:
        return False
    return result_settings(record.get("config", {}), cosmetic_keys) == result_settings(
        settings, cosmetic_keys
    ) and record.get("inputs") == dict(inputs)


def read_stage_file(directory: str, root: str) -> dict[str, Any] | None:
    """The stage record in `directory`, its paths made portable against the workdir `root` (records written
    before paths were portable hold absolute ones)."""
    path = os.path.join(directory, STAGE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f"{path}: unreadable stage record ({e}); delete that stage folder to rerun it") from None
    return {**record, "config": portable(record.get("config", {}), root)}


def _write_json(path: str, value: Mapping[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _sync(tag: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(tag)


def run(config: ml_collections.ConfigDict, workdir: str, *, jobs: Mapping[str, StageJob]) -> dict:
    """Runs (or resumes, restores or skips) every stage of `config` under `workdir`; returns {stage: record}.

    Every stage's settings go through its job's `validate` first, so a bad value in a late stage stops the run
    before the first stage trains."""
    dirs = PipelineDirs(os.path.abspath(workdir))
    stages = plan(config, dirs)
    for stage in stages:
        if stage.config is not None:
            try:
                jobs[stage.job].validate(stage.config)
            except ExplainedError as e:
                raise type(e)(f"stage {stage.name}: {e}") from e
    leader = jax.process_index() == 0
    os.makedirs(dirs.root, exist_ok=True)
    # The fingerprint of each stage's folder as it stands after this run handled it: what later stages record
    # as their inputs and compare with their records.
    current: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    with workdir_lib.lock(dirs.root, enabled=leader):
        for index, stage in enumerate(stages, 1):
            header = f"[{index}/{len(stages)}] {stage.name}"
            record, status = _prepare(stage, dirs.root, jobs, current, header, leader)
            current[stage.name] = record["fingerprint"]
            if status in ("skipped", "restored"):
                records[stage.name] = {**record, "status": status}
                continue
            if leader:
                os.makedirs(stage.directory, exist_ok=True)
                _write_json(os.path.join(stage.directory, STAGE_FILE), record)
                if stage.config is not None:
                    _write_stage_config(stage)
            _sync(f"started {stage.name}")
            began = time.perf_counter()
            try:
                if stage.config is not None:
                    jobs[stage.job].run(stage.config, stage.directory)
                elif leader:  # the report and the bundle are files made from files: one process writes them
                    stage.step()
            except ExplainedError as e:
                raise type(e)(f"stage {stage.name}: {e}") from e
            record.update(complete=True, seconds=round(time.perf_counter() - began, 1))
            if leader:
                _write_json(os.path.join(stage.directory, STAGE_FILE), record)
                _drop_previous(stage.directory, "its replacement is complete")
            _sync(f"finished {stage.name}")
            records[stage.name] = {**record, "status": status}
            log(f"== {header}: finished in {format_duration(record['seconds'])}")

    log(summary(records, time.perf_counter() - start))
    report_file = os.path.join(dirs.report, report.REPORT_FILE)
    if os.path.exists(report_file):
        log(
            f"Report: {report_file}\nPredictor: {dirs.predictor} "
            f"(python -m abaw_jax.predict --model={dirs.root} --videos=<video or folder> --out_dir=<folder>)"
        )
    return records


def _prepare(
    stage: Stage, root: str, jobs: Mapping[str, StageJob], current: Mapping[str, str], header: str, leader: bool
) -> tuple[dict[str, Any], str]:
    """Decides what this run does with `stage` and readies its folder; returns (its record, status).

    status: 'skipped' (finished with these settings), 'restored' (the finished `.previous` folder had these
    settings and is back in place), 'resumed' (an unfinished run of these settings continues in place) or 'ran'
    (a fresh run; a finished folder of other settings waits in `.previous` until the new run completes)."""
    cosmetic = jobs[stage.job].cosmetic_keys if stage.config is not None else ()
    settings = stage.settings(root)
    inputs = {os.path.basename(d): current[os.path.basename(d)] for d in stage.inputs}
    previous_dir = stage.directory + PREVIOUS_SUFFIX
    old = read_stage_file(stage.directory, root)
    previous = read_stage_file(previous_dir, root)
    _sync(f"read {stage.name}")  # every process decides on the same records before the leader moves folders
    if old is None and os.path.isdir(stage.directory) and os.listdir(stage.directory):
        raise JobError(
            f"{stage.directory} exists but was not made by this pipeline (no {STAGE_FILE}); "
            "move it away or choose another --workdir"
        )
    here = _up_to_date(old, settings, inputs, cosmetic)
    if here and old.get("complete"):
        cosmetic_changes = changed_keys(old.get("config", {}), settings)
        note = (
            f" (cosmetic settings changed, results unaffected: {_listing(cosmetic_changes)})"
            if cosmetic_changes
            else ""
        )
        log(f"== {header}: done earlier with these settings, skipped{note}")
        if leader:
            _drop_previous(stage.directory, "the stage is complete")
        _sync(f"skipped {stage.name}")
        return old, "skipped"
    if (
        not here
        and previous is not None
        and previous.get("complete")
        and _up_to_date(previous, settings, inputs, cosmetic)
    ):
        log(f"== {header}: {previous_dir} holds a finished run with these settings; restoring it")
        if leader:
            _swap_back(stage.directory, old)
        _sync(f"restored {stage.name}")
        return previous, "restored"
    record = {
        "stage": stage.name,
        "job": stage.job,
        "config": settings,
        "inputs": inputs,
        "fingerprint": fingerprint(settings, inputs, cosmetic),
        "complete": False,
    }
    if here:
        log(f"== {header}: resuming the unfinished run in {stage.directory}")
        return record, "resumed"
    if old is not None:
        log(f"== {header}: settings changed ({describe_change(old, settings, inputs, cosmetic)})")
        if leader:
            _set_aside(stage.directory, old)
    _sync(f"set aside {stage.name}")
    log(f"== {header}: {stage.job or stage.name} -> {stage.directory}")
    return record, "ran"


def _set_aside(directory: str, record: Mapping[str, Any]) -> None:
    """Clears a stage folder for a fresh run: a finished run moves to `.previous`, an unfinished one goes."""
    previous_dir = directory + PREVIOUS_SUFFIX
    if record.get("complete"):
        _drop_previous(directory, "a newer finished run replaces it")
        os.rename(directory, previous_dir)
        log(
            f"   the finished run is kept in {previous_dir} until the new one completes (rerun with the old "
            "settings to restore it)"
        )
    else:
        log(f"   removing the unfinished run of other settings in {directory}")
        shutil.rmtree(directory)


def _swap_back(directory: str, record: Mapping[str, Any] | None) -> None:
    """Puts `<directory>.previous` back in place; a finished run there trades places with it."""
    previous_dir = directory + PREVIOUS_SUFFIX
    if record is not None and record.get("complete"):
        parked = directory + ".swap"
        os.rename(previous_dir, parked)
        os.rename(directory, previous_dir)
        os.rename(parked, directory)
        log(f"   the finished run of the other settings is now in {previous_dir}")
        return
    if os.path.isdir(directory):
        log(f"   removing the unfinished run of other settings in {directory}")
        shutil.rmtree(directory)
    os.rename(previous_dir, directory)


def _drop_previous(directory: str, why: str) -> None:
    previous_dir = directory + PREVIOUS_SUFFIX
    if os.path.isdir(previous_dir):
        log(f"   removing {previous_dir}: {why}")
        shutil.rmtree(previous_dir)


def summary(records: Mapping[str, Mapping[str, Any]], seconds: float) -> str:
    lines = ["| stage | this run | time |", "|---|---|---|"]
    for name, record in records.items():
        took = format_duration(record["seconds"]) if record["status"] != "skipped" else "-"
        lines.append(f"| {name} | {record['status']} | {took} |")
    return "\n".join(lines) + f"\nPipeline time: {format_duration(seconds)}"


def _write_stage_config(stage: Stage) -> None:
    path = os.path.join(stage.directory, "stage_config.py")
    text = _STAGE_CONFIG_TEMPLATE.format(
        name=stage.name, path=path, directory=stage.directory, values=stage.config.to_dict()
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
