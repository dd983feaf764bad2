"""The run protocol every long d2cli job follows: progress events, Ctrl-C, outcome.

- **Progress**: a job takes ``progress: ProgressFn | None`` and calls it with one
  :class:`ProgressEvent` type (stage, done, total, item, error). Jobs know nothing of
  terminals; the CLI's renderer (``cli/render.py``) draws every stage the same way.
  :class:`Stage` counts one stage's items and sends the events.
- **Ctrl-C / SIGTERM**: inside :func:`interruptible`, the first signal asks the job to
  stop after the item in flight (``stop.each`` stops yielding); a second one, or a
  ``KeyboardInterrupt`` raised anywhere in the block, ends the block at once. Either
  way the block exits normally with ``stop.requested`` set, so the job still commits
  what it finished and returns its result with ``interrupted=True``. A SIGINT that d2
  inherited as ignored (a background job of a shell script, nohup) stays ignored.
- **Outcome**: every job's result has ``failed`` (item -> one-line reason) and
  ``interrupted``; :func:`d2cli.errors.exit_status` turns that into the exit code.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one stage of a job.

    ``done`` of ``total`` items (``total`` None: unknown); ``item`` is the one just
    finished (or failed, with ``error`` its one-line reason); ``message`` a status
    line worth showing as it is; ``info`` extra numbers (a training loss).
    """

    stage: str
    done: int
    total: int | None
    item: str | None = None
    error: str | None = None
    unit: str = "items"
    message: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]


class Stage:
    """Counts the items of one stage and reports them to a :data:`ProgressFn` (or to nobody)."""

    def __init__(self, progress: ProgressFn | None, name: str, total: int | None = None,
                 unit: str = "items") -> None:
        self.progress, self.name, self.total, self.unit = progress, name, total, unit
        self.done = 0

    def _emit(self, **kw: Any) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(self.name, self.done, self.total, unit=self.unit, **kw))

    def start(self, total: int | None, done: int = 0) -> None:
        """The stage begins with ``total`` items to do (``done`` of them already done)."""
        self.total, self.done = total, done
        self._emit()

    def advance(self, item: str | None = None, error: str | None = None, n: int = 1,
                **info: Any) -> None:
        """``n`` more items finished (``error``: the item failed, for that reason)."""
        self.done += n
        self._emit(item=item, error=error, info=info)

    def update(self, done: int, total: int | None = None, **info: Any) -> None:
        """Absolute progress (bytes downloaded, images registered)."""
        self.done = done
        if total is not None:
            self.total = total
        self._emit(info=info)

    def say(self, message: str) -> None:
        """A status line (a finished step, a validation loss)."""
        self._emit(message=message)


class StopRequest:
    """Set by the first SIGINT/SIGTERM (or a KeyboardInterrupt) inside :func:`interruptible`."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """The items, until a stop is requested (the item in flight is finished first)."""
        for it in items:
            if self.requested:
                return
            yield it

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # asked twice: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # a shell's background job (`d2 ... &`, nohup): Ctrl-C is not ours
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.requested = True
            return True  # the job commits what it finished and reports `interrupted`
        return False


def interruptible() -> StopRequest:
    """``with interruptible() as stop: for x in stop.each(todo): ...`` (see module doc)."""
    return StopRequest()


def relabel(progress: ProgressFn | None, stage: str) -> ProgressFn | None:
    """The events of a sub-job under another stage name (``"{stage}"`` may hold ``{}``
    for the sub-job's own name: ``"import {}"``)."""
    if progress is None:
        return None
    sink = progress

    def forward(e: ProgressEvent) -> None:
        sink(replace(e, stage=stage.format(e.stage)))

    return forward


class _KeepSigterm(importlib.abc.MetaPathFinder):
    """Importing pycolmap installs glog's failure handler for SIGTERM, which prints a C++
    stack trace and exits 143 in place of the run protocol's clean stop. This finder lets
    pycolmap import as usual, then puts back the SIGTERM handler that was there before."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "pycolmap":
            return None
        sys.meta_path.remove(self)  # once, and no recursion into ourselves
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            before = signal.getsignal(signal.SIGTERM)
            run(module)
            if before is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, before)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def keep_sigterm_through_pycolmap() -> None:
    """Install :class:`_KeepSigterm` (``d2cli`` does on import; a no-op once pycolmap is in)."""
    if "pycolmap" not in sys.modules and not any(isinstance(f, _KeepSigterm) for f in sys.meta_path):
        sys.meta_path.insert(0, _KeepSigterm())
