"""The whole method across hosts: two loopback JAX processes (`jax.distributed` on 127.0.0.1, as the pretraining
tests do) run the micro pipeline for one task; one of them is killed mid-run, the rerun resumes, and every stage
ends with the outputs of one process holding the same two devices."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from abaw_jax.data.predictions import Predictions

TESTS = pathlib.Path(__file__).resolve().parent
STAGES = ("mae", "finetune_expr", "features", "fusion_expr", "evaluate_expr")
RUNNER = """
import sys
sys.path.insert(0, {tests!r})
import jax
if {processes} > 1:
    jax.distributed.initialize("127.0.0.1:{port}", {processes}, int(sys.argv[1]))
from absl import flags
flags.FLAGS.mark_as_parsed()
from conftest import micro_pipeline_config
from abaw_jax.jobs.registry import JOBS
JOBS["pipeline"](micro_pipeline_config({cache!r}, tasks="expr", audio_ablation=""), {root!r})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: pathlib.Path, cache: pathlib.Path, *, processes: int, devices: int) -> list[subprocess.Popen]:
    code = RUNNER.format(tests=str(TESTS), processes=processes, port=_free_port(), cache=str(cache), root=str(root))
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
    )
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            env=env,
            cwd=TESTS.parent,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in range(processes)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


def _stage(root: pathlib.Path, name: str) -> dict:
    return json.loads((root / name / "stage.json").read_text())


def test_two_processes_killed_and_resumed_match_one_process(tmp_path):
    cache = tmp_path / "cache"
    single, multi = tmp_path / "single", tmp_path / "multi"
    _finish(_launch(single, cache, processes=1, devices=2))  # also builds the synthetic release once

    first = _launch(multi, cache, processes=2, devices=1)
    deadline = time.time() + 600
    while not (multi / "fusion_expr" / "stage.json").exists() and time.time() < deadline:
        assert all(p.poll() is None for p in first), first[0].communicate()[0][-4000:]
        time.sleep(0.2)
    time.sleep(2)  # into the fusion stage's training
    os.killpg(first[1].pid, signal.SIGKILL)
    try:
        first[0].wait(timeout=120)  # its next collective fails without the peer
    except subprocess.TimeoutExpired:
        os.killpg(first[0].pid, signal.SIGKILL)
    for p in first:
        p.communicate()
    assert not _stage(multi, "fusion_expr")["complete"]

    leader, _ = _finish(_launch(multi, cache, processes=2, devices=1))
    for name in ("mae", "finetune_expr", "features"):
        assert f"{name}: done earlier with these settings, skipped" in leader
    assert "fusion_expr: resuming the unfinished run" in leader

    for name in STAGES:
        assert _stage(multi, name)["fingerprint"] == _stage(single, name)["fingerprint"], name
    ours, reference = (Predictions(root / "fusion_expr" / "predictions") for root in (multi, single))
    for member in reference.members:
        for track in reference.tracks():
            np.testing.assert_allclose(ours.outputs(member, track), reference.outputs(member, track), atol=1e-6)
    submission = pathlib.Path("evaluate_expr", "submissions", "EXPR.txt")
    assert (multi / submission).read_text() == (single / submission).read_text()
    assert (multi / "report" / "report.md").exists() and (multi / "predictor" / "bundle.json").exists()
