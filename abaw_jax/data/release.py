"""Where the parts of an Aff-Wild2 release are, and the embedded synthetic release the tiny presets use.

Every downstream job has a `config.data` section made by `data_config()`. `config.data.root` is the
release root; each part defaults to its place in the synthetic release's layout (the ABAW layout with
the test material under `test_set/`) and can be pointed elsewhere one by one, since users unpack the
licensed release in their own ways:

  annotations        <root>/annotations             the three <task>_Challenge folders
  crops              <root>/cropped_aligned         <track>/<k:05d>.jpg
  videos             <root>/videos                  <video>.mp4 / .avi (audio comes from here); optional
                                                    for every stage but audio feature extraction
  test_lists         <root>/test_set/names_of_videos_in_each_test_set
  examples           <root>/test_set/prediction_files_format
  reaction_list      <root>/reaction_videos.txt     the reaction-scene videos (SDD); optional
  test_ground_truth  <root>/test_set/ground_truth   only the synthetic release has one; optional

An empty `root` means the embedded synthetic release, generated once into the cache
(`$ABAW_JAX_CACHE`, default ~/.cache/abaw_jax) from `synthetic_videos`, `synthetic_frames_per_video`,
`synthetic_seed` and `synthetic_preset` (empty: the default generator; else a `synthetic.PRESETS` name, whose
test videos and premises the release takes, e.g. `claims`, the claims study's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
from collections.abc import Iterator, Sequence

import ml_collections

from abaw_jax import tasks
from abaw_jax.data import synthetic
from abaw_jax.runtime import cache

_COMPLETE = ".complete"
_DEFAULT_PARTS = {
    "annotations": "annotations",
    "crops": "cropped_aligned",
    "videos": "videos",
    "test_lists": "test_set/names_of_videos_in_each_test_set",
    "examples": "test_set/prediction_files_format",
    "reaction_list": "reaction_videos.txt",
    "test_ground_truth": "test_set/ground_truth",
}
_OPTIONAL = ("videos", "reaction_list", "test_ground_truth")


def synthetic_root(
    cache_dir: str | os.PathLike | None, *, num_videos: int, frames_per_video: int, seed: int, preset: str = ""
) -> pathlib.Path:
    """The cache folder of one synthetic release (its `release/` and whatever is built from it)."""
    folder = pathlib.Path(cache_dir) if cache_dir else cache.cache_dir()
    return folder / f"synthetic_{preset + '_' if preset else ''}v{num_videos}_f{frames_per_video}_s{seed}"


@contextlib.contextmanager
def build_lock(root: pathlib.Path) -> Iterator[None]:
    """Holds an flock on `<root>/.build_lock`; the OS releases it if the holder dies."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build_lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def synthetic_release(
    cache_dir: str | os.PathLike | None = None,
    *,
    num_videos: int = 16,
    frames_per_video: int = 300,
    seed: int = 0,
    preset: str = "",
) -> pathlib.Path:
    """The root of a synthetic release in the cache, generated (from scratch) unless a complete one is there.

    `preset` (a `synthetic.PRESETS` name) gives the test videos and premises; the sizes are the arguments'.
    Runs sharing the cache wait for each other's generation (`build_lock`)."""
    options = synthetic.preset_arguments(preset) if preset else {}
    options.update(num_videos=num_videos, frames_per_video=frames_per_video, seed=seed)
    root = synthetic_root(cache_dir, num_videos=num_videos, frames_per_video=frames_per_video, seed=seed, preset=preset)
    release = root / "release"
    if not (release / _COMPLETE).exists():
        with build_lock(root):
            if not (release / _COMPLETE).exists():
                print(f"Generating the synthetic Aff-Wild2 release in {release} (once)", flush=True)
                synthetic.generate(release, **options)
                (release / _COMPLETE).write_text("")
    return release


def data_config(
    *, num_videos: int = 16, frames_per_video: int = 300, seed: int = 0, preset: str = ""
) -> ml_collections.ConfigDict:
    """The `config.data` section of a downstream job (see the module docstring); a `preset` (a
    `synthetic.PRESETS` name) sets the synthetic release's sizes to the preset's."""
    if preset:
        sizes = synthetic.preset_arguments(preset)
        num_videos, frames_per_video = sizes["num_videos"], sizes["frames_per_video"]
    config = ml_collections.ConfigDict()
    config.root = ""
    for part in _DEFAULT_PARTS:
        config[part] = ""
    config.cache_dir = ""
    config.synthetic_videos = num_videos
    config.synthetic_frames_per_video = frames_per_video
    config.synthetic_seed = seed
    config.synthetic_preset = preset
    return config


@dataclasses.dataclass(frozen=True)
class ReleasePaths:
    root: pathlib.Path
    annotations: pathlib.Path
    crops: pathlib.Path
    videos: pathlib.Path | None
    test_lists: pathlib.Path
    examples: pathlib.Path
    reaction_list: pathlib.Path | None
    test_ground_truth: pathlib.Path | None
    synthetic: bool

    def test_list(self, task: str | tasks.Task) -> pathlib.Path:
        return self.test_lists / tasks.get_task(getattr(task, "name", task)).test_list_file

    def example_file(self, task: str | tasks.Task) -> pathlib.Path:
        return self.examples / tasks.get_task(getattr(task, "name", task)).example_file

    def ground_truth_dir(self, task: str | tasks.Task) -> pathlib.Path | None:
        if self.test_ground_truth is None:
            return None
        return self.test_ground_truth / tasks.get_task(getattr(task, "name", task)).folders[0]


def resolve(data: ml_collections.ConfigDict) -> ReleasePaths:
    """The release `config.data` describes, generating the synthetic one when `root` is empty.

    Required parts that do not exist raise FileNotFoundError naming the config key; optional parts that
    do not exist are None.
    """
    synthetic_default = not data.root
    root = (
        synthetic_release(
            data.cache_dir or None,
            num_videos=data.synthetic_videos,
            frames_per_video=data.synthetic_frames_per_video,
            seed=data.synthetic_seed,
            preset=data.synthetic_preset,
        )
        if synthetic_default
        else pathlib.Path(data.root)
    )
    if not root.is_dir():
        raise FileNotFoundError(f"config.data.root={data.root} is not a folder")
    parts: dict[str, pathlib.Path | None] = {}
    for part, default in _DEFAULT_PARTS.items():
        path = pathlib.Path(data[part]) if data[part] else root / default
        if not path.exists():
            if part in _OPTIONAL and not data[part]:
                path = None
            else:
                raise FileNotFoundError(
                    f"config.data.{part}: {path} does not exist"
                    + ("" if data[part] else f" (set config.data.{part} to where it is)")
                )
        parts[part] = path
    return ReleasePaths(root=root, synthetic=synthetic_default, **parts)


def require_videos(paths: ReleasePaths, audio_kinds: Sequence[str]) -> None:
    """FileNotFoundError when audio features are asked for and the release has no videos folder."""
    if audio_kinds and paths.videos is None:
        raise FileNotFoundError(
            f"config.data.videos: {paths.root} has no videos/ folder, and the audio sets {list(audio_kinds)} are "
            "computed from the videos: set config.data.videos to where they are, or --config.audio= (in the "
            "pipeline --config.features.audio=) to extract the visual sets only"
        )
