"""One error path for every command-line tool: known errors become one `error: ...` line and an exit code.

A tool hands its absl `main` to `run` instead of `app.run`:

    from abaw_jax.runtime import errors

    def main(argv): ...                 # raises JobError, ConfigError, OSError, ... when it cannot go on

    if __name__ == "__main__":
        errors.run(main)

Library code and jobs raise errors whose message already says which file (and line) or config key is
wrong, what was expected, what was found and what to do:

  JobError        the run cannot continue (bad data, non-finite loss, a failed checkpoint save, ...).
  ConfigError     a bad configuration or command-line value (`config.x.y must be ..., got ...`); a JobError
                  and a ValueError.
  ExplainedError  the base of both; domain errors derive from it too (`affwild2.AnnotationError`,
                  `checkpointing.CheckpointMismatchError`, `torch_weights.WeightMismatchError`, ...).

`run` prints such an error as ONE line on stderr, `error: <message>`, and exits with

  2  usage and configuration: ConfigError, `absl.app.UsageError`, a flag that does not parse, an unknown
     config key (with ml_collections' "did you mean"), an unknown config preset;
  1  everything else it knows: any other ExplainedError, and OSError (a missing file, a directory where a
     file was expected, no permission, a full disk), whose message names the path;
  130 on Ctrl-C (KeyboardInterrupt).

Any other exception is a bug: its traceback is printed as usual. For a bug report, the full traceback of
a known error too is printed with `--verbosity=1` (or higher) or the environment variable
`ABAW_JAX_TRACEBACK=1`.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

TRACEBACK_ENV = "ABAW_JAX_TRACEBACK"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ExplainedError(Exception):
    """An error whose message names the file or key, what was expected and found, and what to do."""

    exit_code = EXIT_FAILURE


class JobError(ExplainedError, RuntimeError):
    """The run cannot continue (bad data, non-finite loss, a failed save); the message says what to do."""


class ConfigError(JobError, ValueError):
    """A configuration or command-line value is out of range or of the wrong kind; names the key.

    A JobError (a job catching JobError sees it) and a ValueError (the type library callers expect)."""

    exit_code = EXIT_USAGE


def one_line(message: str) -> str:
    """The message with its lines joined, so that every error is a single line of output."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def explain(error: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an error a user can fix; None for a bug (keep the traceback)."""
    if isinstance(error, ExplainedError):
        return one_line(str(error)), error.exit_code
    if isinstance(error, app.UsageError):
        return one_line(f"{error} (see --helpshort)"), EXIT_USAGE
    if isinstance(error, OSError):
        message = str(error)
        if error.filename is not None and error.strerror:
            message = f"{error.filename}: {error.strerror}"
            if error.filename2 is not None:
                message = f"{error.filename} -> {error.filename2}: {error.strerror}"
        return one_line(message), EXIT_FAILURE
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)", EXIT_INTERRUPTED
    return None


def traceback_requested() -> bool:
    """Whether to print tracebacks of known errors: ABAW_JAX_TRACEBACK=1 or --verbosity >= 1."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return True
    return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1


def report(error: BaseException) -> int:
    """Prints `error: ...` (and the traceback when requested) for a known error; returns the exit code.

    Re-raises `error` when it is not a known one, so that a bug keeps its traceback.
    """
    explained = explain(error)
    if explained is None:
        raise error
    message, code = explained
    if traceback_requested():
        traceback.print_exception(error)
    else:
        logging.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing that reports a bad flag or config key as one `error:` line, exit status 2."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        message = str(e)
        if "Traceback" in message:  # a config file that raised: keep its last line, the actual error
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            message = f"{lines[0]} {lines[-1]}"
        _exit_with_usage_error(message)
    except (AttributeError, KeyError) as e:
        # ml_collections raises these for an unknown --config.key, with a "Did you mean" hint.
        detail: Any = e
        while isinstance(detail, BaseException) and detail.args:
            detail = detail.args[0]
        key, _, hint = str(detail).partition("\n")
        _exit_with_usage_error(f"unknown config key {key.strip(chr(39))}. {hint}".strip())


def _exit_with_usage_error(message: str) -> None:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        traceback.print_exc()
    print(f"error: {one_line(message)} (see --helpshort)", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """`absl.app.run(main)` with known errors reported as one `error: ...` line and an exit code."""

    def main_reporting_errors(args: list[str]) -> Any:
        try:
            return main(args)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - unknown errors are re-raised by report
            sys.exit(report(e))

    app.run(main_reporting_errors, argv=list(argv) if argv is not None else None, flags_parser=parse_flags)
