"""The embedded default data: face shards built once from a generated synthetic Aff-Wild2 release."""
from __future__ import annotations

import fcntl
import os
import pathlib

from abaw_jax.data import face_shards, synthetic

SOURCE_NAME = "synthetic_affwild2"


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ABAW_JAX_CACHE", pathlib.Path.home() / ".cache" / "abaw_jax"))


def default_face_shards(cache_dir: str | os.PathLike | None = None, *, num_videos: int = 16,
                        frames_per_video: int = 300, seed: int = 0) -> pathlib.Path:
    """Returns a data_dir of face shards made from a synthetic release's crops, building them if missing.

    The shards' quality report is written last, so its presence marks a complete build; anything short
    of that (an interrupted generation or build) is generated again from scratch. Runs that share the
    cache wait for each other (an flock on `<root>/.build_lock`, released by the OS if a builder dies), so
    two jobs started at once never build into the same folder.
    """
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / f"synthetic_v{num_videos}_f{frames_per_video}_s{seed}"
    data_dir = root / "face_shards"
    report = face_shards.dataset_dir(data_dir) / face_shards.REPORT_FILENAME
    if report.exists():
        return data_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build_lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not report.exists():
            print(f"Generating the synthetic Aff-Wild2 release and its face shards in {root} (once)", flush=True)
            release = root / "release"
            synthetic.generate(release, num_videos=num_videos, frames_per_video=frames_per_video, seed=seed)
            face_shards.build_face_shards({SOURCE_NAME: release / "cropped_aligned"}, data_dir, overwrite=True)
    return data_dir
