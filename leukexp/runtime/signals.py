"""Signals mean stop: SIGTERM (Slurm, `kill`) and SIGINT (Ctrl-C) raise `Interrupted` in the main thread, and the
process's children (worker pools of scikit-learn heads, data-loader workers) are reaped before it exits."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: the current run ends KILLED and the process exits with 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    for stop in STOP_SIGNALS:  # a second signal while the run is being closed must not interrupt the closing
        signal.signal(stop, signal.SIG_IGN)
    raise Interrupted(signum)


def exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """An exception, then its causes (`__cause__`, else `__context__`), each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


class DropInterruptedTracebacks(logging.Filter):
    """Drop a library's log record of an exception caused by the stop (`Interrupted` in its chain): the stop is
    reported once, by the command, as one line (MLflow's SQLite store logs every failed session with its
    traceback, including one cut short by Ctrl-C)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record whose exception was caused by a stop signal."""
        error = record.exc_info[1] if record.exc_info else None
        return not any(isinstance(cause, Interrupted | KeyboardInterrupt) for cause in exception_chain(error))


# libraries that log an exception's traceback where a stop signal may cut their work short
TRACEBACK_LOGGERS = ("mlflow.store.db.utils", "mlflow.tracking", "optuna")


def install_stop_handlers() -> bool:
    """Make SIGTERM and SIGINT raise `Interrupted` (main thread only; False elsewhere, e.g. in a thread pool)."""
    for name in TRACEBACK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropInterruptedTracebacks) for f in logger.filters):
            logger.addFilter(DropInterruptedTracebacks())
    if threading.current_thread() is not threading.main_thread():
        return False
    for stop in STOP_SIGNALS:
        signal.signal(stop, _raise_interrupted)
    return True


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), children first, read from /proc (empty where it is absent)."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, queue = [], [root]
    while queue:
        for child in parents.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def reap_children(grace: float = 3.0) -> int:
    """SIGTERM every descendant process, then SIGKILL those still alive after `grace` seconds; returns how many."""
    return reap(descendants(), grace)


def reap(children: list[int], grace: float = 3.0) -> int:
    """SIGTERM these processes, then SIGKILL those still alive after `grace` seconds; returns how many."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(children)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own zombies
        if done:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
