"""From members' per-frame outputs to final outputs: the one post-processing that evaluate and the predictor share.

  1. fill the frames without a face from the nearest face frames (`coverage.fill_missing`), per member;
  2. smooth each member's outputs with the tuned sigma, EXPR: add the tuned class biases to the log-probabilities;
  3. combine the members the scene routing picks for the video (`ensemble.routing_mask`, `ensemble.combine`) with
     the tuned AU thresholds (2 and 3: `tuning.final_outputs`).

`final_outputs` gives both the final labels (what the submission holds) and the scores they come from: the mean
of the routed members' smoothed outputs (AU and EXPR probabilities before thresholds / biases, VA the final values).
Evaluate stores these for its test tracks in `<workdir>/final/` and its settings as `results.json["postprocess"]`;
the predictor bundle copies the settings (`PostProcess.to_json` / `from_json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from abaw_jax.eval import coverage, ensemble, tuning


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """The tuned post-processing of one task's ensemble.

    Attributes:
      task: AU, EXPR or VA.
      members: the member names, in the order of the outputs' member axis.
      sigma: smoothing sigma (0: none). thresholds: AU per-AU thresholds (12,) or None (0.5).
      bias: EXPR per-class biases on log-probabilities (8,) or None.
      method: 'vote' or 'soft' (`ensemble.combine`).
      general, reaction_member, routing: the scene routing (`ensemble.routing_mask`).
    """

    task: str
    members: tuple[str, ...]
    sigma: float
    thresholds: tuple[float, ...] | None
    bias: tuple[float, ...] | None
    method: str
    general: tuple[str, ...]
    reaction_member: str
    routing: str

    @classmethod
    def from_tuned(
        cls,
        tuned: tuning.Tuned,
        members: Sequence[str],
        *,
        method: str,
        general: Sequence[str],
        reaction_member: str,
        routing: str,
    ) -> "PostProcess":
        as_tuple = lambda a: None if a is None else tuple(float(v) for v in a)
        return cls(
            tuned.task,
            tuple(members),
            float(tuned.sigma),
            as_tuple(tuned.thresholds),
            as_tuple(tuned.bias),
            method,
            tuple(general),
            reaction_member,
            routing,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PostProcess":
        as_tuple = lambda a: None if a is None else tuple(a)
        return cls(
            data["task"],
            tuple(data["members"]),
            float(data["sigma"]),
            as_tuple(data["thresholds"]),
            as_tuple(data["bias"]),
            data["method"],
            tuple(data["general"]),
            data["reaction_member"],
            data["routing"],
        )

    def tuned(self) -> tuning.Tuned:
        array = lambda a: None if a is None else np.asarray(a, np.float32)
        return tuning.Tuned(
            self.task, self.sigma, array(self.thresholds), array(self.bias), np.zeros(0), np.zeros(0), []
        )

    def routing_mask(self, is_reaction: np.ndarray) -> np.ndarray:
        """(M, V) which members combine for each video (V,) of the given scenes."""
        return ensemble.routing_mask(
            self.members, is_reaction, general=self.general, reaction_member=self.reaction_member, routing=self.routing
        )


def fill_members(outputs: np.ndarray, face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Members' outputs (M, V, T, C) with each member's non-face frames filled (`coverage.fill_missing`)."""
    num_members, num_videos = outputs.shape[:2]
    flat = outputs.reshape((num_members * num_videos,) + outputs.shape[2:])
    tile = lambda a: np.tile(np.asarray(a), (num_members, 1))
    return np.asarray(coverage.fill_missing(flat, tile(face), tile(mask))).reshape(outputs.shape)


def final_outputs(
    post: PostProcess, filled: np.ndarray, mask: np.ndarray, is_reaction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (V, T, C) float32, final labels) of filled members' outputs (M, V, T, C) (see the module docstring).

    Labels: AU (V, T, 12) int32 0/1, EXPR (V, T) int32, VA (V, T, 2) float32 (= scores)."""
    if filled.shape[0] != len(post.members):
        raise ValueError(f"outputs have {filled.shape[0]} members, the post-processing expects {post.members}")
    use = post.routing_mask(np.asarray(is_reaction, bool))
    return tuning.final_outputs(post.task, filled, mask, use, post.tuned(), post.method)
