"""Reading orbax checkpoints that may be damaged: one line for why a restore failed, and quiet for what it left.

Used by `runtime.checkpointing` (training state) and `models.params_io` (exported parameters).
"""

from __future__ import annotations

import logging
import sys
import threading


def root_cause(error: BaseException, limit: int = 300) -> str:
    """The innermost cause of a chained exception, as one short line (orbax wraps the useful part)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def silence_orphaned_reads() -> None:
    """Drops the errors of reads a failed orbax restore left running.

    When one array of a restore fails, orbax closes its event loop while TensorStore still completes the
    other reads; each completion then raises in a background thread ('Event loop is closed'), each
    abandoned read coroutine (`_read_array_index_and_device_put`) reports its own read error when it is
    collected, and asyncio logs the never-retrieved exceptions of its tasks and gathering futures:
    thousands of lines about a restore that has already been reported and skipped. Installed before the
    first restore, not after a failure: TensorStore may complete an orphaned read on its own thread before
    the failed restore's exception reaches the caller. From then on asyncio's "exception was never
    retrieved" records are dropped (the job's own code awaits every future it makes). Other background
    errors are still printed.
    """
    if getattr(threading.excepthook, "_abaw_filter", False):
        return

    def orphaned(error: BaseException | None, source: object = None) -> bool:
        message = str(error)
        return (
            message == "Event loop is closed"
            or message.startswith("Encountered error while reading array")
            or getattr(source, "__qualname__", "") == "_read_array_index_and_device_put"
        )

    previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook
    previous_excepthook = sys.excepthook

    def thread_hook(args):
        if not orphaned(args.exc_value):
            previous_thread_hook(args)

    def unraisable_hook(unraisable):
        if not orphaned(unraisable.exc_value, unraisable.object):
            previous_unraisable_hook(unraisable)

    def excepthook(kind, value, traceback):  # TensorStore's completion callbacks report through PyErr_Print
        if not orphaned(value):
            previous_excepthook(kind, value, traceback)

    def keep_log_record(record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)

    thread_hook._abaw_filter = True
    threading.excepthook, sys.unraisablehook, sys.excepthook = thread_hook, unraisable_hook, excepthook
    logging.getLogger("asyncio").addFilter(keep_log_record)
