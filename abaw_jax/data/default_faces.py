"""The embedded default data: face shards built once from a generated synthetic Aff-Wild2 release."""
from __future__ import annotations

import os
import pathlib

from abaw_jax.data import face_shards, synthetic

SOURCE_NAME = "synthetic_affwild2"


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ABAW_JAX_CACHE", pathlib.Path.home() / ".cache" / "abaw_jax"))


def default_face_shards(cache_dir: str | os.PathLike | None = None, *, num_videos: int = 16,
                        frames_per_video: int = 300, seed: int = 0) -> pathlib.Path:
    """Returns a data_dir of face shards made from the synthetic release's crops, building what is missing."""
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    name = f"synthetic_v{num_videos}_f{frames_per_video}_s{seed}"
    release = cache / name / "release"
    if not (release / "generation.json").exists():
        print(f"Generating the synthetic Aff-Wild2 release in {release} (once)", flush=True)
        synthetic.generate(release, num_videos=num_videos, frames_per_video=frames_per_video, seed=seed)
    data_dir = cache / name / "face_shards"
    face_shards.build_face_shards({SOURCE_NAME: release / "cropped_aligned"}, data_dir)
    return data_dir
