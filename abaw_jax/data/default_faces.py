"""The embedded default data: face shards built once from a generated synthetic Aff-Wild2 release."""
from __future__ import annotations

import os
import pathlib

from abaw_jax.data import face_shards, release

SOURCE_NAME = "synthetic_affwild2"


def default_face_shards(cache_dir: str | os.PathLike | None = None, *, num_videos: int = 16,
                        frames_per_video: int = 300, seed: int = 0) -> pathlib.Path:
    """Returns a data_dir of face shards made from a synthetic release's crops, building them if missing.

    The shards' quality report is written last, so its presence marks a complete build; anything short
    of that is built again (the release itself is regenerated only if it is incomplete).
    """
    sizes = dict(num_videos=num_videos, frames_per_video=frames_per_video, seed=seed)
    data_dir = release.synthetic_root(cache_dir, **sizes) / "face_shards"
    if not (face_shards.dataset_dir(data_dir) / face_shards.REPORT_FILENAME).exists():
        root = release.synthetic_release(cache_dir, **sizes)
        print(f"Building face shards from the synthetic release's crops in {data_dir} (once)", flush=True)
        face_shards.build_face_shards({SOURCE_NAME: root / "cropped_aligned"}, data_dir, overwrite=True)
    return data_dir
