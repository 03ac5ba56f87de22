"""Orbax checkpoints of the train state, the grain iterator and the model description: the one checkpointer of
every training job (pretraining, fine-tuning, the fusion ensemble).

Each checkpoint step holds `state` (parameters, optimizer state, step, RNG; saved asynchronously, restored
straight into their shardings), `model` (the model config as JSON) and, for jobs that read through grain,
`data` (each process's grain iterator state; jobs whose input order is a pure function of the step, like the
fusion ensemble's clip sampler, pass `with_data=False`). Resuming into a workdir whose checkpoints describe
another model stops with a message instead of loading mismatched arrays.

Faults: `restore_latest` restores the newest checkpoint that reads back completely. A damaged one (a
truncated or missing file, e.g. after a full disk or a copy cut short) is logged with the reason, moved to
`<directory>.damaged/<step>` (so that the run can write that step again) and the next older one is tried.
A save that fails (full disk, lost permissions), synchronously or in the background, raises one
`JobError` naming the step, the directory and the cause.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from abaw_jax.runtime import orbax_reads
from abaw_jax.runtime.errors import ExplainedError, JobError
from abaw_jax.runtime.telemetry import log


class CheckpointMismatchError(ExplainedError, ValueError):
    """The workdir's checkpoint was written for a different model."""


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        return [
            d
            for key in sorted(set(stored) | set(current))
            for d in _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
        ]
    return [] if stored == current else [f"{prefix.rstrip('.')}: checkpoint {stored!r}, this run {current!r}"]


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, model_description: dict[str, Any], with_data: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (orbax would delete every checkpoint it writes), got {keep}")
        self.directory = os.path.abspath(directory)
        self.model_description = json.loads(json.dumps(model_description))
        self.with_data = with_data
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "model") if with_data else ("state", "model")
        )
        self._pending_step: int | None = None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any = None) -> None:
        """Starts an asynchronous save; raises JobError if it (or the previous background save) fails."""
        # Orbax waits for the previous background save inside `save`, and would report its failure as this
        # step's: waiting here first names the step that failed.
        self.wait()
        items = {"state": ocp.args.StandardSave(state), "model": ocp.args.JsonSave(self.model_description)}
        if self.with_data:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            self._manager.save(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
            raise self._save_error(step, e) from e
        self._pending_step = step

    def stop_for_sigterm(self, step: int, state: Any, data_iterator: Any, last_saved: int | None) -> None:
        """Saves `state` at `step` (unless that step is saved already) and raises the JobError that ends a run
        stopped by SIGTERM (`workdir.stop_on_sigterm`), naming the checkpoint a rerun resumes from."""
        if jax.process_count() > 1:
            # The other processes did not get the signal: a collective save would wait for them forever.
            raise JobError(
                f"stopped by SIGTERM at step {step}; the last checkpoint (step {last_saved}) is in "
                f"{self.directory}: rerun the same command to resume from it"
            )
        if last_saved != step:
            self.save(step, state, data_iterator)
        self.wait()
        raise JobError(
            f"stopped by SIGTERM at step {step}; saved checkpoint step {step} in {self.directory}: "
            "rerun the same command to resume"
        )

    def _save_error(self, step: int, error: BaseException) -> JobError:
        intact = [s for s in self.all_steps() if s != step]
        kept = f"the newest intact checkpoint is step {intact[-1]}" if intact else "no earlier checkpoint exists"
        return JobError(
            f"could not save checkpoint step {step} in {self.directory}: {orbax_reads.root_cause(error)}. "
            f"Free disk space or fix the permissions, then rerun to resume; {kept}."
        )

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and `data_iterator` in place."""
        stored = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
        if stored != self.model_description:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model ("
                + "; ".join(_differences(stored, self.model_description))
                + "). Use a fresh --workdir, or the config that wrote the checkpoint."
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if self.with_data:
            layout = self._data_layout_differences(step, data_iterator)
            if layout:
                raise CheckpointMismatchError(
                    f"{self.directory} holds a checkpoint (step {step}) written with another data layout ("
                    + "; ".join(layout)
                    + "). Resume with the same batch_size, data.worker_count, number of "
                    "processes and data, or use a fresh --workdir."
                )
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def _data_layout_differences(self, step: int, data_iterator: Any) -> list[str]:
        """How the stored grain iterator state's layout differs from `data_iterator`'s (grain refuses those)."""
        data_dir = os.path.join(self.directory, str(step), "data")
        stored_files = glob.glob(os.path.join(data_dir, f"process_{jax.process_index()}-of-*.json"))
        if len(stored_files) != 1:
            return []  # nothing to compare: the restore itself reports a missing file
        processes = stored_files[0].rsplit("-of-", 1)[1].removesuffix(".json")
        if processes != str(jax.process_count()):
            return [f"processes: checkpoint {processes}, this run {jax.process_count()}"]
        try:
            with open(stored_files[0], encoding="utf-8") as f:
                stored = json.load(f)
            current = json.loads(data_iterator.get_state())
        except (OSError, ValueError):
            return []  # a damaged file: the restore reports it
        return [
            f"{key}: checkpoint {stored[key]!r}, this run {current[key]!r}"
            for key in ("worker_count", "sampler", "data_source")
            if key in stored and key in current and stored[key] != current[key]
        ]

    def restore_latest(self, abstract_state: Any, data_iterator: Any = None) -> tuple[int, Any] | tuple[None, None]:
        """(step, state) of the newest checkpoint that restores completely, or (None, None) if there is none.

        Damaged checkpoints newer than that one are logged and moved to `<directory>.damaged/`. A model
        mismatch is not damage: it raises CheckpointMismatchError. If every checkpoint is damaged, raises
        JobError listing them (and moves nothing).
        """
        damaged: list[tuple[int, str]] = []
        steps = self.all_steps()
        if steps:
            orbax_reads.silence_orphaned_reads()
        for step in reversed(steps):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable
                reason = orbax_reads.root_cause(e)
                damaged.append((step, reason))
                log(f"Checkpoint step {step} in {self.directory} is damaged ({reason}); trying an older one")
                continue
            for bad_step, reason in damaged:
                self._move_aside(bad_step, reason)
            return step, state
        if damaged:
            listed = "; ".join(f"step {s}: {r}" for s, r in damaged)
            raise JobError(
                f"no intact checkpoint in {self.directory} ({listed}). Move that directory away to start from scratch."
            )
        return None, None

    def _move_aside(self, step: int, reason: str) -> None:
        target = os.path.join(self.directory + ".damaged", str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                shutil.rmtree(target)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"moved damaged checkpoint {step}")
        self._manager.reload()
        log(f"Skipped damaged checkpoint step {step} ({reason}); moved it to {target}")

    def wait(self) -> None:
        """Waits for the background save; raises the JobError naming its step if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(self._pending_step or 0, e) from e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
