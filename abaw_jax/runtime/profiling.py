"""Attributing a profiled step's time to op categories, from a perfetto trace and the compiled HLO.

`hlo_instructions` reads a compiled module's text (`jit(f).lower(...).compile().as_text()`) into one record
per instruction; `categorize` assigns it a category from its kind, the computation a fusion calls and the
Flax module path in its `op_name` metadata; `summarize_trace` adds up a `jax.profiler` perfetto trace's op
events by category. `benchmarks/mae_profile.py` uses them on the MAE step; the categories fit any ViT job.
"""

from __future__ import annotations

import collections
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
    if ops & {"dot", "convolution"} or "gemm" in target or "matmul" in target.lower():
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


def summarize_trace(trace_path: str, instructions: dict[str, dict[str, object]], steps: int) -> dict[str, float]:
    """Seconds per step per category from a perfetto trace of `steps` steps."""
    with gzip.open(trace_path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    seconds: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") != "X":
            continue
        args = event.get("args") or {}
        name = str(args.get("hlo_op") or event.get("name", ""))
        if _TRANSFER_EVENTS.search(event.get("name", "")):
            seconds["transfers"] += event.get("dur", 0) * 1e-6
        elif name in instructions:
            seconds[categorize(instructions[name])] += event.get("dur", 0) * 1e-6
    return {c: seconds.get(c, 0.0) / steps for c in CATEGORIES}
