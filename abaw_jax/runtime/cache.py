"""Where abaw_jax keeps what it can rebuild: `$ABAW_JAX_CACHE` (default ~/.cache/abaw_jax).

It holds the synthetic releases (`data.release`), converted detector weights and JAX's persistent compilation
cache, which every job turns on (`enable_compilation_cache`): a rerun, a resume or the next stage of a pipeline
with the same shapes skips XLA compilation (on an H200, evaluation's first call took 26.5 s against 2.2 s
steady, nearly all of it compilation).
"""

from __future__ import annotations

import os
import pathlib

import jax

# Programs that compile faster than this are not worth a disk entry.
_MIN_COMPILE_SECONDS = 1.0


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ABAW_JAX_CACHE", pathlib.Path.home() / ".cache" / "abaw_jax"))


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache under `cache_dir()/jax_compilation`, unless a directory was
    chosen already (JAX_COMPILATION_CACHE_DIR, or a test's own)."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax_compilation"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
