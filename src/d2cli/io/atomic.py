"""The one way d2cli replaces a file: write a temporary file beside it, then rename.

A reader (or a run after ``kill -9``) sees the old file or the complete new one, never
half of one; a failure (full disk, no permission, a folder in the way) is one
:class:`~d2cli.errors.OutputError` line naming the file, and leaves no temporary behind.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import OutputError


def check_space(path: Path, need_bytes: int) -> None:
    """Refuse a write of ``need_bytes`` that cannot fit (free disk space, the file-size limit).

    HDF5 must not meet a full disk: its failed writes can crash the process in the
    library's clean-up rather than raise, so the files it writes are checked first.
    """
    import resource
    import shutil

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and need_bytes > limit:
        raise OutputError(f"{path}: cannot write ({need_bytes} bytes needed, files are limited "
                          f"to {limit} bytes here)")
    free = shutil.disk_usage(path.parent).free
    if need_bytes > free:
        raise OutputError(f"{path}: cannot write (no space left: {need_bytes} bytes needed, "
                          f"{free} free)")


@contextmanager
def write_atomic(path: str | os.PathLike, *, fsync: bool = False, suffix: str = "",
                 need_bytes: int | None = None) -> Iterator[Path]:
    """``with write_atomic(p) as tmp: <write tmp>`` then ``tmp`` is renamed over ``p``.

    ``fsync``: flush the data to disk before the rename (files that must survive a power
    cut, not only a killed process). ``suffix``: the temporary name's ending, for writers
    that choose the format by it (``.png``). ``need_bytes``: refuse at once when that much
    cannot fit (:func:`check_space`).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if need_bytes is not None:
            check_space(path, need_bytes)
        tmp = new_temporary(path, suffix)
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    except RuntimeError as e:  # HDF5 reports a failed write (full disk) this way, errno inside
        if "errno" not in str(e):
            raise
        why = str(e).split("error message = ")[-1].strip("')") or str(e)
        raise OutputError(f"{path}: cannot write ({why})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@functools.cache
def _umask() -> int:
    """The process's umask, read once (os.umask can only read it by setting it, which
    would race with the store's writer thread creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_temporary(path: Path, suffix: str = "") -> Path:
    """A new, empty temporary file beside ``path``, created exclusively under an
    unpredictable name (``O_EXCL``: never a file or link someone else planted), with the
    mode the final file should have."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open(..., "w") would give
    finally:
        os.close(fd)
    return Path(name)


def new_temporary_dir(path: Path) -> Path:
    """A new folder beside ``path``, created exclusively under an unpredictable name
    (``mkdtemp``), with the mode a plain ``mkdir`` would give."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def move_into(staged: Path, out: Path, names: Iterable[str]) -> None:
    """Update folder ``out`` from a finished ``staged`` one (made beside it, e.g. by
    :func:`new_temporary_dir`): each of ``names`` in ``staged`` replaces its namesake in
    ``out`` with one ``os.replace`` (a reader sees each file whole, old or new); a folder of
    ``names`` in ``out`` is removed even when ``staged`` has none (no stale leftovers);
    other files of ``out`` stay. A new ``out`` is ``staged`` renamed whole."""
    names = list(names)
    if not out.exists() and {p.name for p in staged.iterdir()} <= set(names):
        os.replace(staged, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = staged / name, out / name
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        if src.exists():
            os.replace(src, dst)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    with write_atomic(path, fsync=fsync) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any, *, fsync: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", fsync=fsync)
