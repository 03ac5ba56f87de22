"""Orbax checkpoints of the train state, the grain iterator and the model description.

Each checkpoint step holds three items: `state` (parameters, optimizer state, step, RNG; saved
asynchronously, restored straight into their shardings), `data` (each process's grain iterator state) and
`model` (the model config as JSON). Resuming into a workdir whose checkpoints describe another model stops
with a message instead of loading mismatched arrays.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoint was written for a different model."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, model_description: dict[str, Any]):
        self.directory = os.path.abspath(directory)
        self.model_description = json.loads(json.dumps(model_description))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "model"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            model=ocp.args.JsonSave(self.model_description)))

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and `data_iterator` in place."""
        stored = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
        if stored != self.model_description:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model:\n"
                f"  checkpoint: {json.dumps(stored, sort_keys=True)}\n"
                f"  this run:   {json.dumps(self.model_description, sort_keys=True)}\n"
                "Use a fresh --workdir, or the config that wrote the checkpoint.")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
