"""The embedded default data: face shards built once from a generated synthetic Aff-Wild2 release."""

from __future__ import annotations

import os
import pathlib

from abaw_jax.data import face_shards, release

SOURCE_NAME = "synthetic_affwild2"


def default_face_shards(
    cache_dir: str | os.PathLike | None = None, *, num_videos: int = 16, frames_per_video: int = 300, seed: int = 0
) -> pathlib.Path:
    """Returns a data_dir of face shards made from a synthetic release's crops, building them if missing.

    The shards' quality report is written last, so its presence marks a complete build; anything short
    of that is built again (the release itself is regenerated only if it is incomplete). Runs that share
    the cache wait for each other (`release.build_lock`), so two jobs started at once never build into
    the same folder.
    """
    sizes = dict(num_videos=num_videos, frames_per_video=frames_per_video, seed=seed)
    root = release.synthetic_root(cache_dir, **sizes)
    data_dir = root / "face_shards"
    report = face_shards.dataset_dir(data_dir) / face_shards.REPORT_FILENAME
    if report.exists():
        return data_dir
    source = release.synthetic_release(cache_dir, **sizes)
    with release.build_lock(root):
        if not report.exists():
            print(f"Building face shards from the synthetic release's crops in {data_dir} (once)", flush=True)
            face_shards.build_face_shards({SOURCE_NAME: source / "cropped_aligned"}, data_dir, overwrite=True)
    return data_dir
