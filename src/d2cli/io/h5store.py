"""A crash-safe HDF5 writer: the one way d2cli writes features and matches.

HDF5 is not crash-safe: a process killed in the middle of a write can leave the
whole file unreadable. So nothing ever writes into a live file:

```
out.h5          the final file; always complete (replaced by an atomic rename)
out.h5.parts/   finished batches, each a small complete HDF5 file (tmp + rename)
out.h5.lock     advisory lock (flock): one writer at a time, freed by the kernel on SIGKILL
```

A batch is committed to a new part file; ``finalize`` folds the final file and the
parts into ``out.h5.tmp`` and renames it over ``out.h5``, then removes the parts.
After a kill at any moment, the final file is either the old or the new one, the
parts hold every committed batch, and the next run sees both (``done()``).
Entries are groups keyed by a name (``/`` makes nested groups, as in hloc);
a later part overrides an earlier entry of the same name.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadFile, OutputError
from .atomic import write_atomic
from .lock import exclusive_lock

COMPACT_AFTER = 64  # merge part files once there are this many
HDF5_OVERHEAD = 1 << 20  # headers and attributes of one file, at most, for the space check


def list_entries(h5: h5py.Group) -> list[str]:
    """Names of the leaf groups (groups holding at least one dataset), in file order."""
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and any(
            isinstance(v, h5py.Dataset) for v in obj.values()
        ):
            names.append(name)

    h5.visititems(visit)
    return names


def read_attrs(h5: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in h5.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and k.endswith("_json"):
            v = json.loads(v)
            k = k[: -len("_json")]
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def write_attrs(h5: h5py.File, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if isinstance(v, (dict, list, tuple)):
            h5.attrs[k + "_json"] = json.dumps(v, sort_keys=True)
        elif v is not None:
            h5.attrs[k] = v


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file for reading with a one-line error on failure."""
    p = Path(path)
    if not p.exists():
        raise BadFile(f"{p}: no such file")
    try:
        return h5py.File(p, mode)
    except OSError as e:
        raise BadFile(f"{p}: not a readable HDF5 file ({e.__class__.__name__})") from None


def _copy_entry(src: h5py.File, dst: h5py.File, name: str) -> None:
    if name in dst:
        del dst[name]
    parent = name.rsplit("/", 1)[0] if "/" in name else None
    if parent:
        dst.require_group(parent)
    src.copy(src[name], dst, name=name)


class H5Store:
    """Crash-safe, resumable writer of named entries into one HDF5 file.

    Use as a context manager::

        with H5Store("feats.h5", attrs={...}) as store:
            for name in todo:
                if name not in store.done(): store.add(name, {"keypoints": kp, ...})
        # on exit (normal, exception or Ctrl-C): commit what is buffered, then finalize
    """

    def __init__(
        self,
        path: str | os.PathLike,
        attrs: Mapping[str, Any] | None = None,
        commit_every: int = 16,
        commit_seconds: float = 30.0,
        fresh: bool = False,
    ) -> None:
        self.path = Path(path)
        self.parts_dir = Path(str(self.path) + ".parts")
        self.lock_path = Path(str(self.path) + ".lock")
        self.attrs = dict(attrs or {})
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.fresh = fresh
        self._buffer: dict[str, dict[str, np.ndarray]] = {}
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._last_commit = time.monotonic()
        self._done: set[str] = set()
        self._lock: ExitStack | None = None
        self._seq = 0

    # -- locking ---------------------------------------------------------------------------
    def _acquire(self) -> None:
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory, expected an HDF5 file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write here ({e.strerror})") from None
        self._lock = ExitStack()
        self._lock.enter_context(exclusive_lock(
            self.lock_path,
            busy=f"{self.path} is being written by another d2 process; wait for it or use another --out",
            unwritable=f"{self.path}: cannot write here"))

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- state -----------------------------------------------------------------------------
    def _part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.glob("part-*.h5"))

    def existing_attrs(self) -> dict[str, Any] | None:
        """Attributes of what is already on disk (final file, else the oldest part)."""
        for p in ([self.path] if self.path.exists() else []) + self._part_files():
            with open_h5(p) as f:
                return read_attrs(f)
        return None

    def __enter__(self) -> H5Store:
        self._acquire()
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        return self

    def _open(self) -> None:
        for tmp in list(self.parts_dir.glob("*.tmp")) if self.parts_dir.is_dir() else []:
            tmp.unlink()  # a part that was being written when a run died
        if self.fresh:
            self._wipe()
        if self.path.exists():
            with open_h5(self.path) as f:
                self._done.update(list_entries(f))
        for p in self._part_files():
            try:
                with h5py.File(p, "r") as f:
                    self._done.update(list_entries(f))
            except OSError:
                p.unlink()  # cannot happen with rename-on-complete, but never trust a disk
        seqs = [int(p.name.split("-")[1]) for p in self._part_files()]
        self._seq = max(seqs, default=0) + 1

    def _wipe(self) -> None:
        for p in self._part_files():
            p.unlink()
        if self.path.exists():
            self.path.unlink()

    def reset(self) -> None:
        """Drop everything stored so far (under the lock): the next finalize starts afresh."""
        self._wait_writer()
        self._wipe()
        self._done.clear()
        self._buffer.clear()

    def done(self) -> set[str]:
        """Names already stored (final file, committed parts and the current buffer)."""
        return self._done | set(self._buffer)

    # -- writing ---------------------------------------------------------------------------
    def add(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        self._buffer[name] = dict(arrays)
        if (
            len(self._buffer) >= self.commit_every
            or time.monotonic() - self._last_commit >= self.commit_seconds
        ):
            self.commit()

    def _write_h5(self, target: Path, fill, data_bytes: int) -> None:
        need = data_bytes + HDF5_OVERHEAD
        with write_atomic(target, fsync=True, need_bytes=need) as tmp, h5py.File(tmp, "w") as f:
            write_attrs(f, self.attrs)
            fill(f)

    def commit(self, wait: bool = False) -> None:
        """Write the buffered entries to a new part file (atomic), in a background thread.

        One write is in flight at a time, so the caller computes while the disk works;
        ``wait`` (and ``finalize``) block until it is on disk.
        """
        self._last_commit = time.monotonic()
        if self._buffer:
            self._wait_writer()
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            part = self.parts_dir / f"part-{self._seq:08d}-{os.getpid()}.h5"
            self._seq += 1
            buffer, self._buffer = self._buffer, {}
            self._done.update(buffer)

            def fill(f: h5py.File) -> None:
                for name, arrays in buffer.items():
                    g = f.require_group(name)
                    for k, v in arrays.items():
                        g.create_dataset(k, data=v)

            def write() -> None:
                try:
                    self._write_h5(part, fill, sum(np.asarray(v).nbytes for arrays in buffer.values()
                                                   for v in arrays.values()))
                    if len(self._part_files()) >= COMPACT_AFTER:
                        self._compact()
                except BaseException as e:  # re-raised in the caller's thread
                    self._writer_error = e

            self._writer = threading.Thread(target=write, name="h5store-writer", daemon=True)
            self._writer.start()
        if wait:
            self._wait_writer()

    def _wait_writer(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise error

    def _merge_into(self, target: Path, sources: list[Path]) -> None:
        def fill(f: h5py.File) -> None:
            for src in sources:
                with h5py.File(src, "r") as s:
                    for name in list_entries(s):
                        _copy_entry(s, f, name)

        self._write_h5(target, fill, sum(s.stat().st_size for s in sources))

    def _compact(self) -> None:
        """Merge all parts into one (same entries: a crash in between only duplicates)."""
        parts = self._part_files()
        merged = self.parts_dir / f"part-{self._seq:08d}-{os.getpid()}.h5"
        self._seq += 1
        self._merge_into(merged, parts)
        for p in parts:
            p.unlink()

    def finalize(self) -> None:
        """Fold the final file and all parts into a new final file (atomic rename)."""
        self.commit(wait=True)
        parts = self._part_files()
        if not parts:  # nothing new: the final file (or none, never an empty one) stays
            return
        sources = ([self.path] if self.path.exists() else []) + parts
        self._merge_into(self.path, sources)
        for p in parts:
            p.unlink()
        try:
            self.parts_dir.rmdir()
        except OSError:
            pass

    def __exit__(self, *exc: object) -> None:
        try:
            self.finalize()
        finally:
            self._release()


def iter_entries(path: str | os.PathLike) -> Iterator[str]:
    with open_h5(path) as f:
        yield from list_entries(f)
