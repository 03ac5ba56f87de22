"""Attributing a profiled step's time to op categories, from a perfetto trace and the compiled HLO.

`hlo_instructions` reads a compiled module's text (`jit(f).lower(...).compile().as_text()`) into one record
per instruction; `categorize` assigns it a category from its kind, the computation a fusion calls and the
Flax module path in its `op_name` metadata; `summarize_trace` adds up a `jax.profiler` perfetto trace's op
events by category: the device's kernel events where the trace has them (GPU streams, each kernel naming its
HLO instruction in `args.hlo_op`), else the host runtime's op events (a CPU backend).
`benchmarks/mae_profile.py` uses them on the MAE step; the categories fit any ViT job.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re

CATEGORIES = (
    "matmul",
    "attention",
    "layernorm",
    "gelu/elementwise",
    "masking",
    "optimizer",
    "loss",
    "transfers",
    "other",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_NORMS = re.compile(r"/(norm1|norm2|norm|fc_norm|decoder_norm)/")
_MASKING = re.compile(r"random_masking|permute_tokens|argsort|sort|gather|scatter|take_along_axis")
_TRANSFER_EVENTS = re.compile(r"memcpy|MemcpyH2D|MemcpyD2H|TransferToDevice|TransferFromDevice", re.I)
# cuBLAS/cuBLASLt kernel names (`sm90_xmma_gemm_*`, Hopper's `nvjet_*`) and XLA's GEMM custom-call targets.
_GEMM = re.compile(r"gemm|matmul|nvjet|xmma", re.I)
_DERIVED_LINES = frozenset(
    ("XLA Modules", "XLA Ops", "XLA TraceMe", "Steps", "Framework Ops", "Framework Name Scope", "Source code")
)


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, object]]:
    """Instruction name -> {'opcode', 'op_name', 'target', 'inner': opcodes of a fusion's computation}."""
    computations: dict[str, list[str]] = collections.defaultdict(list)
    instructions: dict[str, dict[str, object]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        computations[current].append(opcode)
        op_name = _OP_NAME.search(line)
        target = _TARGET.search(line)
        calls = _CALLS.search(line)
        instructions[name] = {
            "opcode": opcode,
            "op_name": op_name.group(1) if op_name else "",
            "target": target.group(1) if target else "",
            "calls": calls.group(1) if calls else "",
        }
    for info in instructions.values():
        info["inner"] = set(computations.get(info.pop("calls"), ()))
    return instructions


def categorize(info: dict[str, object]) -> str:
    """The category of one compiled HLO instruction (see the module docstring)."""
    opcode, op_name, target, inner = info["opcode"], str(info["op_name"]), str(info["target"]), info["inner"]
    ops = {opcode} | set(inner)
    if opcode in ("copy-start", "copy-done", "send", "recv", "infeed", "outfeed"):
        return "transfers"
    if "cudnn" in target and ("fmha" in target or "attention" in target.lower()):
        return "attention"
    if "/cond/" in op_name or op_name.endswith("/cond") or "global_norm" in op_name or "adam" in op_name.lower():
        return "optimizer"
    in_attention = "/attn/" in op_name and "/qkv/" not in op_name and "/proj/" not in op_name
    if in_attention:
        return "attention"
    if ops & {"dot", "convolution"} or _GEMM.search(target):
        return "matmul"
    if _NORMS.search(op_name):
        return "layernorm"
    if _MASKING.search(op_name) or ops & {"sort", "gather", "scatter"}:
        return "masking"
    if "reconstruction_loss" in op_name or "patchify" in op_name or "loss" in op_name:
        return "loss"
    if "/mlp/" in op_name or "erf" in op_name or ops & {"add", "multiply", "subtract", "divide", "erf", "exponential"}:
        return "gelu/elementwise"
    return "other"


@dataclasses.dataclass
class TraceSummary:
    """Op time per step by category, and where in the trace it was read."""

    seconds_per_step: dict[str, float]
    # "device": the accelerator's kernel events (GPU streams, or a TPU's "XLA Ops" line); "host": the CPU
    # runtime's thunk events, which on a CPU backend are the ops themselves.
    source: str
    # Op time (included in seconds_per_step) whose event names no instruction of the compiled module: kernels
    # of another module, memsets, or an HLO name the module text lacks. Large values mean a stale module.
    unmatched_seconds_per_step: float


def _trace_events(trace_path: str) -> list[dict]:
    with gzip.open(trace_path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _device_op_events(events: list[dict]) -> list[dict]:
    """The accelerator's kernel events: complete events of `/device:*` processes on their stream lines.

    On a GPU the host's thunk events name only the launches (with command buffers, one `call` per CUDA graph:
    microseconds against the graph's milliseconds of kernels), so the op time is on the device's lines.
    Profiler-derived lines ("XLA Ops", "XLA Modules", "Steps") repeat the same time, so the raw stream lines are
    read when present and "XLA Ops" only where there are none (TPU traces).
    """
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            processes[event.get("pid")] = str((event.get("args") or {}).get("name", ""))
        elif event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[(event.get("pid"), event.get("tid"))] = str((event.get("args") or {}).get("name", ""))
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    on_device = [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids]
    line = lambda e: threads.get((e.get("pid"), e.get("tid")), "")
    streams = [e for e in on_device if line(e) not in _DERIVED_LINES]
    return streams or [e for e in on_device if line(e) == "XLA Ops"]


def summarize_trace(trace_path: str, instructions: dict[str, dict[str, object]], steps: int) -> TraceSummary:
    """Op seconds per step per category from a `jax.profiler` perfetto trace of `steps` steps.

    Device kernel events are attributed through their `hlo_op` argument (the HLO instruction that launched
    them); a kernel whose instruction the module text lacks is categorised from its `tf_op` (the op_name
    metadata) and kernel name. Without device events (a CPU backend), the host's thunk events are the ops.
    """
    seconds: dict[str, float] = collections.Counter()
    unmatched = 0.0
    device_events = _device_op_events(events := _trace_events(trace_path))
    for event in device_events:
        args = event.get("args") or {}
        duration = event.get("dur", 0) * 1e-6
        name = str(event.get("name", ""))
        op = str(args.get("hlo_op", ""))
        if _TRANSFER_EVENTS.search(name):
            seconds["transfers"] += duration
        elif op in instructions:
            seconds[categorize(instructions[op])] += duration
        else:
            unmatched += duration
            info = {"opcode": "", "op_name": str(args.get("tf_op", "")), "target": name, "inner": set()}
            seconds[categorize(info)] += duration
    if not device_events:
        for event in events:
            if event.get("ph") != "X":
                continue
            args = event.get("args") or {}
            name = str(args.get("hlo_op") or event.get("name", ""))
            if _TRANSFER_EVENTS.search(event.get("name", "")):
                seconds["transfers"] += event.get("dur", 0) * 1e-6
            elif name in instructions:
                seconds[categorize(instructions[name])] += event.get("dur", 0) * 1e-6
    return TraceSummary(
        {c: seconds.get(c, 0.0) / steps for c in CATEGORIES}, "device" if device_events else "host", unmatched / steps
    )
