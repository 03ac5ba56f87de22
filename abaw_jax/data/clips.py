"""Ensemble members' data (which videos each member trains and is evaluated on) and their training clips.

Members, as the paper defines them (Tables 1-3, section 3.3):

  official   trains on Train_Set, held out: Validation_Set (the "Official" row).
  fold1..K   a seeded video-level K-fold split of Train_Set + Validation_Set (`affwild2.kfold_splits`, pairs
             `_left`/`_right` in one fold); fold k trains on the other folds, held out: fold k.
  whole      trains on all of Train_Set + Validation_Set; no labelled held-out videos.
  reaction   trains on the reaction videos (scene data division) of Train_Set + Validation_Set, the data the
             paper's reaction model sees; no labelled held-out videos.

`whole` and `reaction` hold nothing out, so their fair comparison is on videos neither trained on: the test
videos (the synthetic release has their ground truth), of which the reaction-listed ones are what the paper
routes to the reaction model.

Training clips. Every epoch, each of a member's tracks gets a random offset o in [0, L) and is cut into
windows starting at -o, -o + L, -o + 2L, ... (positions outside the track are padding), so every frame is in
exactly one clip per epoch and the clip boundaries move from epoch to epoch. The epoch's windows are then
shuffled. A member's clips form an endless stream of such epochs, and batch `step` of a member is a pure
function of (seed, member index, step): resuming needs no iterator state.

Rows: the job concatenates all tracks' per-frame arrays into one (rows, ...) array; a track is
`(row offset, num_frames)` in it, and a clip is a (L,) array of row indices with a (L,) mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from abaw_jax.data import affwild2

FIXED_MEMBERS = ("official", "whole", "reaction")


class MemberError(ValueError):
    """A member cannot be built from the data (unknown name, empty selection, missing reaction list)."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One ensemble member: the tracks it trains on and the labelled tracks it is evaluated on."""

    name: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]


def member_names(num_folds: int) -> tuple[str, ...]:
    return ("official", *(f"fold{k}" for k in range(1, num_folds + 1)), "whole", "reaction")


def select_members(
    names: Sequence[str],
    splits: Mapping[str, str],
    *,
    num_folds: int = 5,
    fold_seed: int = 0,
    reaction_videos: Sequence[str] | None = None,
) -> list[Member]:
    """The members called `names`, from the labelled tracks' splits ({track: 'Train_Set' | 'Validation_Set'}).

    Raises MemberError for an unknown or repeated name, a `reaction` member without a reaction list or whose
    list names no labelled video, and any member left with no training track.
    """
    known = member_names(num_folds)
    unknown = [n for n in names if n not in known]
    if unknown or len(set(names)) != len(names) or not names:
        raise MemberError(f"members must be distinct names among {list(known)}, got {list(names)}")
    tracks = tuple(sorted(splits))
    folds = affwild2.kfold_splits(tracks, num_folds, fold_seed) if any(n.startswith("fold") for n in names) else []
    members = []
    for name in names:
        if name == "official":
            member = Member(
                name,
                tuple(t for t in tracks if splits[t] == "Train_Set"),
                tuple(t for t in tracks if splits[t] == "Validation_Set"),
            )
        elif name == "whole":
            member = Member(name, tracks, ())
        elif name == "reaction":
            if reaction_videos is None:
                raise MemberError("the reaction member needs a reaction-video list (config.data.reaction_list)")
            chosen = tuple(t for t in tracks if affwild2.is_listed(t, reaction_videos))
            if not chosen:
                raise MemberError(
                    f"the reaction list names none of the {len(tracks)} labelled videos "
                    f"(it lists {list(reaction_videos)[:5]}...)"
                )
            member = Member(name, chosen, ())
        else:
            fold = folds[int(name[len("fold") :]) - 1]
            member = Member(name, fold.train, fold.validation)
        if not member.train:
            raise MemberError(f"member {name!r} has no training videos")
        members.append(member)
    return members


def check_labelled(members: Sequence[Member], labelled_frames: Mapping[str, int], task: str) -> None:
    """Every member must have labelled frames to train on, and (if it holds videos out) to evaluate on."""
    for member in members:
        for part, selected in (("training", member.train), ("held-out", member.heldout)):
            if part == "held-out" and not selected:
                continue
            if sum(labelled_frames.get(t, 0) for t in selected) == 0:
                raise MemberError(
                    f"member {member.name!r}: its {len(selected)} {part} videos have no labelled "
                    f"{task} frames (e.g. {list(selected)[:3]})"
                )


@dataclasses.dataclass(frozen=True)
class Tracks:
    """Where tracks lie in the concatenated per-frame arrays: `offset[i]`, `length[i]` for `names[i]`."""

    names: tuple[str, ...]
    offset: np.ndarray
    length: np.ndarray

    @classmethod
    def from_lengths(cls, lengths: Mapping[str, int]) -> "Tracks":
        names = tuple(lengths)
        length = np.array([lengths[n] for n in names], np.int64)
        offset = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        return cls(names, offset, length)

    @property
    def num_rows(self) -> int:
        return int(self.length.sum())

    def position(self, name: str) -> int:
        return self.names.index(name)


def epoch_windows(lengths: np.ndarray, clip_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(track position, window start) of one shuffled epoch: per track a random offset o in [0, clip_len),
    windows starting at -o + k clip_len that overlap the track."""
    track_ids, starts = [], []
    for i, n in enumerate(lengths):
        o = int(rng.integers(clip_len))
        s = np.arange(-o, int(n), clip_len)
        track_ids.append(np.full(len(s), i))
        starts.append(s)
    track_ids, starts = np.concatenate(track_ids), np.concatenate(starts)
    order = rng.permutation(len(starts))
    return track_ids[order], starts[order]


def window_rows(
    offset: np.ndarray, length: np.ndarray, start: np.ndarray, clip_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows (W, L) int32, mask (W, L) bool) of windows `start` (W,) in tracks at `offset`/`length` (W,)."""
    positions = start[:, None] + np.arange(clip_len)[None, :]
    mask = (positions >= 0) & (positions < length[:, None])
    rows = offset[:, None] + np.clip(positions, 0, length[:, None] - 1)
    return rows.astype(np.int32), mask


class ClipSampler:
    """The endless clip stream of one member over its training tracks (see the module docstring)."""

    def __init__(
        self, tracks: Tracks, train: Sequence[str], *, clip_len: int, batch_clips: int, seed: int, member_index: int
    ):
        if clip_len < 1 or batch_clips < 1:
            raise ValueError(f"clip_len and batch_clips must be >= 1, got {clip_len} and {batch_clips}")
        positions = np.array([tracks.position(t) for t in train], np.int64)
        self.offset, self.length = tracks.offset[positions], tracks.length[positions]
        self.clip_len, self.batch_clips = clip_len, batch_clips
        self._seed = (seed, member_index)
        self._epochs: list[tuple[np.ndarray, np.ndarray]] = []
        self._ends: list[int] = []  # cumulative clip counts at the end of each epoch

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self._epochs) <= epoch:
            rng = np.random.default_rng((*self._seed, len(self._epochs)))
            self._epochs.append(epoch_windows(self.length, self.clip_len, rng))
            self._ends.append((self._ends[-1] if self._ends else 0) + len(self._epochs[-1][0]))
        return self._epochs[epoch]

    def clips_per_epoch(self) -> int:
        return len(self._epoch(0)[0])

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows (B, L) int32, mask (B, L) bool) of batch `step` (0-based); batches run across epochs."""
        first = step * self.batch_clips
        ids, starts = [], []
        position = first
        while len(ids) < self.batch_clips:
            epoch = 0
            self._epoch(0)
            while self._ends[epoch] <= position:
                epoch += 1
                self._epoch(epoch)
            track_ids, window_starts = self._epochs[epoch]
            within = position - (self._ends[epoch - 1] if epoch else 0)
            take = min(self.batch_clips - len(ids), len(track_ids) - within)
            ids.extend(track_ids[within : within + take])
            starts.extend(window_starts[within : within + take])
            position += take
        ids = np.asarray(ids)
        return window_rows(self.offset[ids], self.length[ids], np.asarray(starts), self.clip_len)


def evaluation_windows(
    tracks: Tracks, names: Sequence[str], clip_len: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping windows (`affwild2.make_clips`) over `names`: (rows (W, L) int32, mask (W, L) bool)."""
    rows, masks = [], []
    for name in names:
        i = tracks.position(name)
        clips = affwild2.make_clips(int(tracks.length[i]), clip_len, stride)
        rows.append((tracks.offset[i] + clips.index).astype(np.int32))
        masks.append(clips.mask)
    return np.concatenate(rows), np.concatenate(masks)


def average_windows(outputs: np.ndarray, rows: np.ndarray, mask: np.ndarray, num_rows: int) -> np.ndarray:
    """Per-row mean of overlapping windows' outputs: outputs (..., W, L, C) -> (..., num_rows, C).

    Rows no window covers are NaN (callers only ask for covered rows)."""
    lead = outputs.shape[:-3]
    flat = outputs.reshape((-1,) + outputs.shape[-3:])
    sums = np.zeros((flat.shape[0], num_rows, outputs.shape[-1]), np.float64)
    counts = np.zeros(num_rows, np.float64)
    selected = rows[mask]
    np.add.at(counts, selected, 1.0)
    for m in range(flat.shape[0]):
        np.add.at(sums[m], selected, flat[m][mask])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[None, :, None]
    return mean.reshape(lead + (num_rows, outputs.shape[-1])).astype(np.float32)


def windowed_outputs(
    apply: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tracks: Tracks,
    names: Sequence[str],
    clip_len: int,
    stride: int,
    batch: int,
) -> np.ndarray:
    """(..., tracks.num_rows, C) per-frame outputs of `names`, windows averaged: the one windowed inference.

    `apply(rows (batch, L), mask (batch, L))` gives (..., batch, L, C) for a fixed-size batch of windows
    (`evaluation_windows`; the last batch is padded with masked windows so one compiled shape serves all)."""
    rows, mask = evaluation_windows(tracks, names, clip_len, stride)
    count = len(rows)
    pad = (-count) % batch
    padded_rows = np.concatenate([rows, np.zeros((pad, clip_len), np.int32)])
    padded_mask = np.concatenate([mask, np.zeros((pad, clip_len), bool)])
    outputs = [
        np.asarray(apply(padded_rows[s : s + batch], padded_mask[s : s + batch]))
        for s in range(0, len(padded_rows), batch)
    ]
    outputs = np.concatenate(outputs, axis=-3)[..., :count, :, :]
    return average_windows(outputs, rows, mask, tracks.num_rows)
