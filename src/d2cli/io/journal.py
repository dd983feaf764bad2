"""Append-only JSON-lines journals: how a long job that is not an HDF5 writer resumes.

Line 1 is a header (the job's inputs and settings); each finished item appends one JSON
line and flushes it, so a killed run loses at most the item in flight (a line cut short
by the kill is skipped on reading). A run whose header differs starts a fresh journal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputError


def fingerprint(path: Path) -> list[Any]:
    """What identifies an input's content cheaply: path, size and mtime of its files."""
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    out: list[Any] = [str(path.resolve())]
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


class JsonJournal:
    """``path``: the journal; ``header``: what must be equal for a run to resume from it."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = Path(path), header
        self._fh: Any = None
        self._resumed = False

    def records(self) -> Iterator[dict[str, Any]]:
        """The records of an earlier run with this header (none if there is none)."""
        try:
            lines = self.path.read_text().splitlines()
            if not lines or json.loads(lines[0]) != self.header:
                return
        except (OSError, ValueError):
            return
        self._resumed = True
        for line in lines[1:]:
            try:
                d = json.loads(line)
            except ValueError:  # the line a kill cut short: its item is redone
                continue
            if isinstance(d, dict):
                yield d

    def __enter__(self) -> JsonJournal:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # never through a planted link: the journal's name (OUT.partial) is predictable
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if self._resumed
                                                                 else os.O_TRUNC)
            self._fh = os.fdopen(os.open(self.path, flags, 0o666), "a" if self._resumed else "w")
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write ({e.strerror})") from None
        if not self._resumed:
            self.append(self.header)
        return self

    def append(self, record: dict[str, Any]) -> None:
        try:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write ({e.strerror})") from None

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
