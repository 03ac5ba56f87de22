r"""Entry point for abaw_jax training jobs.

  python -m abaw_jax.main --config=configs/mae.py:tiny --workdir=/tmp/abaw_mae_tiny
  python -m abaw_jax.main --config=configs/mae.py --workdir=/ckpt/mae --config.data.data_dir=/data/tfds
  python -m abaw_jax.main --config=configs/abaw.py:tiny --workdir=/tmp/abaw      (the whole method)

Override any config value with --config.key=value (unknown keys and out-of-range values are an error).
Errors print one line `error: ...` and exit with status 2 (usage, config) or 1 (the rest); see
abaw_jax/runtime/errors.py (`ABAW_JAX_TRACEBACK=1` or --verbosity=1 adds the traceback). Multi-host: pass
--distributed on every host (JAX detects the cluster: TPU pods, SLURM, ...), or name the coordinator
explicitly with --coordinator_address=host:port --num_processes=N --process_id=i.
"""

import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from abaw_jax.jobs.registry import JOBS
from abaw_jax.runtime import errors, telemetry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Job config file, e.g. configs/mae.py:tiny.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, images and exports go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise errors.ConfigError(f"unexpected arguments: {argv[1:]}; config values go as --config.key=value")
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    if _WORKDIR.value and os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
        raise errors.ConfigError(f"--workdir={_WORKDIR.value} is a file; expected a directory (created if missing)")
    log_dir = telemetry.configure_console(_WORKDIR.value, verbose=flags.FLAGS.verbosity >= 1)
    if log_dir:
        print(f"Library logs: {log_dir} (--verbosity=1 shows them here)", flush=True)
    config = _CONFIG.value
    if config.job not in JOBS:
        raise errors.ConfigError(f"config.job={config.job!r} is not one of {sorted(JOBS)}")
    logging.info("Config:\n%s", config)
    JOBS[config.job](config, _WORKDIR.value)


if __name__ == "__main__":
    errors.run(main)
