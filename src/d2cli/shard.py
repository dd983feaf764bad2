"""Scale-out: deterministic shards, part files, merging, and torchrun ranks.

A shard ``i/n`` (0 <= i < n) takes the items whose name hashes to i modulo n: disjoint,
covering, independent of the order of the input list and stable when items are added
(an item never moves to another shard). Each shard writes its own part file next to the
output (``feats.h5`` -> ``feats.shard0-of-4.h5``), resumable like any output, and
``merge`` folds the parts into one file, refusing parts made with other settings.

Under ``torchrun`` (RANK / WORLD_SIZE in the environment), each rank is a shard;
rank 0 merges after a barrier.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from .errors import IncompatibleFeatures, UsageError
from .io import h5safe
from .io.h5store import H5Store, h5_file, list_entries, open_h5, read_attrs
from .io.provenance import differences

T = TypeVar("T")

# attributes that must agree between parts (the rest, e.g. versions, may differ)
MERGE_KEYS = ("model_sha256", "settings", "features", "features_ref")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        h = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big")
        return h % self.count == self.index

    def select(self, items: Iterable[T], key: Callable[[T], str]) -> list[T]:
        return [it for it in items if self.owns(key(it))]

    def part_path(self, out: str | os.PathLike) -> Path:
        p = Path(out)
        return p.with_name(f"{p.stem}.shard{self.index}-of-{self.count}{p.suffix or '.h5'}")


def parse_shard(text: str | None) -> Shard | None:
    """'i/n' -> Shard, None -> None (or the torchrun rank when launched by torchrun)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise UsageError(f"--shard expects i/n with 0 <= i < n, got {text!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


@dataclass
class MergeResult:
    out: Path
    parts: list[Path]
    entries: int = 0
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "parts": [str(p) for p in self.parts],
                "entries": self.entries, "identical_duplicates": self.duplicates}


def _same_entry(a: h5py.Group, b: h5py.Group) -> bool:
    if set(a) != set(b):
        return False
    return all(np.array_equal(h5safe.require(a, k, kind="fiub", finite=False),
                              h5safe.require(b, k, kind="fiub", finite=False)) for k in a)


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *,
          remove_parts: bool = False) -> MergeResult:
    """Merge feature or match part files into ``out`` (crash-safe, atomic).

    Refuses parts whose models/settings differ, and names seen twice with different data.
    ``remove_parts``: delete the part files once ``out`` holds them.
    """
    if not parts:
        raise UsageError("nothing to merge: give part files")
    paths = [Path(p) for p in parts]
    attrs = []
    for p in paths:
        with open_h5(p, what="part file") as f:
            attrs.append(read_attrs(f))
    for p, a in zip(paths[1:], attrs[1:], strict=True):
        diff = differences(attrs[0], a, keys=MERGE_KEYS)
        if diff:
            raise IncompatibleFeatures(
                f"{p} was made differently from {paths[0]} ({'; '.join(diff)}); refusing to merge")
    result = MergeResult(Path(out), paths)
    seen: dict[str, Path] = {}
    with H5Store(out, attrs=attrs[0]) as store:
        existing = store.existing_attrs()
        diff = [] if existing is None else differences(existing, attrs[0], keys=MERGE_KEYS)
        if diff:
            raise IncompatibleFeatures(
                f"{out} already holds data made with other settings ({'; '.join(diff)})")
        for p in paths:
            with h5_file(p, "r") as f:
                for name in list_entries(f):
                    if name in seen:
                        with h5_file(seen[name], "r") as g:
                            if not _same_entry(f[name], g[name]):
                                raise IncompatibleFeatures(
                                    f"{name} is in {seen[name]} and {p} with different data")
                        result.duplicates += 1
                        continue
                    seen[name] = p
                    group = f[name]  # read through io/h5safe: nothing from other files
                    store.add(name, {k: h5safe.require(group, k, kind="fiub", finite=False)
                                     for k in group})
                    result.entries += 1
    if remove_parts:
        for p in paths:
            if p.resolve() != Path(out).resolve():
                p.unlink()
    return result


# ------------------------------------------------------------------ torchrun integration
def torchrun_shard() -> Shard | None:
    """The shard of this process when launched by torchrun with several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Shard(int(os.environ["RANK"]), world)


class DistributedRun:
    """Process group for one command under torchrun: barrier, then rank 0 merges.

    gloo on CPU, nccl when the device is CUDA; a long timeout because shards of a big
    job can take hours.
    """

    def __init__(self, device: str = "auto") -> None:
        import torch
        import torch.distributed as dist

        self.dist = dist
        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        self.device = f"cuda:{self.local_rank}" if use_cuda else "cpu"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo",
                                    timeout=timedelta(hours=float(os.environ.get(
                                        "D2CLI_DIST_TIMEOUT_H", "48"))))

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


@dataclass
class ShardedRun:
    """What one process of a sharded job does: its shard (None: all), device and rank."""

    shard: Shard | None
    device: str
    rank: int = 0


@contextmanager
def sharded(out: str | os.PathLike, shard: str | Shard | None = None,
            device: str = "auto") -> Iterator[ShardedRun]:
    """``with sharded(out, "i/n" or None) as run: extract(..., shard=run.shard, device=run.device)``.

    An explicit shard runs alone (combine the parts with :func:`merge`). Under torchrun
    with several ranks and no explicit shard, each rank takes its own shard and, once all
    are done, rank 0 merges the parts into ``out`` and removes them.
    """
    explicit = parse_shard(shard) if isinstance(shard, str) else shard
    auto = torchrun_shard()
    if explicit is not None or auto is None:
        yield ShardedRun(explicit, device)
        return
    dist = DistributedRun(device)
    try:
        yield ShardedRun(auto, dist.device, dist.rank)
        dist.barrier()
        if dist.rank == 0:
            parts = [Shard(i, auto.count).part_path(out) for i in range(auto.count)]
            merge(parts, out)
            for p in parts:
                p.unlink()
        dist.barrier()
    finally:
        dist.close()
