"""A crash-safe HDF5 writer: the one way d2cli writes features and matches.

HDF5 is not crash-safe: a process killed in the middle of a write can leave the
whole file unreadable. So nothing ever writes into a live file:

```
out.h5          the final file; always complete (replaced by an atomic rename)
out.h5.parts/   finished batches, each a small complete HDF5 file (tmp + rename)
out.h5.lock     advisory lock (flock): one writer at a time, freed by the kernel on SIGKILL
```

A batch is committed to a new part file; ``finalize`` copies the final file byte for
byte (at disk speed, no HDF5 object walk) to a temporary, adds the parts' entries to it
and renames it over ``out.h5``, then removes the parts. After a kill at any moment, the
final file is either the old or the new one, the parts hold every committed batch, and
the next run sees both (``done()``). Entries are groups keyed by a name (``/`` makes
nested groups, as in hloc); a later part overrides an earlier entry of the same name.

Parts are merged in tiers, as a log-structured store does: every :data:`FANOUT` parts
of one level become one part of the next, so each entry is copied once per level
(log_FANOUT of the number of commits) instead of once per merge, and a run of any
length keeps a few dozen part files.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadFile, InputNotFound, OutputError
from .atomic import write_atomic
from .lock import exclusive_lock

# entries buffered while a part is being written, in units of commit_every, before
# the job waits for the disk
MAX_BACKLOG = 8
FANOUT = 16  # parts of one level merged into one part of the next level
HDF5_OVERHEAD = 1 << 20  # headers and attributes of one file, at most, for the space check


def list_entries(h5: h5py.Group, holding: str | None = None) -> list[str]:
    """Names of the leaf groups (groups holding at least one dataset), in file order;
    with ``holding``, only the groups holding a dataset of that name (``keypoints``).

    Walks the object headers through the low-level API: no Python object per group or
    dataset (the high-level walk took seconds for a matches file of 50k pairs; checking
    each group for a dataset afterwards took 0.2 ms per group).
    """
    names: list[str] = []
    last = None
    tail = None if holding is None else b"/" + holding.encode()

    def visit(name: bytes, info: Any) -> None:
        nonlocal last
        if info.type != h5py.h5o.TYPE_DATASET or b"/" not in name:
            return
        if tail is not None and not name.endswith(tail):
            return
        parent = name.rsplit(b"/", 1)[0]
        if parent != last:  # a group's datasets come one after another
            last = parent
            names.append(parent)

    h5py.h5o.visit(h5.id, visit, info=True)
    seen: set[bytes] = set()
    return [n.decode() for n in names if not (n in seen or seen.add(n))]


def read_attrs(h5: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in h5.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and k.endswith("_json"):
            try:
                v = json.loads(v)
            except ValueError:
                raise BadFile(f"{h5.filename}: attribute {k} is not valid JSON") from None
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


# HDF5's adaptive metadata cache (up to 32 MiB per file) let a process grow by ~5 KB per
# entry it visited and never gave it back: reading every pair of a 50k-pair matches file
# took 303 MiB with it, 78 MiB with this fixed 4 MiB cache, and 10 % less time.
METADATA_CACHE_BYTES = 4 << 20


def h5_file(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """``h5py.File`` with a fixed, small metadata cache: memory flat in the entry count."""
    f = h5py.File(path, mode)
    try:
        config = f.id.get_mdc_config()
        config.set_initial_size = True
        config.initial_size = config.min_size = config.max_size = METADATA_CACHE_BYTES
        config.incr_mode = config.flash_incr_mode = config.decr_mode = 0  # off: fixed size
        f.id.set_mdc_config(config)
    except BaseException:
        f.close()
        raise
    return f


def _libraries() -> tuple[Any, Any] | None:
    """(H5garbage_collect of the libhdf5 h5py runs on, glibc's malloc_trim), found through
    this process's memory map; None where either is not there (not Linux/glibc)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libhdf5" in line}
        hdf5 = [p for p in paths if os.path.basename(p).startswith(("libhdf5-", "libhdf5.so",
                                                                      "libhdf5_serial.so"))]
        if len(hdf5) != 1:
            return None
        hdf5_lib, libc = ctypes.CDLL(hdf5[0]), ctypes.CDLL("libc.so.6")
        return (hdf5_lib.H5garbage_collect, libc.malloc_trim)
    except (OSError, AttributeError):
        return None


_LIBRARIES: list[tuple[Any, Any] | None] = []


def release_hdf5_memory() -> None:
    """Give HDF5's free lists back to the system, after parts are merged.

    HDF5 keeps every block it frees on its own free lists, which glibc cannot return:
    ``d2 merge`` of a 50k-entry file peaked at 242 MiB; collecting them after each merge
    of parts (with ``malloc_trim``) keeps it near 170 MiB. A no-op where the libraries
    cannot be found.
    """
    if not _LIBRARIES:
        _LIBRARIES.append(_libraries())
    libs = _LIBRARIES[0]
    if libs is None:
        return
    garbage_collect, malloc_trim = libs
    with h5py.h5.phil:  # h5py's lock: no other thread is inside HDF5 meanwhile
        garbage_collect()
    malloc_trim(0)


def open_h5(path: str | os.PathLike, mode: str = "r", what: str = "HDF5 file") -> h5py.File:
    """Open an HDF5 file with a one-line error on failure (``what``: the file's role, for
    the message: "features file", "matches file", ...)."""
    p = Path(path)
    if not p.exists():
        raise InputNotFound(f"{p}: {what} not found")
    try:
        return h5_file(p, mode)
    except OSError as e:
        raise BadFile(f"{p}: not a readable HDF5 file ({e.__class__.__name__})") from None


def _part_level(part: Path) -> int:
    """The merge level of a part file, ``part-<seq>-L<level>-<pid>.h5`` (older names: 0)."""
    fields = part.stem.split("-")
    return int(fields[2][1:]) if len(fields) == 4 and fields[2].startswith("L") else 0


def _merge_group(src: h5py.Group, dst: h5py.Group) -> None:
    """Copy every entry under ``src`` into ``dst``, replacing entries of the same name.

    A subtree that ``dst`` does not have is copied in one call (4x faster per entry than
    entry by entry); an entry (a group holding datasets) replaces its namesake whole.
    """
    for key, obj in src.items():
        if key not in dst:
            src.copy(obj, dst, name=key)
        elif (isinstance(obj, h5py.Group) and isinstance(dst[key], h5py.Group)
              and not any(isinstance(v, h5py.Dataset) for v in obj.values())):
            _merge_group(obj, dst[key])
        else:
            del dst[key]
            src.copy(obj, dst, name=key)


_LINK_CREATE = h5py.h5p.create(h5py.h5p.LINK_CREATE)
_LINK_CREATE.set_create_intermediate_group(True)


def _write_entry(f: h5py.File, name: str, arrays: Mapping[str, np.ndarray]) -> None:
    """One entry (a group of datasets) through the low-level API: half the cost of
    ``require_group`` + ``create_dataset``, which matters for hloc's one group per pair."""
    gid = h5py.h5g.create(f.id, name.encode(), lcpl=_LINK_CREATE)
    for key, value in arrays.items():
        v = np.ascontiguousarray(value)
        space = (h5py.h5s.create_simple(v.shape) if v.ndim else
                 h5py.h5s.create(h5py.h5s.SCALAR))
        ds = h5py.h5d.create(gid, key.encode(), h5py.h5t.py_create(v.dtype), space)
        if v.size:
            ds.write(h5py.h5s.ALL, h5py.h5s.ALL, v)


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
        """Committed parts, oldest first (by sequence number)."""
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.glob("part-*.h5"))

    def _new_part(self, level: int) -> Path:
        part = self.parts_dir / f"part-{self._seq:08d}-L{level}-{os.getpid()}.h5"
        self._seq += 1
        return part

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

    def _check_parts_dir(self) -> None:
        """Refuse a parts folder that is not a plain folder of this user's: a planted
        symlink would make d2 delete files elsewhere and merge foreign parts."""
        try:
            st = os.lstat(self.parts_dir)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{self.parts_dir}: is not a folder (a link or a file) where d2 "
                              "keeps its parts; remove it")
        if st.st_uid != os.getuid():
            raise OutputError(f"{self.parts_dir}: belongs to another user; remove it or use "
                              "another --out")

    def _open(self) -> None:
        self._check_parts_dir()
        for tmp in list(self.parts_dir.glob("*.tmp")) if self.parts_dir.is_dir() else []:
            tmp.unlink()  # a part that was being written when a run died
        if self.fresh:
            self._wipe()
        if self.path.exists():
            with open_h5(self.path) as f:
                self._done.update(list_entries(f))
        for p in self._part_files():
            try:
                with h5_file(p, "r") as f:
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
        """Buffer one entry; commit every ``commit_every`` entries or ``commit_seconds``.

        While the previous part is still being written, entries keep accumulating (up to
        :data:`MAX_BACKLOG` times ``commit_every``) instead of waiting for the disk: the
        next part is then larger, and commits never limit the throughput of fast jobs.
        """
        self._buffer[name] = dict(arrays)
        due = (len(self._buffer) >= self.commit_every
               or time.monotonic() - self._last_commit >= self.commit_seconds)
        busy = self._writer is not None and self._writer.is_alive()
        if due and not (busy and len(self._buffer) < MAX_BACKLOG * self.commit_every):
            self.commit()

    def _write_h5(self, target: Path, fill, data_bytes: int) -> None:
        need = data_bytes + HDF5_OVERHEAD
        with write_atomic(target, fsync=True, need_bytes=need) as tmp, h5_file(tmp, "w") as f:
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
            self._check_parts_dir()  # again: one could have been planted since _open
            part = self._new_part(0)
            buffer, self._buffer = self._buffer, {}
            self._done.update(buffer)

            def fill(f: h5py.File) -> None:
                for name, arrays in buffer.items():
                    _write_entry(f, name, arrays)

            def write() -> None:
                try:
                    self._write_h5(part, fill, sum(np.asarray(v).nbytes for arrays in buffer.values()
                                                   for v in arrays.values()))
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

    def _merge_into(self, target: Path, sources: list[Path], base: Path | None = None) -> None:
        """Write ``target``: a byte copy of ``base`` (if any) plus the entries of ``sources``.

        Later sources override earlier ones and ``base``; the attributes are this store's.
        """
        def fill(f: h5py.File) -> None:
            for src in sources:
                with h5_file(src, "r") as s:
                    _merge_group(s, f)

        size = sum(s.stat().st_size for s in sources)
        if base is None:
            self._write_h5(target, fill, size)
            release_hdf5_memory()
            return
        need = size + base.stat().st_size + HDF5_OVERHEAD
        with write_atomic(target, fsync=True, need_bytes=need) as tmp:
            shutil.copyfile(base, tmp)  # copy_file_range / sendfile: no HDF5 object walk
            with h5_file(tmp, "r+") as f:
                write_attrs(f, self.attrs)
                fill(f)
        release_hdf5_memory()

    def _compact(self) -> None:
        """Merge every :data:`FANOUT` parts of one level into one part of the next level.

        Parts of a higher level are always older than those of a lower one (a level is
        only merged when all lower levels have just been merged into it), so the merged
        part, which takes the next sequence number, keeps "later overrides earlier". A
        crash between writing it and removing its sources leaves the same entries twice.
        """
        while True:
            by_level: dict[int, list[Path]] = {}
            for p in self._part_files():
                by_level.setdefault(_part_level(p), []).append(p)
            full = [lv for lv, ps in by_level.items() if len(ps) >= FANOUT]
            if not full:
                return
            level = min(full)
            parts = by_level[level]
            self._merge_into(self._new_part(level + 1), parts)
            for p in parts:
                p.unlink()

    def finalize(self) -> None:
        """Fold the final file and all parts into a new final file (atomic rename)."""
        self.commit(wait=True)
        parts = self._part_files()
        if not parts:  # nothing new: the final file (or none, never an empty one) stays
            return
        self._merge_into(self.path, parts, base=self.path if self.path.exists() else None)
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
