"""The fine-tuning job on the synthetic release: it learns each task, scores only valid frames, resumes after a
kill and stops with clear errors on bad input; the other training sources' tiny presets learn their
mini-releases and are scored on their own splits and on Aff-Wild2's validation split.

The encoder is a random-init tiny ViT on 16x16 crops (cheaper than any pretraining; at this size the model
learns the scene and coarse face cues that carry over to the validation people within 120 steps); with nothing
pretrained to protect, the tests fine-tune without layer decay, and the best of six evaluations is exported.
Compilations are shared through a persistent cache.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from abaw_jax import tasks
from abaw_jax.data import affectnet, bp4d, device_images, frame_pipeline, rafdb, synthetic_sources
from abaw_jax.jobs import finetune
from abaw_jax.models import params_io
from abaw_jax.models.vit import VIT_SIZES, ViT, ViTConfig
from abaw_jax.runtime.errors import JobError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from abaw_jax.runtime import workdir as workdir_lib  # noqa: E402
from configs import finetune as finetune_config  # noqa: E402
from conftest import (  # noqa: E402
    damage_newest_checkpoint,
    finished_checkpoints,
    kill_after_first_checkpoint,
    set_values,
    stop_requested_after,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16
SMALL = {
    "model.image_size": IMAGE_SIZE,
    "data.worker_count": 0,
    "batch_size": 32,
    "eval_batch_size": 128,
    "total_steps": 120,
    "warmup_steps": 8,
    "eval_every": 20,
    "log_every": 40,
    "checkpoint_every": 40,
    "layer_decay": 1.0,
}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("jax_cache"))
    settings = {
        "jax_compilation_cache_dir": directory,
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    previous = {key: getattr(jax.config, key) for key in settings}
    for key, value in settings.items():
        jax.config.update(key, value)
    yield directory
    for key, value in previous.items():
        jax.config.update(key, value)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, compile_cache) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("encoder") / "vit"
    config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, **VIT_SIZES["tiny"])
    params_io.save_params(str(directory), params_io.init_params(config), config)
    return directory


def make_config(preset_task: str, encoder, data_root, **overrides):
    config = finetune_config.get_config(f"{preset_task.lower()}_tiny")
    return set_values(config, {**SMALL, "encoder": str(encoder), "data.root": str(data_root), **overrides})


@pytest.fixture(scope="module")
def finetuned(encoder_dir, synthetic_affwild2, tmp_path_factory):
    """task -> workdir of a finished run (each task runs once, when a test first asks for it)."""
    done = {}

    def get(task: str) -> pathlib.Path:
        if task not in done:
            workdir = tmp_path_factory.mktemp(f"finetune_{task}")
            finetune.run(make_config(task, encoder_dir, synthetic_affwild2), str(workdir))
            done[task] = workdir
        return done[task]

    return get


def _exported_outputs(workdir: pathlib.Path, frames: frame_pipeline.LabelledFrames) -> np.ndarray:
    """Head outputs of the exported model on every evaluation frame, computed outside the job."""
    params, config = params_io.load_params(str(workdir / "export" / "encoder"))
    model = ViT(config)
    batch = next(iter(frame_pipeline.make_eval_loader(frames, global_batch_size=len(frames), worker_count=0)))
    x = device_images.prepare_images(batch["image"], batch["box"], image_size=config.image_size)
    return np.asarray(jax.jit(model.apply)({"params": params}, x))


def _ccc(x: np.ndarray, y: np.ndarray) -> float:
    return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _scores(task: tasks.Task, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class scores with scikit-learn / numpy, on valid frames only."""
    if task.kind == "binary":
        return f1_score(labels, outputs, average=None, zero_division=0)
    if task.kind == "multiclass":
        return f1_score(labels, outputs, labels=range(task.num_outputs), average=None, zero_division=0)
    return np.array([_ccc(outputs[:, i], labels[:, i]) for i in range(2)])


@pytest.mark.parametrize("task_name", tasks.TASK_NAMES)
def test_finetuned_model_beats_a_constant_predictor_and_scores_only_valid_frames(
    task_name, finetuned, synthetic_affwild2
):
    task = tasks.get_task(task_name)
    workdir = finetuned(task_name)
    summary = json.loads((workdir / "export" / "finetune.json").read_text())
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if "eval_metric" in line]
    assert [e["step"] for e in evals] == [20, 40, 60, 80, 100, 120]
    assert summary["metric"] == pytest.approx(max(e["eval_metric"] for e in evals))
    best = next(e for e in evals if e["step"] == summary["step"])
    assert list(summary["per_class"]) == list(task.label_names)
    for name in task.label_names:
        assert best[f"eval_{name}"] == pytest.approx(summary["per_class"][name])

    train, evaluation = frame_pipeline.affwild2_frames(
        synthetic_affwild2 / "annotations", synthetic_affwild2 / "cropped_aligned", task_name
    )
    logits = _exported_outputs(workdir, evaluation)[evaluation.valid]
    labels = evaluation.labels[evaluation.valid]
    outputs = {"binary": (logits > 0).astype(int), "multiclass": logits.argmax(-1), "continuous": np.tanh(logits)}[
        task.kind
    ]
    ours = _scores(task, outputs, labels)
    # The job's reported scores are those of the valid frames alone (an invalid label counted would move them).
    np.testing.assert_allclose([summary["per_class"][n] for n in task.label_names], ours, atol=1e-5)

    train_labels = train.labels[train.valid]
    if task.kind == "binary":
        constant = np.broadcast_to((train_labels.mean(0) > 0.5).astype(int), labels.shape)
    elif task.kind == "multiclass":
        constant = np.full(len(labels), np.bincount(train_labels).argmax())
    else:
        constant = np.broadcast_to(train_labels.mean(0), labels.shape)
    baseline = np.nan_to_num(_scores(task, constant, labels)).mean()
    assert ours.mean() > baseline + 0.01, (ours.mean(), baseline)
    if task.kind == "continuous":  # the job bounds VA outputs
        assert np.abs(finetune.scores_from_logits(task, jnp.array([[40.0, -40.0]]))).max() <= 1

    official = sorted(p.name for p in (workdir / "export").glob("encoder_official.*"))
    assert official == ["encoder_official.pth", "encoder_official.safetensors"]
    from safetensors.numpy import load_file

    assert load_file(str(workdir / "export" / "encoder_official.safetensors"))["head.weight"].shape == (
        task.num_outputs,
        VIT_SIZES["tiny"]["width"],
    )


def test_killed_run_resumes_to_the_same_best_model(
    finetuned, encoder_dir, synthetic_affwild2, compile_cache, tmp_path, capsys
):
    straight = finetuned("EXPR")
    killed = tmp_path / "killed"
    settings = {**SMALL, "encoder": str(encoder_dir), "data.root": str(synthetic_affwild2)}
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    args = [
        sys.executable,
        "-m",
        "abaw_jax.main",
        f"--config={REPO}/configs/finetune.py:expr_tiny",
        f"--workdir={killed}",
    ] + [f"--config.{k}={v}" for k, v in settings.items()]
    proc = subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    killed_at = kill_after_first_checkpoint(proc, killed)
    assert 0 < killed_at < SMALL["total_steps"]

    capsys.readouterr()
    finetune.run(make_config("EXPR", encoder_dir, synthetic_affwild2), str(killed))
    assert f"Resumed from {killed / 'checkpoints'} at step {killed_at}" in capsys.readouterr().out
    assert json.loads((killed / "best.json").read_text()) == json.loads((straight / "best.json").read_text())
    resumed, _ = params_io.load_params(str(killed / "export" / "encoder"))
    reference, _ = params_io.load_params(str(straight / "export" / "encoder"))
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_stop_request_saves_a_checkpoint_and_a_damaged_one_falls_back(
    finetuned, encoder_dir, synthetic_affwild2, tmp_path, monkeypatch, capsys
):
    straight = finetuned("EXPR")
    workdir = tmp_path / "stopped"
    config = make_config("EXPR", encoder_dir, synthetic_affwild2)
    stop_at = SMALL["checkpoint_every"] + 5
    with monkeypatch.context() as patch:
        patch.setattr(workdir_lib, "session", stop_requested_after(stop_at))
        with pytest.raises(JobError, match=rf"stopped by SIGTERM at step {stop_at}; saved checkpoint step {stop_at}"):
            finetune.run(config, str(workdir))
    assert finished_checkpoints(workdir) == [SMALL["checkpoint_every"], stop_at]
    damage_newest_checkpoint(workdir)
    capsys.readouterr()
    finetune.run(config, str(workdir))
    out = capsys.readouterr().out
    assert f"Skipped damaged checkpoint step {stop_at} (" in out
    assert f"Resumed from {workdir / 'checkpoints'} at step {SMALL['checkpoint_every']}" in out
    assert json.loads((workdir / "best.json").read_text()) == json.loads((straight / "best.json").read_text())


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("base_lr", -1e-3, "config.base_lr must be a finite number > 0, got -0.001"),
        ("weight_decay", -0.05, "config.weight_decay must be a finite number >= 0, got -0.05"),
        ("b2", 1.5, "config.b2 must be a finite number >= 0.0 and <= 1.0, got 1.5"),
        ("drop_path", float("nan"), "config.drop_path must be a finite number >= 0, got nan"),
        ("seed", -1, "config.seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(encoder_dir, synthetic_affwild2, key, value, message):
    with pytest.raises(JobError) as caught:
        finetune.validate_config(make_config("EXPR", encoder_dir, synthetic_affwild2, **{key: value}))
    assert message in str(caught.value)


def test_bad_input_stops_with_a_clear_error(encoder_dir, synthetic_affwild2, tmp_path, monkeypatch):
    def fails(match, preset="EXPR", **overrides):
        config = make_config(preset, overrides.pop("encoder", encoder_dir), synthetic_affwild2, **overrides)
        with pytest.raises(JobError, match=match):
            finetune.run(config, str(tmp_path / "work"))

    (tmp_path / "pretrain" / "checkpoints").mkdir(parents=True)
    fails("pretrain is a pretraining workdir without export/encoder", encoder=tmp_path / "pretrain")
    fails(r"config.encoder: .*image size 20 is not a positive multiple of the patch size 8", **{"model.image_size": 20})
    fails(r"is not a ViT-base .* set config.model.size", **{"model.size": "base"})
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "AU_Detection_Challenge").symlink_to(
        synthetic_affwild2 / "annotations" / "AU_Detection_Challenge"
    )
    fails(
        r"expected exactly one of \('EXPR_Recognition_Challenge'", **{"data.annotations": str(tmp_path / "annotations")}
    )
    (tmp_path / "empty_crops").mkdir()
    fails(r"empty_crops: expected one crop folder per video", **{"data.crops": str(tmp_path / "empty_crops")})
    monkeypatch.setattr(finetune, "TINY_PRETRAIN_WORKDIR", str(tmp_path / "absent"))
    fails(r"python -m abaw_jax.main --config=configs/mae.py:tiny --workdir=.*absent", encoder="")
    fails(r"config.class_weights must hold 8 positive values", class_weights=(1.0, 2.0))
    fails(r"config.data.split must be one of", **{"data.split": "fold9"})
    fails(r"config.data.image_folders holds expression images", preset="VA", **{"data.image_folders": "/x"})
    fails(r"config.task: unknown task 'XYZ'", **{"task": "XYZ"})


def test_presets_validate():
    for preset in ("au", "expr", "va", "au_tiny", "expr_tiny", "va_tiny"):
        config = finetune_config.get_config(preset)
        assert config.job == "finetune" and config.task == preset.split("_")[0].upper()
        assert config.data.source == "affwild2"
    for key, mapping in tasks.SOURCE_LABELS.items():
        for preset in (key, f"{key}_tiny"):
            config = finetune_config.get_config(preset)
            assert (config.task, config.data.source) == (mapping.task, key.split("_")[0])
            assert finetune.validate_config(config).name == mapping.task
    with pytest.raises(ValueError, match="unknown preset"):
        finetune_config.get_config("expr_small")


# The other training sources, each on its synthetic mini-release.
SOURCE_READERS = {
    "affectnet": lambda root, config, task: affectnet.train_and_evaluation_frames(root, root / "crops", task),
    "rafdb": lambda root, config, task: rafdb.train_and_evaluation_frames(root),
    "bp4d": lambda root, config, task: bp4d.train_and_evaluation_frames(root, root / "crops", config.data.source_fold),
}


def _source_scores(task: tasks.Task, classes: tuple[int, ...], outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-label scores of final outputs on `classes` with scikit-learn / numpy; AU labels of -1 left out per AU."""
    if task.kind == "binary":
        return np.array(
            [f1_score(labels[labels[:, j] >= 0, j], outputs[labels[:, j] >= 0, j], zero_division=0) for j in classes]
        )
    if task.kind == "multiclass":
        return f1_score(labels, outputs, labels=list(classes), average=None, zero_division=0)
    return np.array([_ccc(outputs[:, i], labels[:, i]) for i in classes])


@pytest.mark.parametrize("preset", ["affectnet_expr", "affectnet_va", "rafdb_expr", "bp4d_au"])
def test_source_preset_beats_a_constant_predictor_on_its_own_split(
    preset, encoder_dir, synthetic_affwild2, tmp_path_factory, capsys
):
    """Each `<source>_tiny` preset as it stands (but for the random-init 16 px encoder, resampled to the preset's
    size, and no layer decay: nothing is pretrained) trains on its mini-release and is scored on its own split,
    and each evaluation also on the Aff-Wild2 validation split over the labels the source has."""
    mapping = tasks.SOURCE_LABELS[preset]
    task, source = tasks.get_task(mapping.task), preset.split("_")[0]
    cache = tmp_path_factory.getbasetemp() / "source_releases"
    config = finetune_config.get_config(f"{preset}_tiny")
    set_values(
        config,
        {
            "encoder": str(encoder_dir),
            "data.cache_dir": str(cache),
            "data.root": str(synthetic_affwild2),
            "data.worker_count": 0,
            "layer_decay": 1.0,
        },
    )
    workdir = tmp_path_factory.mktemp(f"finetune_{preset}")
    finetune.run(config, str(workdir))
    out = capsys.readouterr().out
    size = config.model.image_size
    assert f"position table bicubically from 2x2 to {size // 8}x{size // 8} patches (16 -> {size} pixels)" in out

    summary = json.loads((workdir / "export" / "finetune.json").read_text())
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if "eval_metric" in line]
    assert summary["metric"] == pytest.approx(max(e["eval_metric"] for e in evals))
    classes = mapping.covered
    names = [task.label_names[i] for i in classes]
    assert list(summary["per_class"]) == names
    if len(classes) < task.num_outputs:
        left_out = ", ".join(mapping.missing)
        unit = "AUs" if task.kind == "binary" else "classes"
        assert summary["metric_name"].endswith(f"(mean of {len(classes)} {unit}, without {left_out})")
        assert f"{summary['metric_name']} {summary['metric']:.4f}" in out

    root = synthetic_sources.cached_release(source, cache)
    train, evaluation = SOURCE_READERS[source](root, config, task.name)
    logits = _exported_outputs(workdir, evaluation)
    labels = evaluation.labels
    outputs = {"binary": (logits > 0).astype(int), "multiclass": logits.argmax(-1), "continuous": np.tanh(logits)}[
        task.kind
    ]
    ours = _source_scores(task, classes, outputs, labels)
    np.testing.assert_allclose([summary["per_class"][n] for n in names], ours, atol=1e-5)
    assert summary["metric"] == pytest.approx(ours.mean(), abs=1e-5)
    if task.kind == "multiclass":
        assert summary["accuracy"] == pytest.approx(accuracy_score(labels, outputs))
        best = next(e for e in evals if e["step"] == summary["step"])
        assert best["eval_accuracy"] == pytest.approx(summary["accuracy"])
        # The best constant class, chosen on the evaluation labels themselves.
        baseline = max(
            _source_scores(task, classes, np.full(len(labels), c), labels).mean() for c in range(task.num_outputs)
        )
    elif task.kind == "binary":
        # Every AU the source has is on and off in both splits, so none scores 0 for want of positives.
        for frames in (train, evaluation):
            assert all({0, 1} <= set(frames.labels[:, j]) for j in classes)
        # Per AU the better of always 0 and always 1 on the evaluation labels (always 1 scores 2p / (1 + p)): at
        # least the training majority per AU, whichever of the two that is.
        always = [_source_scores(task, classes, np.full(labels.shape, v), labels) for v in (0, 1)]
        baseline = np.maximum(*always).mean()
    else:  # any constant has CCC 0; the training mean, as an Aff-Wild2 VA constant predictor
        constant = np.broadcast_to(train.labels.mean(0), labels.shape)
        baseline = np.nan_to_num(_source_scores(task, classes, constant, labels)).mean()
    assert ours.mean() > baseline + 0.05, (ours.mean(), baseline)

    # The Aff-Wild2 validation scores of the exported (best) step, recomputed from its outputs with scikit-learn.
    _, affwild2 = frame_pipeline.affwild2_frames(
        synthetic_affwild2 / "annotations", synthetic_affwild2 / "cropped_aligned", task.name
    )
    logits = _exported_outputs(workdir, affwild2)[affwild2.valid]
    outputs = {"binary": (logits > 0).astype(int), "multiclass": logits.argmax(-1), "continuous": np.tanh(logits)}[
        task.kind
    ]
    theirs = _source_scores(task, classes, outputs, affwild2.labels[affwild2.valid])
    assert summary["affwild2_metric_name"] == f"Aff-Wild2 validation {summary['metric_name']}"
    assert summary["affwild2_valid_frames"] == affwild2.valid.sum()
    np.testing.assert_allclose([summary["affwild2_per_class"][n] for n in names], theirs, atol=1e-5)
    assert summary["affwild2_metric"] == pytest.approx(theirs.mean(), abs=1e-5)
    assert [e["eval_affwild2_metric"] for e in evals if e["step"] == summary["step"]] == [summary["affwild2_metric"]]
    for e in evals:
        line = f"eval step {e['step']}: {summary['metric_name']} {e['eval_metric']:.4f}"
        assert line in out and f"| Aff-Wild2 validation {summary['metric_name']} {e['eval_affwild2_metric']:.4f}" in out
    if task.kind == "multiclass":
        assert summary["affwild2_accuracy"] == pytest.approx(
            accuracy_score(affwild2.labels[affwild2.valid], outputs), abs=1e-6
        )


def test_affwild2_scores_of_another_source_can_be_skipped_and_name_their_switch(tmp_path):
    config = finetune_config.get_config("rafdb_expr_tiny")
    set_values(config, {"data.root": str(tmp_path / "absent")})
    with pytest.raises(JobError, match=r"absent is not a folder \(.*config.data.affwild2_eval=False skips them\)"):
        finetune.load_affwild2_evaluation(config, tasks.EXPR)
    set_values(config, {"data.affwild2_eval": False})
    assert finetune.load_affwild2_evaluation(config, tasks.EXPR) is None
    assert finetune.load_affwild2_evaluation(finetune_config.get_config("expr_tiny"), tasks.EXPR) is None


@pytest.mark.parametrize(
    "preset,overrides,key,message",
    [
        (
            "rafdb_expr",
            {"data.source": "raf"},
            "data.source",
            "must be one of ['affectnet', 'affwild2', 'bp4d', 'rafdb']",
        ),
        ("affectnet_va", {"task": "AU"}, "data.source", "=affectnet has no AU labels (it has EXPR, VA)"),
        ("affectnet_expr", {"data.source_root": "{tmp}"}, "data.source_crops", "must name the crops of the affectnet"),
        ("bp4d_au", {"data.source_root": "{tmp}"}, "data.source_crops", "must name the crops of the bp4d"),
        ("bp4d_au", {"data.source_crops": "{tmp}"}, "data.source_crops", "is set but config.data.source_root is empty"),
        ("bp4d_au", {"data.source_fold": 4}, "data.source_fold", "must be one of [1, 2, 3], got 4"),
        ("rafdb_expr", {"data.source_root": "{tmp}/absent"}, "data.source_root", "absent does not exist"),
        ("rafdb_expr", {"data.image_folders": "{tmp}"}, "data.image_folders", "not with config.data.source=rafdb"),
        ("expr", {"data.source_root": "{tmp}"}, "data.source_root", "but config.data.source=affwild2 does not read it"),
    ],
)
def test_bad_source_settings_are_refused_in_one_line_naming_the_key(preset, overrides, key, message, tmp_path):
    config = finetune_config.get_config(f"{preset}_tiny")
    set_values(config, {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()})
    with pytest.raises(JobError) as caught:
        finetune.validate_config(config)
    text = str(caught.value)
    assert "\n" not in text and f"config.{key}" in text and message in text, text
