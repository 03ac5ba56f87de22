"""The MAE pretraining job end to end, as a user runs it: `python -m abaw_jax.main` in subprocesses.

Each run uses a tiny ViT on 32x32 faces so that a step takes milliseconds on CPU; several devices come
from `--xla_force_host_platform_device_count`, several hosts from loopback `jax.distributed`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from abaw_jax.jobs import mae_pretrain
from abaw_jax.models import params_io
from abaw_jax.runtime.errors import JobError
from conftest import finished_checkpoints, kill_after_first_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = {
    "model.size": "tiny",
    "model.image_size": 32,
    "model.patch_size": 8,
    "model.dtype": "float32",
    "batch_size": 32,
    "total_steps": 6,
    "warmup_steps": 2,
    "base_lr": 2e-3,
    "log_every": 1,
    "checkpoint_every": 3,
    "image_every": 1000,
    "data.worker_count": 0,
}


def launch(workdir, data_dir, *, devices=1, overrides=None, flags=(), **popen):
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
    )
    settings = {**SMALL, "data.data_dir": str(data_dir), **(overrides or {})}
    args = [sys.executable, "-m", "abaw_jax.main", f"--config={REPO}/configs/mae.py", f"--workdir={workdir}"]
    args += [f"--config.{k}={v}" for k, v in settings.items()] + list(flags)
    return subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def run(workdir, data_dir, *, expect_ok=True, **kwargs) -> str:
    proc = launch(workdir, data_dir, **kwargs)
    output, _ = proc.communicate(timeout=600)
    if expect_ok:
        assert proc.returncode == 0, output[-4000:]
    else:
        assert proc.returncode != 0, output[-4000:]
    return output


def losses(workdir) -> np.ndarray:
    lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["loss"] for line in lines])


def exported_encoder(workdir) -> dict:
    params, _ = params_io.load_params(str(pathlib.Path(workdir, "export", "encoder")))
    return params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_loss_trajectory_on_1_and_8_devices_with_fsdp_and_micro_batches(face_data, tmp_path):
    run(tmp_path / "one", face_data, devices=1)
    run(tmp_path / "eight", face_data, devices=8)
    run(tmp_path / "fsdp", face_data, devices=8, overrides={"mesh.fsdp": 4})
    run(tmp_path / "micro", face_data, devices=8, overrides={"micro_batches": 4})
    reference = losses(tmp_path / "one")
    assert len(reference) == SMALL["total_steps"]
    assert reference[-1] < reference[0]
    for name in ("eight", "fsdp", "micro"):
        np.testing.assert_allclose(losses(tmp_path / name), reference, rtol=2e-5, err_msg=name)


def test_two_processes_match_one_process(face_data, tmp_path):
    run(tmp_path / "single", face_data, devices=8)
    port = free_port()
    procs = [
        launch(
            tmp_path / "multi",
            face_data,
            devices=4,
            flags=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    assert "8 devices in 2 processes" in outputs[0]
    np.testing.assert_allclose(losses(tmp_path / "multi"), losses(tmp_path / "single"), rtol=2e-5)


def test_killed_run_resumes_to_the_same_parameters(face_data, tmp_path):
    overrides = {"total_steps": 40, "checkpoint_every": 4, "log_every": 4, "data.worker_count": 1}
    run(tmp_path / "straight", face_data, overrides=overrides)

    killed = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(
        launch(killed, face_data, overrides=overrides, start_new_session=True), killed
    )
    assert 0 < killed_at < 40

    output = run(killed, face_data, overrides=overrides)
    assert f"Resumed from {killed / 'checkpoints'} at step {killed_at}" in output
    straight, resumed = exported_encoder(tmp_path / "straight"), exported_encoder(killed)
    assert jax.tree.structure(straight) == jax.tree.structure(resumed)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_default_data_run_writes_losses_images_and_exports(tmp_path):
    workdir = tmp_path / "work"
    output = run(
        workdir,
        "",
        overrides={
            "data.data_dir": "",
            "data.cache_dir": str(tmp_path / "cache"),
            "data.synthetic_videos": 2,
            "data.synthetic_frames_per_video": 60,
            "total_steps": 30,
            "log_every": 5,
            "checkpoint_every": 30,
            "image_every": 15,
            "warmup_steps": 5,
        },
    )
    assert "training on the embedded synthetic faces" in output
    trajectory = losses(workdir)
    assert trajectory[-1] < 0.9 * trajectory[0]
    assert sorted(p.name for p in (workdir / "reconstructions").glob("*.png")) == [
        "step_0000015.png",
        "step_0000030.png",
    ]
    from PIL import Image

    grid = np.asarray(Image.open(workdir / "reconstructions" / "step_0000030.png"))
    assert grid.shape == (8 * 32, 3 * 32, 3)
    from safetensors.numpy import load_file

    official = load_file(str(workdir / "export" / "encoder_official.safetensors"))
    assert official["patch_embed.proj.weight"].shape == (192, 3, 8, 8)
    assert "blocks.3.attn.qkv.weight" in official and "decoder_embed.weight" not in official
    assert any((workdir / "tensorboard").iterdir())


@pytest.mark.parametrize(
    "overrides,flags,message",
    [
        ({"batch_size": 30}, [], "must split evenly over the 8 devices"),
        ({"micro_batches": 3}, [], "not divisible by micro_batches=3"),
        ({}, ["--config.no_such_key=1"], "no_such_key"),
        ({"data.data_dir": "/nonexistent/faces"}, [], "/nonexistent/faces does not exist"),
    ],
)
def test_bad_configuration_stops_with_a_message(face_data, tmp_path, overrides, flags, message):
    output = run(tmp_path / "w", face_data, devices=8, overrides=overrides, flags=flags, expect_ok=False)
    assert message in output


def test_empty_data_dir_stops_with_a_message(tmp_path):
    (tmp_path / "empty").mkdir()
    output = run(tmp_path / "w", tmp_path / "empty", expect_ok=False)
    assert "No face shards" in output


def test_checkpoint_of_another_model_is_refused(face_data, tmp_path):
    run(tmp_path / "w", face_data, overrides={"total_steps": 3})
    output = run(tmp_path / "w", face_data, overrides={"total_steps": 6, "model.patch_size": 16}, expect_ok=False)
    assert "holds a checkpoint (step 3) of a different model" in output


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(face_data, tmp_path):
    workdir = tmp_path / "w"
    output = run(
        workdir, face_data, overrides={"base_lr": 1e32, "warmup_steps": 0, "checkpoint_every": 1}, expect_ok=False
    )
    assert "non-finite loss or gradient" in output
    kept = finished_checkpoints(workdir)
    assert kept and max(kept) < SMALL["total_steps"]
    assert f"The last good checkpoint (step {max(kept)})" in output


def test_batch_layout_checks():
    mae_pretrain.check_batch_layout(4096, 4, 8, 2)
    with pytest.raises(JobError, match="not divisible by the 3 processes"):
        mae_pretrain.check_batch_layout(4096, 1, 8, 3)
