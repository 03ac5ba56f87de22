"""Per-frame predictions of one or more models (ensemble members) for one task: the fusion stage writes
them, the evaluation stage reads them.

  <dir>/manifest.json    {"format_version": 1, "task": "AU" | "EXPR" | "VA", "output": "probabilities" |
                          "values", "label_names": [...],
                          "tracks": {track: {"num_frames": N, "split": "Train_Set" | "Validation_Set" | "test"}},
                          "members": {member: {track: role}}}
  <dir>/faces/<track>.npy        (N,) bool, True where frame k had a face crop (row k-1)
  <dir>/<member>/<track>.npy     (N, C) float32, row k-1 = frame k for k = 1..N; C = 12 AU probabilities
                                 (sigmoid), 8 EXPR probabilities (softmax), or valence and arousal

Rows exist for every frame 1..N, with or without a face: rows of frames without a face hold what the
model produced there; the evaluation stage decides how to fill them (`faces/` says which they are).
N is the number of annotation rows for a labelled track and the number of frames in the test example
file for a test track.

A member's role for a track: "train" (the member trained on it), "heldout" (its own evaluation videos:
Validation_Set for `official`, fold k for `foldk`), "test" (a test-list video), "other" (labelled but
neither). The out-of-fold prediction of a labelled track is the one from the member for which it is
"heldout" among the fold members.

Every array is written before the manifest names it, both by atomic renames, so a reader never sees a
half-written track.

Nothing non-finite crosses this boundary: the writer refuses outputs with NaN or infinity (a diverged member
stops the fusion job, naming member, track and frames, instead of being exported), and the reader checks each
array against the manifest (shape, finite, probabilities within [0, 1]) and stops naming the file, the track
and the frames, so evaluation never tunes on or submits a value no model produced.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from abaw_jax import tasks
from abaw_jax.data.array_checks import frames_text, nonfinite_rows, rows_outside
from abaw_jax.runtime.errors import ExplainedError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROLES = ("train", "heldout", "test", "other")
SPLITS = ("Train_Set", "Validation_Set", "test")
FACES_DIR = "faces"
# The member name of the features stage's static predictions (the fine-tuned encoder's own head).
STATIC_MEMBER = "static"


# Probabilities are stored as float32 sigmoid / softmax outputs: a little slack for their rounding.
_PROBABILITY_SLACK = 1e-5


class PredictionsError(ExplainedError, ValueError):
    """A predictions folder is missing, malformed, holds values no model produces, or lacks what was asked for."""


def _save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


class PredictionWriter:
    """Writes a predictions folder; reopening one of the same task continues it (members and tracks add up)."""

    def __init__(self, directory: str | os.PathLike, task: str | tasks.Task):
        self.directory = pathlib.Path(directory)
        self.task = task if isinstance(task, tasks.Task) else tasks.get_task(task)
        self._path = self.directory / MANIFEST
        if self._path.exists():
            self.manifest = Predictions(self.directory).manifest
            if self.manifest["task"] != self.task.name:
                raise PredictionsError(f"{self._path} holds {self.manifest['task']} predictions, not {self.task.name}")
        else:
            self.manifest = {
                "format_version": FORMAT_VERSION,
                "task": self.task.name,
                "output": "values" if self.task.kind == "continuous" else "probabilities",
                "label_names": list(self.task.label_names),
                "tracks": {},
                "members": {},
            }

    def add_track(self, track: str, split: str, face_mask: np.ndarray) -> None:
        """Declares a track with its split; `face_mask` (N,) fixes its frame count N."""
        if split not in SPLITS:
            raise PredictionsError(f"track {track!r}: split must be one of {SPLITS}, got {split!r}")
        face_mask = np.asarray(face_mask, bool)
        _save(self.directory / FACES_DIR / f"{track}.npy", face_mask)
        self.manifest["tracks"][track] = {"num_frames": int(len(face_mask)), "split": split}

    def write(self, member: str, track: str, outputs: np.ndarray, role: str) -> None:
        """Stores a member's (N, C) outputs for a declared track."""
        if track not in self.manifest["tracks"]:
            raise PredictionsError(f"track {track!r} was not declared with add_track")
        if role not in ROLES:
            raise PredictionsError(f"role must be one of {ROLES}, got {role!r}")
        expected = (self.manifest["tracks"][track]["num_frames"], self.task.num_outputs)
        if np.shape(outputs) != expected:
            raise PredictionsError(f"{member}/{track}: expected outputs of shape {expected}, got {np.shape(outputs)}")
        bad = nonfinite_rows(outputs)
        if len(bad):
            raise PredictionsError(
                f"member {member!r} predicted NaN or infinity for track {track!r} at "
                f"{frames_text(bad)} ({len(bad)} of {len(outputs)} frames); its parameters or "
                "inputs are not finite, so it is not exported"
            )
        _save(self.directory / member / f"{track}.npy", np.asarray(outputs, np.float32))
        self.manifest["members"].setdefault(member, {})[track] = role

    def flush(self) -> None:
        """Writes the manifest (call after a batch of writes, and at the end)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self._path)


class Predictions:
    """Reads a predictions folder."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        path = self.directory / MANIFEST
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PredictionsError(f"{path}: cannot read the predictions manifest ({e})") from e
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise PredictionsError(
                f"{path}: format_version {self.manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}"
            )
        self.task = tasks.get_task(self.manifest["task"])

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self.manifest["members"])

    def tracks(self, split: str | None = None) -> tuple[str, ...]:
        return tuple(sorted(t for t, info in self.manifest["tracks"].items() if split in (None, info["split"])))

    def num_frames(self, track: str) -> int:
        return self.manifest["tracks"][track]["num_frames"]

    def split(self, track: str) -> str:
        return self.manifest["tracks"][track]["split"]

    def role(self, member: str, track: str) -> str | None:
        return self.manifest["members"].get(member, {}).get(track)

    def tracks_with_role(self, member: str, role: str) -> tuple[str, ...]:
        return tuple(sorted(t for t, r in self.manifest["members"].get(member, {}).items() if r == role))

    def require_members(self, members: Sequence[str]) -> None:
        missing = [m for m in members if m not in self.manifest["members"]]
        if missing:
            raise PredictionsError(
                f"{self.directory} has no predictions of members {missing}; it has {list(self.members)}"
            )

    def face_mask(self, track: str) -> np.ndarray:
        return self._load(self.directory / FACES_DIR / f"{track}.npy", (self.num_frames(track),))

    def outputs(self, member: str, track: str) -> np.ndarray:
        """A member's (N, C) outputs for `track`, checked: shape, finite, probabilities within [0, 1]."""
        if self.role(member, track) is None:
            raise PredictionsError(f"{self.directory}: member {member!r} has no predictions for track {track!r}")
        path = self.directory / member / f"{track}.npy"
        values = self._load(path, (self.num_frames(track), self.task.num_outputs))
        bad = nonfinite_rows(values)
        if len(bad):
            raise PredictionsError(
                f"{path}: NaN or infinity at {frames_text(bad)} of track {track!r} ({len(bad)} of "
                f"{len(values)} frames); the file is damaged: run the fusion stage again"
            )
        if self.manifest["output"] == "probabilities":
            bad = rows_outside(values, -_PROBABILITY_SLACK, 1 + _PROBABILITY_SLACK)
            if len(bad):
                raise PredictionsError(
                    f"{path}: probabilities outside [0, 1] at {frames_text(bad)} of track "
                    f"{track!r}; expected {self.task.name} probabilities as fusion writes them"
                )
        return values

    def _load(self, path: pathlib.Path, shape: tuple[int, ...]) -> np.ndarray:
        try:
            array = np.load(path)
        except (OSError, ValueError) as e:
            raise PredictionsError(f"{path}: cannot read the array ({e})") from None
        if array.shape != shape:
            raise PredictionsError(
                f"{path}: expected shape {shape} ({MANIFEST}: {shape[0]} frames of track "
                f"{path.stem!r}), found {array.shape}"
            )
        return array

    def out_of_fold_member(self, track: str, fold_members: Sequence[str]) -> str:
        """The fold member that held `track` out; an error if none or several did."""
        holders = [m for m in fold_members if self.role(m, track) == "heldout"]
        if len(holders) != 1:
            raise PredictionsError(
                f"track {track!r} is held out by {holders or 'no member'} among {list(fold_members)}; "
                "expected exactly one"
            )
        return holders[0]
