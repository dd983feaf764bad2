"""The one progress renderer of the CLI: every job's :class:`~d2cli.jobs.ProgressEvent`.

On a terminal: a rich bar per stage (count, percentage, rate, elapsed, ETA), failed
items and status lines printed above the bars. Elsewhere (``> log``, CI, Slurm): a
plain line per stage every ``D2CLI_PROGRESS_SECONDS`` (default 30) seconds and when a
stage ends, so a log shows a long run as it goes. The rate is the items done in this
run over the time since the stage started, the same as in the command's summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..jobs import ProgressEvent

DEFAULT_LOG_SECONDS = 30.0


def _amount(n: float, unit: str) -> str:
    if unit == "B":
        return f"{n / 1e6:.1f} MB"
    return f"{n:.0f}"


def _rate(n: float, seconds: float, unit: str) -> str:
    if seconds <= 0 or n <= 0:
        return ""
    r = n / seconds
    return f"{r / 1e6:.2f} MB/s" if unit == "B" else f"{r:.2f} {unit}/s"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class _StageState:
    first_done: int  # done when the stage was first seen (resumed work is not this run's)
    t0: float
    last_line: float
    task: Any = None
    ended: bool = False

    def rate(self, e: ProgressEvent) -> str:
        return _rate(e.done - self.first_done, time.monotonic() - self.t0, e.unit)

    def eta(self, e: ProgressEvent) -> str:
        n, dt = e.done - self.first_done, time.monotonic() - self.t0
        if e.total is None or n <= 0 or dt <= 0:
            return ""
        return f", eta {_duration((e.total - e.done) * dt / n)}"


class _CountColumn(ProgressColumn):
    def render(self, task: Any) -> Text:
        unit = task.fields.get("unit", "")
        total = "?" if task.total is None else _amount(task.total, unit)
        return Text(f"{_amount(task.completed, unit)}/{total}", style="progress.download")


class _FieldColumn(ProgressColumn):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, task: Any) -> Text:
        return Text(str(task.fields.get(self.name, "")))


class Renderer:
    """``with Renderer(console, quiet) as show: job(..., progress=show)``."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.live = console.is_terminal and not quiet
        self.log_seconds = float(os.environ.get("D2CLI_PROGRESS_SECONDS", DEFAULT_LOG_SECONDS))
        self.stages: dict[str, _StageState] = {}
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), _CountColumn(),
            TaskProgressColumn(), _FieldColumn("rate"), _FieldColumn("extra"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, disable=not self.live, transient=False)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars.live.is_started:
            self.bars.stop()

    def __call__(self, e: ProgressEvent) -> None:
        if e.error:
            self.console.print(f"[yellow]failed[/] {e.error}", highlight=False, soft_wrap=True)
        if e.message:
            if not self.quiet:
                self.console.print(f"[bold]{e.message}", highlight=False, soft_wrap=True)
            return
        st = self.stages.get(e.stage)
        if st is None:
            if e.total == 0:
                return  # nothing to do in this stage (all cached): no bar
            now = time.monotonic()
            st = self.stages[e.stage] = _StageState(e.done, now, now)
        if self.live:
            self._draw(st, e)
        elif not self.quiet:
            self._log(st, e)

    def _extra(self, e: ProgressEvent) -> str:
        loss = e.info.get("loss")
        return f"loss {loss:.3f}" if isinstance(loss, float) else ""

    def _draw(self, st: _StageState, e: ProgressEvent) -> None:
        if st.task is None:
            if not self.bars.live.is_started:  # not before: a set-up error leaves no blank line
                self.bars.start()
            st.task = self.bars.add_task(e.stage, total=e.total, completed=e.done, unit=e.unit,
                                         rate="", extra="")
        self.bars.update(st.task, completed=e.done, total=e.total, rate=st.rate(e),
                         extra=self._extra(e) or self.bars.tasks[st.task].fields["extra"])

    def _log(self, st: _StageState, e: ProgressEvent) -> None:
        now = time.monotonic()
        finished = e.total is not None and e.done >= e.total
        if st.ended or not (finished or now - st.last_line >= self.log_seconds):
            return
        st.last_line, st.ended = now, finished
        total = "?" if e.total is None else _amount(e.total, e.unit)
        pct = f" ({100 * e.done / e.total:.0f}%)" if e.total else ""
        rate = st.rate(e)
        extra = self._extra(e)
        self.console.print(
            f"{e.stage}: {_amount(e.done, e.unit)}/{total} {e.unit}{pct}"
            + (f", {rate}" if rate else "") + ("" if finished else st.eta(e))
            + (f", {extra}" if extra else "") + f", {_duration(now - st.t0)} elapsed",
            highlight=False, soft_wrap=True)
