"""Orbax checkpoints of a train state alone (no data-iterator item), with the model-description check.

For jobs whose input order is a pure function of the step (the fusion ensemble's clip sampler), so a
checkpoint is the state plus the description of the model that wrote it. Resuming into a workdir whose
checkpoints describe another model raises `checkpointing.CheckpointMismatchError`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from abaw_jax.runtime.checkpointing import CheckpointMismatchError


class StateCheckpointer:
    def __init__(self, directory: str, *, keep: int, model_description: dict[str, Any]):
        self.directory = os.path.abspath(directory)
        self.model_description = json.loads(json.dumps(model_description))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "model"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         model=ocp.args.JsonSave(self.model_description)))

    def check(self, step: int) -> None:
        """Raises CheckpointMismatchError if checkpoint `step` was written for another model."""
        stored = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
        if stored != self.model_description:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model:\n"
                f"  checkpoint: {json.dumps(stored, sort_keys=True)}\n"
                f"  this run:   {json.dumps(self.model_description, sort_keys=True)}\n"
                "Use a fresh --workdir, or the config and features that wrote the checkpoint.")

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores into `abstract_state` (ShapeDtypeStructs with shardings) after checking the model."""
        self.check(step)
        return self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
