"""Pairs files: one ``name0 name1`` per line (hloc / COLMAP ``matches_importer`` format).

Everything here is sized for exhaustive pairs of thousands of images (millions of
pairs): files are read and written a line at a time, duplicates are found on integer
keys (names interned to ids), never on per-pair Python sets of strings.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np

from ..errors import BadFile, EmptyInput, InputNotFound, UsageError
from .atomic import write_atomic

WRITE_CHUNK = 1 << 13  # lines joined per write (~300 kB): few calls, little memory


def check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name):
        raise UsageError(f"image name {name!r} contains whitespace; pairs files cannot hold it")
    return name


class _Interner:
    """Names to dense integer ids (first seen: 0, 1, ...), each name stored once."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def id(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = len(self.names)
            self.names.append(name)
        return i


def _first_unordered(a: np.ndarray, b: np.ndarray, num_names: int) -> np.ndarray:
    """Rows to keep of (P,) name ids ``a``, ``b``: not self pairs, and of each unordered
    pair only its first row; (K,) increasing row indices."""
    rows = np.flatnonzero(a != b)
    lo, hi = np.minimum(a[rows], b[rows]), np.maximum(a[rows], b[rows])
    key = lo.astype(np.int64) * max(num_names, 1) + hi  # int64: up to 3e9 names
    _, first = np.unique(key, return_index=True)  # first occurrence of each key
    return rows[np.sort(first)]


def normalize_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self pairs and duplicate unordered pairs, keeping the first order seen.

    Memory: two int32 per pair while reading, sorting int64 keys, then the list returned
    (whose tuples share one string object per name).
    """
    names = _Interner()
    a_ids, b_ids = array("i"), array("i")  # C int32: 8 bytes a pair
    name_id = names.id
    for a, b in pairs:
        a_ids.append(name_id(a))
        b_ids.append(name_id(b))
    a_np = np.frombuffer(a_ids, dtype=np.intc) if a_ids else np.zeros(0, np.intc)
    b_np = np.frombuffer(b_ids, dtype=np.intc) if b_ids else np.zeros(0, np.intc)
    keep = _first_unordered(a_np, b_np, len(names.names))
    n = names.names
    out: list[tuple[str, str]] = []
    for lo in range(0, len(keep), WRITE_CHUNK):  # Python ints of one chunk at a time
        rows = keep[lo:lo + WRITE_CHUNK]
        out.extend((n[i], n[j]) for i, j in zip(a_np[rows].tolist(), b_np[rows].tolist(),
                                                 strict=True))
    return out


def iter_unique_pairs(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """:func:`normalize_pairs` as a stream: the same pairs in the same order, yielded as
    they come (one Python int per distinct pair remembered, not the pairs)."""
    names = _Interner()
    name_id = names.id
    seen: set[int] = set()
    for a, b in pairs:
        i, j = name_id(a), name_id(b)
        if i == j:
            continue
        key = (i << 32) | j if i < j else (j << 32) | i
        if key in seen:
            continue
        seen.add(key)
        yield a, b


def _equal_count(a: Iterable[tuple[str, str]], b: Iterable[tuple[str, str]]) -> int | None:
    """The length of two equal sequences, consumed in step; None at the first difference."""
    end = object()
    n = 0
    for x, y in zip_longest(a, b, fillvalue=end):
        if x != y:
            return None
        n += 1
    return n


def pairs_file_equals(path: str | os.PathLike,
                      expected: Callable[[], Iterable[tuple[str, str]]]) -> int | None:
    """The number of pairs when ``read_pairs(path) == list(expected())``, else None.

    ``expected``: gives the pairs, without self or duplicate pairs, afresh at each call.
    Streamed, neither side held: the lines as they are first (what d2cli writes has no
    self or duplicate line); only if they differ, once more with the duplicates dropped
    (their keys remembered, up to the first difference).
    """
    n = _equal_count(expected(), iter_pair_lines(path))
    if n is None:
        n = _equal_count(expected(), iter_unique_pairs(iter_pair_lines(path)))
    return n


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a pairs file without self pairs and duplicate unordered pairs."""
    return normalize_pairs(iter_pair_lines(path))


def read_pair_lines(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The pairs as listed; blank lines and ``#`` comments are ignored, and so are numeric
    columns after the names (scores); a third name is refused."""
    return list(iter_pair_lines(path))


def iter_pair_lines(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """:func:`read_pair_lines` a line at a time (a missing file is refused at once)."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: pairs file not found")
    return _pair_lines(p)


def text_lines(p: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, a line at a time; binary or UTF-16 files
    (NUL bytes, invalid UTF-8) are refused naming the line. ``what``: "pairs file", ..."""
    lineno = 0
    try:
        with p.open(encoding="utf-8") as f:
            for raw in f:
                if "\x00" in raw:
                    raise BadFile(f"{p}:{lineno + 1}: not a text {what} (NUL bytes: binary "
                                  "or UTF-16?)")
                # splitlines: the same line breaks (and line numbers) as reading the whole text
                for line in raw.splitlines():
                    lineno += 1
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise BadFile(f"{p}:{lineno + 1}: not a UTF-8 text {what} (byte {e.start} of the "
                      "line: binary or UTF-16?)") from None


def read_name_list(path: str | os.PathLike, what: str = "name list") -> list[str]:
    """One name per line (``--image-list``, query and reference lists); surrounding blanks,
    blank lines and ``#`` comments ignored, duplicates dropped, file order kept."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: {what} not found")
    names = (line.strip() for _, line in text_lines(p, what))
    return list(dict.fromkeys(n for n in names if n and not n.startswith("#")))


def _pair_lines(p: Path) -> Iterator[tuple[str, str]]:
    for lineno, line in text_lines(p, "pairs file"):
        pair = _pair_of_line(p, lineno, line)
        if pair is not None:
            yield pair


def _pair_of_line(p: Path, lineno: int, line: str) -> tuple[str, str] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split()
    if len(parts) < 2:
        raise BadFile(f"{p}:{lineno}: expected 'name0 name1', got {line!r}")
    if len(parts) > 2 and any(not _is_number(x) for x in parts[2:]):
        # a third name is a mistake, not a column
        raise BadFile(f"{p}:{lineno}: expected 'name0 name1' (numeric columns after "
                      f"them are ignored), got {line!r}")
    return parts[0], parts[1]


def write_pairs(path: str | os.PathLike, pairs: Iterable[tuple[str, str]], *,
                unique: bool = False) -> int:
    """Write a pairs file atomically; returns the number of pairs written.

    Self and duplicate unordered pairs are dropped (first order kept); ``unique``: the
    caller guarantees there are none (exhaustive pairs), and the pairs stream through
    without any per-pair memory.
    """
    return write_pairs_counted(path, pairs, unique=unique)[0]


def write_pairs_counted(path: str | os.PathLike, pairs: Iterable[tuple[str, str]], *,
                        unique: bool = False, empty: str | None = None,
                        fsync: bool = False) -> tuple[int, int]:
    """:func:`write_pairs`, returning (pairs, distinct images) written.

    The pairs are consumed lazily and written a chunk of lines at a time into the
    temporary file of :func:`~d2cli.io.atomic.write_atomic`, renamed over ``path`` only
    when all are written: a name with whitespace leaves ``path`` as it was (no file, or
    the old one). ``empty``: no pair at all is an :class:`~d2cli.errors.EmptyInput` with
    this message, raised before anything is created; else it writes an empty file.
    """
    stream = iter(pairs) if unique else iter_unique_pairs(pairs)
    first = next(stream, None)
    if first is None and empty is not None:
        raise EmptyInput(empty)  # before anything is created (as for a list)
    if first is not None:
        stream = chain([first], stream)
    checked: set[str] = set()  # names already checked: each name once, not per pair
    count = 0
    with write_atomic(path, fsync=fsync) as tmp, tmp.open("w") as f:
        chunk: list[str] = []
        for a, b in stream:
            if a not in checked:
                checked.add(check_name(a))
            if b not in checked:
                checked.add(check_name(b))
            chunk.append(f"{a} {b}\n")
            if len(chunk) == WRITE_CHUNK:
                f.write("".join(chunk))
                count += len(chunk)
                chunk.clear()
        f.write("".join(chunk))
        count += len(chunk)
    return count, len(checked)
