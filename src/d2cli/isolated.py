"""Run a long C++ call (pycolmap's mappers) in a child process, so that signals reach us.

While pycolmap maps, the calling thread is inside C++ for minutes to hours: Python's
signal handlers cannot run, so Ctrl-C was ignored until the mapper finished, and
pycolmap's glog handler turned SIGTERM into a 35-line stack trace (exit 143). Here the
call runs in a spawned child; the parent only waits on a queue, so the first SIGINT or
SIGTERM (raised as ``KeyboardInterrupt`` by the run protocol, :mod:`d2cli.jobs`) stops
the wait at once, the child is killed, and the caller's ``finally`` blocks clean up.
Progress events of the child are forwarded to the parent's ``progress``.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from collections.abc import Callable
from typing import Any

from .errors import D2Error
from .jobs import ProgressEvent, ProgressFn

POLL_SECONDS = 0.2


class ChildFailed(D2Error):
    """The child process died without a result (killed for memory, crashed in C++)."""

    exit_code = 3


def _child(fn: Callable[..., Any], args: tuple[Any, ...], out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if asked

    def progress(event: ProgressEvent) -> None:
        out.put(("progress", event))

    try:
        out.put(("done", fn(*args, progress=progress)))
    except BaseException as e:  # sent whole: the parent raises it as its own
        try:
            out.put(("error", e))
        except Exception:  # not picklable: its text still arrives
            out.put(("error", RuntimeError(f"{e.__class__.__name__}: {e}")))


def run_isolated(fn: Callable[..., Any], *args: Any, progress: ProgressFn | None = None) -> Any:
    """``fn(*args, progress=...)`` in a spawned child; its result (picklable) or its exception.

    ``fn`` must be a module-level function (the child imports it). A signal in the
    parent kills the child and propagates (``KeyboardInterrupt``).
    """
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    messages = ctx.Queue()
    child = ctx.Process(target=_child, args=(fn, args, messages), daemon=True)
    child.start()
    try:
        while True:
            try:
                kind, value = messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not child.is_alive():
                    raise ChildFailed(f"the {fn.__name__.strip('_')} process ended without a "
                                      f"result (exit code {child.exitcode}; out of memory?)") from None
                continue
            if kind == "progress":
                if progress is not None:
                    progress(value)
            elif kind == "error":
                raise value
            else:
                return value
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        messages.close()
