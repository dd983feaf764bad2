"""Pairs files: one ``name0 name1`` per line (hloc / COLMAP ``matches_importer`` format)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import BadFile, InputNotFound, UsageError
from .atomic import write_text_atomic


def check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name):
        raise UsageError(f"image name {name!r} contains whitespace; pairs files cannot hold it")
    return name


def normalize_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self pairs and duplicate unordered pairs, keeping the first order seen."""
    seen: set[frozenset[str]] = set()
    out: list[tuple[str, str]] = []
    for a, b in pairs:
        key = frozenset((a, b))
        if a == b or key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a pairs file without self pairs and duplicate unordered pairs."""
    return normalize_pairs(read_pair_lines(path))


def read_pair_lines(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The pairs as listed; blank lines and ``#`` comments are ignored, and so are numeric
    columns after the names (scores); a third name is refused."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: pairs file not found")
    pairs = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise BadFile(f"{p}:{lineno}: expected 'name0 name1', got {line!r}")
        if any(not _is_number(x) for x in parts[2:]):  # a third name is a mistake, not a column
            raise BadFile(f"{p}:{lineno}: expected 'name0 name1' (numeric columns after them "
                          f"are ignored), got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Iterable[tuple[str, str]]) -> int:
    """Write a pairs file atomically; returns the number of pairs written."""
    pairs = normalize_pairs(pairs)
    for a, b in pairs:
        check_name(a)
        check_name(b)
    write_text_atomic(path, "".join(f"{a} {b}\n" for a, b in pairs))
    return len(pairs)
