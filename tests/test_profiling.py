"""The profile's attribution of compiled HLO ops to categories, on the job's real tiny step, and of a trace's
op events (device kernels on a GPU, host thunks on a CPU) to those categories."""

import functools
import gzip
import json

import jax
import jax.numpy as jnp
import optax
import pytest

from abaw_jax.jobs import mae_pretrain
from abaw_jax.models.mae import MAE, mae_config
from abaw_jax.runtime import optimizer, profiling, sharding


@pytest.fixture(scope="module")
def instructions():
    model = MAE(mae_config("tiny", image_size=32, patch_size=8))
    schedule = optax.constant_schedule(1e-4)
    tx = optimizer.make_optimizer(schedule, b1=0.9, b2=0.95, weight_decay=0.05)
    init = functools.partial(mae_pretrain.init_state, model=model, cfg=model.config, tx=tx)
    step = jax.jit(
        functools.partial(
            mae_pretrain.train_step,
            model=model,
            cfg=model.config,
            tx=tx,
            schedule=schedule,
            micro_batches=1,
            mesh=sharding.make_mesh(1, jax.devices()[:1]),
        )
    )
    text = (
        step.lower(jax.eval_shape(init, jax.random.key(0)), jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.uint8))
        .compile()
        .as_text()
    )
    return profiling.hlo_instructions(text)


def test_compiled_step_ops_fall_in_the_right_categories(instructions):
    by_category = {}
    for name, info in instructions.items():
        by_category.setdefault(profiling.categorize(info), []).append(info)
    fc1_dots = [
        i for i in instructions.values() if "/mlp/fc1/" in i["op_name"] and "dot" in ({i["opcode"]} | i["inner"])
    ]
    assert fc1_dots and all(profiling.categorize(i) == "matmul" for i in fc1_dots)
    softmax = [
        i for i in instructions.values() if "/attn/" in i["op_name"] and "exponential" in ({i["opcode"]} | i["inner"])
    ]
    assert softmax and all(profiling.categorize(i) == "attention" for i in softmax)
    update = [i for i in instructions.values() if "/cond/branch" in i["op_name"]]
    assert update and all(profiling.categorize(i) == "optimizer" for i in update)
    assert by_category.get("layernorm") and by_category.get("masking")


def _first(instructions, category, needle):
    return next(n for n, i in instructions.items() if needle in i["op_name"] and profiling.categorize(i) == category)


def _write_trace(path, events, device=True):
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 1, "tid": 10, "name": "thread_name", "args": {"name": "python"}},
    ]
    if device:
        meta += [
            {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
            {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
        ]
    with gzip.open(path, "wt") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": meta + events}, f)


def _kernel(name, dur_us, hlo_op=None, tid=7, tf_op=""):
    args = {"hlo_module": "jit_train_step", "correlation_id": "1", "tf_op": tf_op}
    if hlo_op is not None:
        args["hlo_op"] = hlo_op
    return {"ph": "X", "pid": 2, "tid": tid, "ts": 0.0, "dur": dur_us, "name": name, "args": args}


def test_device_kernel_events_are_attributed_through_their_hlo_op(instructions, tmp_path):
    """A GPU trace: kernels on the stream line carry the HLO op; host launch events and derived lines must not
    count, and the per-category sums must be exactly the kernels' durations."""
    fc1 = _first(instructions, "matmul", "/mlp/fc1/")
    softmax = _first(instructions, "attention", "/attn/")
    update = _first(instructions, "optimizer", "/cond/branch")
    norm = next(n for n, i in instructions.items() if profiling.categorize(i) == "layernorm")
    steps = 2
    events = [
        # The host's launch of a CUDA graph: a `call` the categories know nothing of. Counted, it would be
        # "other" (the failure this guards against), and it must not be counted at all.
        {"ph": "X", "pid": 1, "tid": 10, "ts": 0.0, "dur": 9.0, "name": "call.1", "args": {"hlo_op": "call.1"}},
        _kernel("loop_dot_fusion", 300.0, fc1),
        _kernel("loop_softmax_fusion", 200.0, softmax),
        _kernel("loop_adam_fusion", 100.0, update),
        _kernel("input_reduce_fusion", 50.0, norm),
        _kernel("MemcpyH2D", 10.0),
        # A kernel whose instruction the module text lacks: categorised from its kernel name and tf_op.
        _kernel("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", 40.0, "custom-call.999", tf_op="blocks_0/mlp/fc2/dot"),
        _kernel("memset32_aligned1D", 5.0),
        # The profiler's derived "XLA Ops" line repeats the stream's time.
        _kernel(fc1, 300.0, fc1, tid=8),
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    _write_trace(path, events)
    summary = profiling.summarize_trace(str(path), instructions, steps)
    assert summary.source == "device"
    expected = {"matmul": 340.0, "attention": 200.0, "optimizer": 100.0, "layernorm": 50.0, "transfers": 10.0}
    expected["other"] = 5.0
    for category in profiling.CATEGORIES:
        assert summary.seconds_per_step[category] == pytest.approx(expected.get(category, 0.0) * 1e-6 / steps)
    assert summary.unmatched_seconds_per_step == pytest.approx(45.0 * 1e-6 / steps)


def test_without_device_events_the_host_op_events_count(instructions, tmp_path):
    """A CPU trace: the thunk executor's events name the ops themselves."""
    fc1 = _first(instructions, "matmul", "/mlp/fc1/")
    host = lambda name, dur: {"ph": "X", "pid": 1, "tid": 10, "ts": 0.0, "dur": dur, "name": name, "args": {}}
    events = [
        {**host(fc1, 70.0), "args": {"hlo_op": fc1, "hlo_module": "jit_train_step"}},
        host("end: " + fc1, 1.0),
        host("ThunkExecutor::Execute (wait for completion)", 3.0),
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    _write_trace(path, events, device=False)
    summary = profiling.summarize_trace(str(path), instructions, 1)
    assert summary.source == "host"
    assert summary.seconds_per_step["matmul"] == pytest.approx(70e-6)
    assert sum(summary.seconds_per_step.values()) == pytest.approx(70e-6)
