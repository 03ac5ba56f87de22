"""The per-frame feature store: visual and audio feature sets, read by name and aligned to video frames.

A store is a set of named feature sets. Every set maps a face track (`<video>`, `<video>_left`,
`<video>_right`) to a float array with one row per video frame, row k-1 = frame k (1-based).

Visual sets (written by the feature-extraction job, `VisualSetWriter`):

  <set dir>/manifest.json        {"format_version": 1, "kind": "visual", "dim", "dtype", "encoder": {...},
                                  "tracks": {track: {"num_frames", "num_faces", "corrupt_frames": [...]}}}
  <set dir>/<track>.npy          (num_frames, dim) in `dtype`; rows of frames without a usable crop are 0
  <set dir>/<track>.mask.npy     (num_frames,) bool, True where the frame had a decodable face crop

  A track is complete once it is listed in the manifest; its arrays are written first and the manifest
  after, both by atomic renames, so an interrupted extraction leaves no half-written track behind.

Audio sets (written by `data_prep.extract_audio`): `<set dir>/<video>.npy` (num_frames, dim) float32
with `<video>.json` beside it. Audio belongs to the video file, so both halves of a `_left`/`_right`
pair read `<video>.npy`; every frame counts as present.

`FeatureStore.load(track, names, num_frames)` concatenates the named sets in order into a
(num_frames, total dim) float32 array and returns the face mask (the AND of the visual sets' masks).
Rows past the end of a set's array are zeros; in a visual set they are also masked out.

Reading checks what the files hold against what the manifest says, and stops (`FeatureStoreError`, naming the
file, the track and the frames) rather than pass on anything else: a visual track's arrays must have the
manifest's frame count (a file cut short would otherwise read as frames without a face), and no set may hold
NaN or infinity (one such row poisons every clip, and with it every member of a fusion ensemble). Extraction
already refuses to write non-finite features, so such a row means a damaged or foreign file: re-extract.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from abaw_jax.data import affwild2
from abaw_jax.data.array_checks import frames_text, nonfinite_rows
from abaw_jax.runtime.errors import ExplainedError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MASK_SUFFIX = ".mask.npy"


class FeatureStoreError(ExplainedError, ValueError):
    """A feature set is missing, malformed, holds non-finite values, or lacks a track that was asked for."""


def _require_finite(path: pathlib.Path, track: str, values: np.ndarray) -> None:
    bad = nonfinite_rows(values)
    if len(bad):
        raise FeatureStoreError(
            f"{path}: {len(bad)} of {len(values)} rows hold NaN or infinity (track {track!r}, "
            f"{frames_text(bad)}); the file is damaged or was not written by this project's "
            "extraction, which never stores such rows: extract this set again"
        )


def _atomic_save(path: pathlib.Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _atomic_write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class VisualSet:
    """A visual feature set written by `VisualSetWriter`."""

    kind = "visual"

    def __init__(self, directory: str | os.PathLike, name: str | None = None):
        self.directory = pathlib.Path(directory)
        self.name = name or self.directory.name
        manifest_path = self.directory / MANIFEST
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise FeatureStoreError(f"{manifest_path}: cannot read the feature-set manifest ({e})") from e
        if self.manifest.get("format_version") != FORMAT_VERSION or self.manifest.get("kind") != "visual":
            raise FeatureStoreError(
                f"{manifest_path}: expected a visual feature-set manifest of format "
                f"{FORMAT_VERSION}, found kind {self.manifest.get('kind')!r} format "
                f"{self.manifest.get('format_version')!r}"
            )
        self.dim = int(self.manifest["dim"])

    def tracks(self) -> tuple[str, ...]:
        return tuple(sorted(self.manifest["tracks"]))

    def has(self, track: str) -> bool:
        return track in self.manifest["tracks"]

    def load(self, track: str) -> tuple[np.ndarray, np.ndarray]:
        """(features (frames, dim), face mask (frames,)), memory-mapped."""
        if not self.has(track):
            raise FeatureStoreError(f"feature set {self.name!r} ({self.directory}) has no track {track!r}")
        num_frames = int(self.manifest["tracks"][track]["num_frames"])
        features = _load_array(self.directory / f"{track}.npy", (num_frames, self.dim))
        mask = _load_array(self.directory / f"{track}{MASK_SUFFIX}", (num_frames,))
        _require_finite(self.directory / f"{track}.npy", track, features)
        return features, mask


class AudioSet:
    """An audio feature set written by `data_prep.extract_audio` (one file per video, shared by pairs)."""

    kind = "audio"

    def __init__(self, directory: str | os.PathLike, name: str | None = None):
        self.directory = pathlib.Path(directory)
        self.name = name or self.directory.name
        descriptions = sorted(self.directory.glob("*.json"))
        if not descriptions:
            raise FeatureStoreError(
                f"{self.directory}: no <video>.json audio feature descriptions (run "
                "python -m data_prep.extract_audio, or name a visual set's folder)"
            )
        first = json.loads(descriptions[0].read_text(encoding="utf-8"))
        self.dim = int(first["dim"])
        self._videos = {p.stem for p in descriptions}

    def tracks(self) -> tuple[str, ...]:
        return tuple(sorted(self._videos))

    def has(self, track: str) -> bool:
        return affwild2.source_video(track) in self._videos or track in self._videos

    def load(self, track: str) -> tuple[np.ndarray, np.ndarray]:
        video = track if track in self._videos else affwild2.source_video(track)
        if video not in self._videos:
            raise FeatureStoreError(
                f"audio feature set {self.name!r} ({self.directory}) has no video {video!r} (for track {track!r})"
            )
        path = self.directory / f"{video}.npy"
        features = _load_array(path, (None, self.dim))
        _require_finite(path, track, features)
        return features, np.ones(len(features), bool)


def _load_array(path: pathlib.Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """The memory-mapped array at `path`, which must have `shape` (None: any length)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise FeatureStoreError(f"{path}: cannot read the array ({e}); extract this set again") from None
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = tuple("frames" if n is None else n for n in shape)
        raise FeatureStoreError(
            f"{path}: expected shape {expected} ({MANIFEST} of its set), found {array.shape}; "
            "the file is cut short or from another run: extract this set again"
        )
    return array


def open_set(directory: str | os.PathLike, name: str | None = None) -> VisualSet | AudioSet:
    """Opens a feature set folder: visual when it holds a manifest.json, audio otherwise."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FeatureStoreError(f"feature set folder {directory} does not exist")
    return VisualSet(directory, name) if (directory / MANIFEST).exists() else AudioSet(directory, name)


class FeatureStore:
    """Named feature sets; `load` gives frame-aligned, concatenated features of any subset of them."""

    def __init__(self, sets: Mapping[str, str | os.PathLike]):
        if not sets:
            raise FeatureStoreError("a feature store needs at least one feature set")
        self.sets = {name: open_set(path, name) for name, path in sets.items()}

    def check(self, names: Sequence[str], tracks: Sequence[str] = ()) -> int:
        """Total dimension of `names`; raises naming any unknown set or any track a set lacks."""
        unknown = [n for n in names if n not in self.sets]
        if unknown:
            raise FeatureStoreError(f"feature sets {unknown} are not in the store; it has {sorted(self.sets)}")
        for name in names:
            missing = [t for t in tracks if not self.sets[name].has(t)]
            if missing:
                raise FeatureStoreError(
                    f"feature set {name!r} ({self.sets[name].directory}) lacks "
                    f"{len(missing)} tracks, e.g. {missing[:5]}"
                )
        return sum(self.sets[n].dim for n in names)

    def load(self, track: str, names: Sequence[str], num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(features (num_frames, total dim) float32, face mask (num_frames,) bool) for frames 1..num_frames."""
        parts, face = [], np.ones(num_frames, bool)
        for name in names:
            feature_set = self.sets[name]
            values, mask = feature_set.load(track)
            rows = min(num_frames, len(values))
            part = np.zeros((num_frames, feature_set.dim), np.float32)
            part[:rows] = values[:rows]
            parts.append(part)
            if feature_set.kind == "visual":
                present = np.zeros(num_frames, bool)
                present[:rows] = mask[:rows]
                face &= present
        return np.concatenate(parts, axis=1), face


class VisualSetWriter:
    """Writes a visual feature set track by track; `done(track)` lets an interrupted extraction resume.

    Reopening a folder written for another encoder (different `encoder` description or dim) is an error,
    so features of two models never mix in one set.
    """

    def __init__(self, directory: str | os.PathLike, *, dim: int, dtype: str, encoder: dict[str, Any]):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / MANIFEST
        fresh = {
            "format_version": FORMAT_VERSION,
            "kind": "visual",
            "dim": int(dim),
            "dtype": str(dtype),
            "encoder": json.loads(json.dumps(encoder)),
            "tracks": {},
        }
        if self._path.exists():
            existing = VisualSet(self.directory).manifest
            for key in ("dim", "dtype", "encoder"):
                if existing[key] != fresh[key]:
                    raise FeatureStoreError(
                        f"{self._path} was written with {key}={json.dumps(existing[key], sort_keys=True)}, this "
                        f"run has {json.dumps(fresh[key], sort_keys=True)}; use another output folder"
                    )
            self.manifest = existing
        else:
            self.manifest = fresh
            _atomic_write_json(self._path, self.manifest)

    def done(self, track: str) -> bool:
        return track in self.manifest["tracks"]

    def write(
        self, track: str, frames: np.ndarray, features: np.ndarray, num_frames: int, corrupt_frames: Sequence[int] = ()
    ) -> None:
        """Stores `features` (n, dim) of 1-based `frames` (n,) in a (num_frames, dim) track array."""
        frames = np.asarray(frames, np.int64)
        if features.shape != (len(frames), self.manifest["dim"]):
            raise FeatureStoreError(
                f"track {track!r}: expected features of shape ({len(frames)}, "
                f"{self.manifest['dim']}), got {features.shape}"
            )
        if len(frames) and (frames.min() < 1 or frames.max() > num_frames):
            raise FeatureStoreError(
                f"track {track!r}: frames must lie in 1..{num_frames}, got {frames.min()}..{frames.max()}"
            )
        array = np.zeros((num_frames, self.manifest["dim"]), self.manifest["dtype"])
        array[frames - 1] = features
        mask = np.zeros(num_frames, bool)
        mask[frames - 1] = True
        _atomic_save(self.directory / f"{track}.npy", array)
        _atomic_save(self.directory / f"{track}{MASK_SUFFIX}", mask)
        self.manifest["tracks"][track] = {
            "num_frames": int(num_frames),
            "num_faces": int(len(frames)),
            "corrupt_frames": sorted(int(f) for f in corrupt_frames),
        }
        _atomic_write_json(self._path, self.manifest)
