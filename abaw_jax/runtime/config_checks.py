"""Checks of config values (not only keys): each raises `ConfigError` naming `config.<key>` and the bad value.

A job validates its config before doing any work, one line per constraint:

    from abaw_jax.runtime import config_checks as checks

    checks.integer(config, "keep_checkpoints", minimum=1)
    checks.integer(config, "total_steps", minimum=0)        # 0 = epoch based
    checks.number(config, "base_lr", minimum=0, exclusive=True)
    checks.fraction(config, "model.mask_ratio")             # strictly between 0 and 1
    checks.choice(config, "model.dtype", ("float32", "bfloat16"))
    checks.path(config, "data.data_dir", kind="dir", allow_empty=True)
    checks.names(config, "sets")                             # "au,expr" or ("au", "expr") -> ("au", "expr")

Keys are dotted paths into the ConfigDict; each check returns the value it checked.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from abaw_jax.runtime.errors import ConfigError


def value(config: Any, key: str) -> Any:
    """The value at dotted `key` of a ConfigDict (or any object with attributes)."""
    node = config
    for part in key.split("."):
        try:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        except (AttributeError, KeyError):
            raise ConfigError(f"config.{key} is missing from the config") from None
    return node


def integer(config: Any, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool) within [minimum, maximum]."""
    got = value(config, key)
    bounds = _bounds_text(minimum, maximum)
    if isinstance(got, bool) or not isinstance(got, int):
        raise ConfigError(f"config.{key} must be an integer{bounds}, got {got!r}")
    if (minimum is not None and got < minimum) or (maximum is not None and got > maximum):
        raise ConfigError(f"config.{key} must be an integer{bounds}, got {got}")
    return got


def number(
    config: Any, key: str, *, minimum: float | None = None, maximum: float | None = None, exclusive: bool = False
) -> float:
    """A finite int or float within the bounds (excluding them when `exclusive`)."""
    got = value(config, key)
    low, high = (">", "<") if exclusive else (">=", "<=")
    bounds = " and ".join(f"{op} {b}" for op, b in ((low, minimum), (high, maximum)) if b is not None)
    expected = f"a finite number {bounds}".rstrip()
    if isinstance(got, bool) or not isinstance(got, (int, float)) or got != got or abs(got) == float("inf"):
        raise ConfigError(f"config.{key} must be {expected}, got {got!r}")
    too_low = minimum is not None and (got <= minimum if exclusive else got < minimum)
    too_high = maximum is not None and (got >= maximum if exclusive else got > maximum)
    if too_low or too_high:
        raise ConfigError(f"config.{key} must be {expected}, got {got}")
    return float(got)


def fraction(config: Any, key: str, *, inclusive: bool = False) -> float:
    """A number in (0, 1), or in [0, 1] when `inclusive`."""
    return number(config, key, minimum=0.0, maximum=1.0, exclusive=not inclusive)


def choice(config: Any, key: str, choices: Collection[Any]) -> Any:
    got = value(config, key)
    if got not in choices:
        raise ConfigError(f"config.{key} must be one of {sorted(choices)}, got {got!r}")
    return got


def path(config: Any, key: str, *, kind: str = "any", allow_empty: bool = False) -> str:
    """An existing path: kind 'dir', 'file' or 'any'; '' passes when `allow_empty` (meaning a default)."""
    got = value(config, key)
    if not isinstance(got, str):
        raise ConfigError(f"config.{key} must be a path (a string), got {got!r}")
    if not got:
        if allow_empty:
            return got
        raise ConfigError(f"config.{key} must name an existing {_KINDS[kind]}, got ''")
    if not os.path.exists(got):
        raise ConfigError(f"config.{key}={got} does not exist (expected an existing {_KINDS[kind]})")
    if (kind == "dir" and not os.path.isdir(got)) or (kind == "file" and not os.path.isfile(got)):
        found = "directory" if os.path.isdir(got) else "file"
        raise ConfigError(f"config.{key}={got} is a {found}, expected a {_KINDS[kind]}")
    return got


_KINDS = {"dir": "directory", "file": "file", "any": "file or directory"}


def names(config: Any, key: str, *, distinct: bool = True) -> tuple[str, ...]:
    """A list of names, written "a,b" or ("a", "b") (`--config.key=a,b` on a tuple field gives ("a,b",)); blank
    entries are dropped, and with `distinct` a name given twice is an error."""
    got = value(config, key)
    items = (got,) if isinstance(got, str) else tuple(got)
    listed = tuple(n.strip() for item in items for n in str(item).split(",") if n.strip())
    if distinct and len(set(listed)) != len(listed):
        raise ConfigError(f"config.{key}={got!r} names {sorted({n for n in listed if listed.count(n) > 1})} twice")
    return listed


def _bounds_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
