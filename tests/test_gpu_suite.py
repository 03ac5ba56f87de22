"""The benchmark suite in toy mode on the CPU, so that it cannot rot.

CI runs six of its benchmarks at toy sizes (the step profile, the fusion ensemble, feature extraction, the
fine-tuning step, evaluation and decode scaling: about 100 s on two idle cores); the whole toy suite takes several
minutes on two cores (`python -m benchmarks.gpu_suite --sizes=toy`).
"""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _suite(out: pathlib.Path, *flags: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", f"--out={out}", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "suite.json").read_text()), done.stdout


def test_toy_suite_runs_the_profile_and_the_fusion_ensemble(tmp_path):
    summary, stdout = _suite(tmp_path, "--sizes=toy", "--only=mae_profile,fusion_ensemble")
    outcomes = {b["name"]: b for b in summary["benchmarks"]}
    assert list(outcomes) == ["mae_profile", "fusion_ensemble"]
    for name, outcome in outcomes.items():
        assert outcome["status"] == "ok", (name, pathlib.Path(outcome["log"]).read_text()[-3000:])
        assert outcome["json"] == str(tmp_path / f"{name}.json")
        assert f"| {name} | ok |" in stdout

    profile = json.loads((tmp_path / "mae_profile.json").read_text())
    ops = profile["op_s_per_step"]
    assert profile["event_source"] == "host"  # a CPU backend: the runtime's op events are the ops
    assert ops["matmul"] > 0 and ops["attention"] > 0
    # The failure this guards against: every op landing in "other".
    assert ops["other"] < 0.5 * sum(ops.values()), ops

    fusion = json.loads((tmp_path / "fusion_ensemble.json").read_text())
    assert set(fusion["clips_per_s"]) == {"jax_vmap", "torch_eager"}
    assert all(rate > 0 for rate in fusion["clips_per_s"].values())
    assert fusion["torch_device"].startswith("cpu")
    assert "clips/s" in outcomes["fusion_ensemble"]["headline"]


def test_a_benchmark_past_the_cap_is_recorded_and_the_suite_goes_on(tmp_path):
    # Two seconds is less than importing JAX takes: the first is killed, no time is left for the second.
    summary, stdout = _suite(tmp_path, "--sizes=toy", "--only=evaluation,predict", "--total_cap_s=2")
    outcomes = {b["name"]: b for b in summary["benchmarks"]}
    assert outcomes["evaluation"]["status"] == "timed out"
    assert outcomes["evaluation"]["json"] is None
    assert 1.5 < outcomes["evaluation"]["seconds"] < 30
    assert outcomes["predict"]["status"] == "skipped (suite cap spent)"
    assert "| evaluation | timed out |" in stdout


def test_accelerator_caps_fit_in_nine_minutes():
    # Read in a process of its own: importing the suite here would add its absl flags to this one's.
    script = (
        "import json; from benchmarks import gpu_suite as s; "
        "print(json.dumps([[b.name, b.gpu_cap_s, b.torch_side, list(b.gpu_args + b.toy_args)] for b in s.BENCHMARKS]))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    benchmarks = json.loads(done.stdout)
    assert sum(cap for _, cap, _, _ in benchmarks) <= 9 * 60
    names = [name for name, _, _, _ in benchmarks]
    assert len(set(names)) == len(names)
    # The PyTorch side of the MAE step runs in a process of its own, never with ours.
    torch_side = [(name, args) for name, _, side, args in benchmarks if side]
    assert [name for name, _ in torch_side] == ["mae_step_torch"]
    assert all("jax" not in arg for _, args in torch_side for arg in args)


def test_toy_suite_runs_the_frame_path_and_evaluation_benchmarks(tmp_path):
    names = ["feature_extraction", "finetune_step", "evaluation", "decode_scaling"]
    summary, stdout = _suite(tmp_path, "--sizes=toy", f"--only={','.join(names)}")
    outcomes = {b["name"]: b for b in summary["benchmarks"]}
    assert list(outcomes) == names
    for name, outcome in outcomes.items():
        assert outcome["status"] == "ok", (name, pathlib.Path(outcome["log"]).read_text()[-3000:])

    features = json.loads((tmp_path / "feature_extraction.json").read_text())
    (row,) = features["results"]
    assert row["ours_frames_per_s"] > 0 and row["decode_frames_per_s"] > 0
    # Our device-resize path and timm's on the same crops and weights: the same features.
    assert row["max_abs_feature_diff"] < 1e-3
    step = json.loads((tmp_path / "finetune_step.json").read_text())
    assert step["img_per_s"]["jax"]["best"] > 0 and step["jax_over_torch"] > 0
    assert "img/s" in outcomes["finetune_step"]["headline"] and "timm" in outcomes["feature_extraction"]["headline"]
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert {t["task"] for t in evaluation["tasks"]} == {"AU", "EXPR", "VA"}
