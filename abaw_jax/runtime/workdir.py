"""A run's hold on its workdir: a lock so that two runs cannot write one workdir, and a clean SIGTERM.

Every job (pretraining, fine-tuning, features, fusion, evaluation) runs inside one `session`, which takes the
lock (on process 0 only), turns SIGTERM into a stop request and turns on JAX's persistent compilation cache:

    with workdir.session(workdir_path) as stop_requested:
        ...                             # in the loop: if stop_requested(): save, raise JobError(...)

The lock is the file `<workdir>/LOCK` holding JSON {host, pid, start, command}, created atomically. A lock
left by a process that is gone (killed, crashed, out of memory, the container restarted) is taken over with
a log line naming it; a lock held by a live process stops the run with a `JobError` naming that host and
PID. A lock from another host cannot be checked from here: the error says so and which file to delete once
that run is known to be over. The lock is released when the block exits, also on an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jax

from abaw_jax.runtime import cache
from abaw_jax.runtime.errors import JobError
from abaw_jax.runtime.telemetry import log

LOCK_FILENAME = "LOCK"
_held: set[str] = set()  # lock files this process holds


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux; None elsewhere), to tell a reused PID from the original."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return False  # our PID in a lock we have not written: an earlier process (e.g. a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = process_start(pid)
    return start is None or current is None or current == start


def _describe(holder: dict) -> str:
    return (
        f"host {holder.get('host')} PID {holder.get('pid')} (since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('time', 0)))}: "
        f"{holder.get('command', '?')})"
    )


@contextlib.contextmanager
def lock(directory: str | os.PathLike, *, enabled: bool = True) -> Iterator[None]:
    """Holds `<directory>/LOCK` for the duration of the block (see the module docstring)."""
    if not enabled:
        yield
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILENAME)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "time": time.time(),
        "command": " ".join(sys.argv)[:300],
    }
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # removed (or being written) meanwhile: try again
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"] and path in _held:
                raise JobError(
                    f"{directory} is in use by {_describe(holder)}: this very process already holds "
                    "it (a job started twice in one process?)"
                )
            if holder.get("host") != me["host"]:
                raise JobError(
                    f"{directory} is in use by {_describe(holder)}, another host. If that run is "
                    f"over, delete {path} and rerun."
                ) from None
            if _alive(int(holder.get("pid", -1)), holder.get("start")):
                raise JobError(
                    f"{directory} is in use by {_describe(holder)}. Wait for it to finish, stop it, "
                    "or use another --workdir."
                ) from None
            log(f"Taking over the lock {path} of {_describe(holder)}, which is no longer running")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        _held.add(path)
        break
    else:
        raise JobError(f"could not take the lock {path}: it keeps changing; is another run starting there?")
    try:
        yield
    finally:
        _held.discard(path)
        if (_read(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _read(path: str) -> dict | None:
    """The lock's content; None when it vanished; a placeholder when it is not valid JSON."""
    for _ in range(5):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            time.sleep(0.05)  # being written right now
    return {"host": socket.gethostname(), "pid": -1, "command": f"unreadable lock file {path}"}


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    """Turns SIGTERM (`kill PID`, `docker stop`, a scheduler's preemption) into a request the loop polls.

        with workdir.stop_on_sigterm() as stop_requested:
            while step < total_steps:
                if stop_requested():
                    ...save a checkpoint, raise JobError("stopped by SIGTERM at step ...")

    Without this, SIGTERM ends the process at once: no checkpoint, no cleanup, and the data loader's worker
    processes are left running without a parent. A second SIGTERM exits at once (status 143), still
    through Python's cleanup, which stops the workers. Outside the main thread this is a no-op.
    """
    requested = []

    def handler(signum, frame):
        del frame
        if requested:
            raise SystemExit(128 + signum)
        requested.append(signum)
        log("Received SIGTERM: stopping after this step (send it again to stop at once)")

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def session(directory: str | os.PathLike) -> Iterator[Callable[[], bool]]:
    """What every job holds while it works in `directory`: the lock (process 0), SIGTERM as a stop request the
    loop polls (yielded), and the persistent compilation cache."""
    cache.enable_compilation_cache()
    with lock(directory, enabled=jax.process_index() == 0), stop_on_sigterm() as stop_requested:
        yield stop_requested
