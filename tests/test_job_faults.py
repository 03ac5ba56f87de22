"""Faults around a training job, fed as a user meets them: bad config values, a damaged checkpoint, a full
disk during a save, `kill PID`, two runs on one workdir. Each test asserts the message (and what is left
on disk), not only the exit status.

The job runs as `python -m abaw_jax.main` in a subprocess (like tests/test_mae_pretrain.py) with a tiny ViT
on 32x32 faces and a handful of steps; the save fault runs in-process to inject the failure. Later jobs add
their cases here in the same style.
"""

import errno
import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from abaw_jax.jobs import mae_pretrain
from abaw_jax.runtime import checkpointing
from abaw_jax.runtime import workdir as workdir_lib
from abaw_jax.runtime.errors import ConfigError, JobError

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = {
    "model.size": "tiny",
    "model.image_size": 32,
    "model.patch_size": 8,
    "model.dtype": "float32",
    "batch_size": 32,
    "total_steps": 9,
    "warmup_steps": 2,
    "base_lr": 2e-3,
    "log_every": 1,
    "checkpoint_every": 3,
    "image_every": 1000,
    "data.worker_count": 0,
}


def launch(workdir, data_dir, overrides=None, **popen) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("ABAW_JAX_TRACEBACK", None)
    settings = {**SMALL, "data.data_dir": str(data_dir), **(overrides or {})}
    args = [sys.executable, "-m", "abaw_jax.main", f"--config={REPO}/configs/mae.py", f"--workdir={workdir}"]
    args += [f"--config.{k}={v}" for k, v in settings.items()]
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(workdir, data_dir, overrides=None) -> tuple[int, str, str]:
    proc = launch(workdir, data_dir, overrides)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def losses(workdir) -> dict[int, float]:
    """step -> loss of the last time that step ran (a resumed run appends its steps again)."""
    records = [json.loads(line) for line in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def checkpoint_steps(workdir) -> list[int]:
    directory = pathlib.Path(workdir, "checkpoints")
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def tiny_config(data_dir, **overrides):
    config = mae_pretrain_config()
    for key, value in {**SMALL, "data.data_dir": str(data_dir), **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def mae_pretrain_config():
    spec = importlib.util.spec_from_file_location("mae_config_file", REPO / "configs" / "mae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("keep_checkpoints", 0, "config.keep_checkpoints must be an integer >= 1, got 0"),
        ("total_steps", -5, "config.total_steps must be an integer >= 0, got -5"),
        ("checkpoint_every", 0, "config.checkpoint_every must be an integer >= 1, got 0"),
        ("batch_size", 0, "config.batch_size must be an integer >= 1, got 0"),
        ("data.worker_count", -1, "config.data.worker_count must be an integer >= 0, got -1"),
        ("model.mask_ratio", 1.0, "config.model.mask_ratio must be a finite number > 0.0 and < 1.0, got 1.0"),
        ("model.dtype", "float16", "config.model.dtype must be one of ['bfloat16', 'float32'], got 'float16'"),
        ("base_lr", float("nan"), "config.base_lr must be a finite number > 0, got nan"),
        ("data.data_dir", "/nonexistent/faces", "config.data.data_dir=/nonexistent/faces does not exist"),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(face_data, key, value, message):
    with pytest.raises(ConfigError) as caught:
        mae_pretrain.validate_config(tiny_config(face_data, **{key: value}))
    assert message in str(caught.value)


def test_config_error_at_the_command_line_is_one_line_with_status_2(face_data, tmp_path):
    code, out, err = run(tmp_path / "w", face_data, {"keep_checkpoints": 0})
    assert code == 2
    assert error_lines(err) == ["error: config.keep_checkpoints must be an integer >= 1, got 0"]
    assert "Traceback" not in err and not (tmp_path / "w" / "checkpoints").exists()


def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(face_data, tmp_path):
    workdir = tmp_path / "w"
    code, out, err = run(workdir, face_data)
    assert code == 0, err[-3000:]
    assert checkpoint_steps(workdir) == [3, 6, 9]
    first = losses(workdir)
    # Cut the largest array file of the newest checkpoint short, as a full disk or an interrupted copy does.
    largest = max((workdir / "checkpoints" / "9" / "state").rglob("*"), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])

    code, out, err = run(workdir, face_data)
    assert code == 0, err[-3000:]
    assert "Skipped damaged checkpoint step 9 (" in out
    assert f"moved it to {workdir / 'checkpoints.damaged' / '9'}" in out
    assert f"Resumed from {workdir / 'checkpoints'} at step 6" in out
    assert "Event loop is closed" not in err and err.count("Traceback") == 0
    assert checkpoint_steps(workdir) == [3, 6, 9]
    # Steps 7..9 ran again from step 6: the same trajectory as the first time.
    resumed = losses(workdir)
    assert [resumed[s] for s in (7, 8, 9)] == pytest.approx([first[s] for s in (7, 8, 9)], rel=1e-6)

    # Another batch size is not damage: grain could not restore its iterator, so the run stops, naming both.
    code, out, err = run(workdir, face_data, {"batch_size": 16})
    assert code == 1
    [line] = error_lines(err)
    assert line.startswith(
        f"error: {workdir / 'checkpoints'} holds a checkpoint (step 9) written with another "
        "data layout (sampler: checkpoint "
    )
    assert "local_batch_size=32" in line and "local_batch_size=16" in line
    assert checkpoint_steps(workdir) == [3, 6, 9] and "Skipped damaged checkpoint" not in out

    # With every checkpoint damaged there is nothing to fall back to: one line listing them, nothing moved.
    for path in (workdir / "checkpoints").glob("*/model/*"):
        if path.is_file():
            path.write_text("{not json")
    code, out, err = run(workdir, face_data)
    assert code == 1
    [line] = error_lines(err)
    assert line.startswith(f"error: no intact checkpoint in {workdir / 'checkpoints'} (step 9: ")
    assert "step 6: " in line and "step 3: " in line and "Move that directory away" in line
    assert checkpoint_steps(workdir) == [3, 6, 9]


def test_failed_save_is_one_error_and_the_rerun_resumes(face_data, tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    original_save = ocp.CheckpointManager.save

    def save_with_full_disk(self, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "checkpoints" / "6"))
        return original_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_with_full_disk)
    with pytest.raises(JobError) as caught:
        mae_pretrain.train(tiny_config(face_data), str(workdir))
    message = str(caught.value)
    assert f"could not save checkpoint step 6 in {workdir / 'checkpoints'}" in message
    assert "No space left on device" in message and "the newest intact checkpoint is step 3" in message
    first = losses(workdir)
    assert not (workdir / workdir_lib.LOCK_FILENAME).exists()

    monkeypatch.setattr(ocp.CheckpointManager, "save", original_save)
    state = mae_pretrain.train(tiny_config(face_data), str(workdir))
    assert int(state.step) == 9 and checkpoint_steps(workdir) == [3, 6, 9]
    resumed = losses(workdir)
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([first[s] for s in (4, 5, 6)], rel=1e-6)


def test_a_failed_background_save_is_named_by_its_own_step(tmp_path):
    """Orbax reports a failed asynchronous save at the next save: the error must name the step that failed."""
    checkpointer = checkpointing.Checkpointer(
        str(tmp_path / "checkpoints"), keep=2, model_description={}, with_data=False
    )
    state = {"w": np.zeros(3, np.float32)}
    checkpointer.save(3, state)
    checkpointer.wait()
    original_wait = checkpointer._manager.wait_until_finished
    failures = [OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "6"))]

    def wait_until_finished():
        if failures:
            raise failures.pop()
        original_wait()

    checkpointer._manager.wait_until_finished = wait_until_finished
    checkpointer._pending_step = 6  # step 6 was saving in the background when the disk filled up
    with pytest.raises(
        JobError,
        match=r"could not save checkpoint step 6 in .*No space left on device.*"
        r"the newest intact checkpoint is step 3",
    ):
        checkpointer.save(9, state)
    checkpointer.close()


def _children(pid: int) -> set[int]:
    found = set()
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_saves_a_checkpoint_and_stops_the_data_workers(face_data, tmp_path):
    workdir = tmp_path / "w"
    overrides = {"total_steps": 100000, "checkpoint_every": 100000, "data.worker_count": 1}
    proc = launch(workdir, face_data, overrides)
    deadline = time.time() + 120
    workers = set()
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if (
            workers
            and (workdir / "metrics.jsonl").exists()
            and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 2
        ):
            break
        time.sleep(0.1)
    assert proc.poll() is None and workers, "the run did not start its data workers"
    proc.send_signal(signal.SIGTERM)  # to the main process only, as `kill PID` does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    [line] = error_lines(err)
    assert line.startswith("error: stopped by SIGTERM at step ")
    step = int(line.split("at step ")[1].split(";")[0])
    assert checkpoint_steps(workdir) == [step]
    time.sleep(1.0)
    assert not [pid for pid in workers if _alive(pid)], "data workers outlived the training process"
    assert not (workdir / workdir_lib.LOCK_FILENAME).exists()


def test_second_run_on_a_locked_workdir_is_refused(face_data, tmp_path):
    workdir = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        workdir.mkdir()
        (workdir / workdir_lib.LOCK_FILENAME).write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": holder.pid,
                    "start": workdir_lib.process_start(holder.pid),
                    "time": time.time(),
                    "command": "python -m abaw_jax.main (the first run)",
                }
            )
        )
        code, out, err = run(workdir, face_data)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    [line] = error_lines(err)
    assert f"is in use by host {socket.gethostname()} PID {holder.pid}" in line
    assert "(the first run)" in line and "use another --workdir" in line
    assert not (workdir / "checkpoints").exists()


def _lock_of(pid: int, host: str | None = None) -> str:
    return json.dumps(
        {
            "host": host or socket.gethostname(),
            "pid": pid,
            "start": workdir_lib.process_start(pid),
            "time": time.time(),
            "command": "an earlier run",
        }
    )


def test_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / workdir_lib.LOCK_FILENAME
    lock_file.write_text(_lock_of(dead.pid))
    with workdir_lib.lock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(JobError, match=f"PID {os.getpid()} .*: this very process already holds it"):
            with workdir_lib.lock(tmp_path):
                pass
    assert f"Taking over the lock {lock_file} of host {socket.gethostname()} PID {dead.pid}" in capsys.readouterr().out
    assert not lock_file.exists()


def test_lock_of_another_host_names_the_file_to_delete(tmp_path):
    (tmp_path / workdir_lib.LOCK_FILENAME).write_text(_lock_of(1, host="gpu-node-7"))
    with pytest.raises(
        JobError,
        match=f"in use by host gpu-node-7 PID 1 .*another host. If that run is over, "
        f"delete {tmp_path / workdir_lib.LOCK_FILENAME}",
    ):
        with workdir_lib.lock(tmp_path):
            pass


PARENT = """
import multiprocessing, sys, time
from abaw_jax.data import mae_pipeline

def worker():
    mae_pipeline.exit_with_parent()  # what each grain worker does on its first record
    time.sleep(120)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=worker, daemon=True)
    child.start()
    print(child.pid, flush=True)
    time.sleep(120)
"""


def test_data_workers_exit_when_the_training_process_is_killed(tmp_path):
    """SIGKILL (the OOM killer) runs no cleanup at all: the workers must notice on their own."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # let the child start its watch
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "a worker outlived its killed parent"
