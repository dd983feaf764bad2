"""The matching job (``d2 match``): mutual nearest neighbours of descriptors, pair by pair.

Matching one pair is a matrix product plus two argmax reductions (:mod:`d2cli.mnn`: in
tiles, exact, with the products in bf16 where the device runs bf16 fast and the decision
in fp32). The job reads each image's descriptors once while
later pairs need them (:class:`DescriptorCache`), reads ahead in a thread while the
matrix products run, and writes through the crash-safe :class:`H5Store`, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .device import pick_device
from .errors import D2Error, EmptyInput, IncompatibleFeatures, check_some_done
from .io.features import FeatureFile, MatchFile, colliding_names, matches_to_arrays, pair_collision, pair_key
from .io.h5store import H5Store
from .io.pairs import normalize_pairs, read_pairs
from .io.provenance import differences
from .jobs import ProgressFn, Stage, interruptible
from .matchers import DescriptorMatcher, make_matcher
from .mnn import matcher_precision
from .settings import MatchSettings
from .shard import Shard

Pair = tuple[str, str]

DEFAULT_CACHE_BYTES = 2 << 30

# --------------------------------------------------------------------------- reading
class DescriptorCache:
    """Descriptors as (N, D) float32 tensors (views of (D, N) ones), read from the file once
    while still needed.

    The whole access order is known before matching starts, so when the byte budget is
    exceeded the entry needed farthest in the future is dropped (Belady's rule: the fewest
    reads possible for this order; an LRU re-reads every image of a long exhaustive cycle),
    and an entry no later pair needs is never kept.
    """

    def __init__(self, sources: Sequence[FeatureFile], accesses: Sequence[tuple[int, str]],
                 max_bytes: int = DEFAULT_CACHE_BYTES, device: torch.device | None = None) -> None:
        self.sources = sources
        # on a GPU the entries live in device memory: each image crosses the bus once per
        # run, and the copy happens in the read-ahead thread, overlapping the products
        self.device = device
        self.accesses = list(accesses)
        self.max_bytes = max_bytes
        never = len(self.accesses)
        self.next_use = [never] * len(self.accesses)
        last: dict[tuple[int, str], int] = {}
        for t in range(len(self.accesses) - 1, -1, -1):
            self.next_use[t] = last.get(self.accesses[t], never)
            last[self.accesses[t]] = t
        self._never = never
        self._entries: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}
        self._heap: list[tuple[int, int, tuple[int, str]]] = []  # (-next use, tie, key)
        self._bytes = 0
        self._tie = 0
        self.reads = 0

    def _read(self, key: tuple[int, str]) -> torch.Tensor:
        src, name = key
        d = self.sources[src].descriptors(name, dtype=None)  # (D, N), as stored
        self.reads += 1
        if not d.dtype.isnative:  # a big-endian file: torch reads native byte order only
            d = d.astype(d.dtype.newbyteorder("="))
        # torch converts float16 with SIMD (numpy's astype: ~10x slower), and the (N, D)
        # tensor is a view of the (D, N) one: torch.mm takes transposed operands as they
        # are, so the ~2 ms transposed copy per image (a third of d2 match's reading) is
        # never made. Same products, bit for bit (tests/test_match.py).
        t = torch.from_numpy(d).float().T
        return t.to(self.device, non_blocking=True) if self.device is not None else t

    def get(self, t: int) -> torch.Tensor:
        """The descriptors of access number ``t``; call with t = 0, 1, 2, ... in order."""
        key = self.accesses[t]
        nxt = self.next_use[t]
        if key in self._entries:
            desc = self._entries.pop(key)[0]
            self._bytes -= desc.nbytes
        else:
            desc = self._read(key)
        if nxt < self._never:
            self._entries[key] = (desc, nxt)
            self._bytes += desc.nbytes
            self._tie += 1
            heapq.heappush(self._heap, (-nxt, self._tie, key))
            while self._bytes > self.max_bytes and self._heap:
                neg, _, k = heapq.heappop(self._heap)
                entry = self._entries.get(k)
                if entry is not None and entry[1] == -neg:  # else a stale heap record
                    del self._entries[k]
                    self._bytes -= entry[0].nbytes
        return desc


_END = object()


def _read_in_order(cache: DescriptorCache, count: int
                   ) -> Iterator[tuple[int, Any, Any, str | None]]:
    """Yield (k, desc0, desc1, error) for pairs 0..count-1, read when needed."""
    for k in range(count):
        try:
            yield k, cache.get(2 * k), cache.get(2 * k + 1), None
        except D2Error as e:
            yield k, None, None, str(e)


def _read_ahead(cache: DescriptorCache, count: int, depth: int,
                stop: threading.Event) -> Iterator[tuple[int, Any, Any, str | None]]:
    """Yield (k, desc0, desc1, error) for pairs 0..count-1, read by a thread ``depth`` ahead.

    HDF5 reads and float conversion then overlap the matrix products of earlier pairs
    (on a GPU; on the CPU the products already use every core, see :func:`_match_pairs`).
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for k in range(count):
                try:
                    item = (k, cache.get(2 * k), cache.get(2 * k + 1), None)
                except D2Error as e:
                    item = (k, None, None, str(e))
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # a bug: hand it to the main thread
            put(e)

    thread = threading.Thread(target=work, name="d2-match-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- the job
@dataclass
class MatchResult:
    out: Path
    device: str = "cpu"
    precision: str = "fp32"  # of the similarity products (the decision is fp32's)
    total: int = 0
    matched: list[Pair] = field(default_factory=list)
    skipped: list[Pair] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "name0 name1" -> reason
    num_matches: list[int] = field(default_factory=list)
    descriptor_reads: int = 0
    images: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        n = self.num_matches
        return {
            "out": str(self.out), "device": self.device, "precision": self.precision,
            "pairs": self.total,
            "matched": len(self.matched), "skipped": len(self.skipped), "failed": self.failed,
            "matches_mean": float(np.mean(n)) if n else 0.0,
            "matches_min": int(min(n)) if n else 0, "matches_max": int(max(n)) if n else 0,
            "images": self.images, "descriptor_reads": self.descriptor_reads,
            "seconds": round(self.seconds, 3),
            "pairs_per_second": round(len(self.matched) / self.seconds, 3) if self.seconds else 0.0,
            "interrupted": self.interrupted,
        }


def _check_existing(existing: dict[str, Any], attrs: dict[str, Any], out: Path) -> list[str]:
    """Why the matches already in ``out`` must not be mixed with this run's (empty: fine)."""
    diff = [f"{d} (features)" for d in differences(existing.get("features") or {},
                                                  attrs["features"], both_recorded=True)]
    old_ref = existing.get("features_ref") or existing.get("features") or {}
    new_ref = attrs.get("features_ref") or attrs["features"]
    diff += [f"{d} (reference features)"
             for d in differences(old_ref, new_ref, both_recorded=True)]
    if isinstance(existing.get("settings"), dict):  # a foreign file records no settings
        diff += differences(existing, attrs, keys=("settings",))
    return diff


def match(
    pairs: str | os.PathLike | Sequence[Pair],
    features: str | os.PathLike = "feats.h5",
    out: str | os.PathLike = "matches.h5",
    *,
    features_ref: str | os.PathLike | None = None,
    settings: MatchSettings | None = None,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    force: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    tile: tuple[int, int] | None = None,
    commit_every: int = 32,
    shard: Shard | None = None,
    progress: ProgressFn | None = None,
) -> MatchResult:
    """Match every pair of a pairs file (or list) into an hloc-layout matches file; resumable.

    ``name0`` is read from ``features``, ``name1`` from ``features_ref`` (default: the same
    file). Pairs already in ``out`` (either order) are skipped unless ``overwrite``. Features
    made with different models or settings, here or in an existing ``out``, are refused
    unless ``force``. A pair naming an image missing from its features file fails alone:
    see ``result.failed``. Finished pairs are committed ``commit_every`` at a time (and at
    least every 10 s). ``progress`` gets one event per pair (stage ``match``); Ctrl-C
    stops after the pair in flight and keeps what is finished (``result.interrupted``). With
    ``shard``, only that shard's pairs are matched, into the shard's part file (pairs already
    in ``out`` are skipped). ``precision``: of the similarity products; ``auto`` (bf16 where
    faster) and ``bf16`` give the matches of ``fp32`` (:mod:`d2cli.mnn`), so it is not
    recorded; ``result.precision`` says what ``auto`` meant here.
    """
    settings = settings or MatchSettings()
    matcher = make_matcher(settings)  # an unknown matcher fails before any file is opened
    dev = pick_device(device)
    out = Path(out)
    from_file = isinstance(pairs, (str, os.PathLike))
    pair_list = read_pairs(pairs) if from_file else normalize_pairs(pairs)
    if not pair_list:
        raise EmptyInput(f"no pairs in {pairs}" if from_file else "no pairs given")
    merged_done: set[str] = set()
    if shard is not None:
        pair_list = shard.select(pair_list, key=lambda p: " ".join(sorted(p)))  # order-free
        if out.exists() and not overwrite:
            with MatchFile(out) as mf:
                merged_done = set(mf.keys())
        out = shard.part_path(out)
    if features_ref is not None and Path(features_ref).resolve() == Path(features).resolve():
        features_ref = None  # one file: one cache entry per image
    with FeatureFile(features) as ff0, (
            FeatureFile(features_ref) if features_ref is not None else nullcontext(ff0)) as ff1:
        attrs = _output_attrs(ff0, ff1 if features_ref is not None else None, settings, force)
        result = MatchResult(out=out, device=str(dev), precision=matcher_precision(precision, dev),
                             total=len(pair_list))
        with H5Store(out, attrs=attrs, commit_every=commit_every, commit_seconds=10.0) as store:
            _check_output(store, attrs, out, overwrite, force)
            done = set() if overwrite else store.done() | merged_done
            todo, missing = _plan(pair_list, done, ff0, ff1, result)
            stage = Stage(progress, "match", unit="pairs")
            stage.start(len(todo) + len(missing))
            for p, reason in missing.items():
                _fail(result, p, reason, stage)
            ref = 0 if ff1 is ff0 else 1  # one cache entry per image when there is one file
            accesses = [(i, n) for a, b in todo for i, n in ((0, a), (ref, b))]
            cache = DescriptorCache([ff0, ff1], accesses, cache_bytes,
                                    device=dev if dev.type == "cuda" else None)
            result.images = len(set(accesses))
            t_match = time.perf_counter()
            try:
                _match_pairs(todo, cache, store, matcher, dev, tile, precision, result, stage)
            finally:
                result.descriptor_reads = cache.reads
                result.seconds = time.perf_counter() - t_match
    check_some_done(result, len(result.matched) + len(result.skipped), "pairs")
    return result


def _output_attrs(ff0: FeatureFile, ff1: FeatureFile | None, settings: MatchSettings,
                  force: bool) -> dict[str, Any]:
    """The matches file's provenance; refuses two features files made differently."""
    attrs: dict[str, Any] = {"d2cli_version": __version__, "features": ff0.attrs,
                             "settings": settings.as_dict()}
    if ff1 is not None:
        attrs["features_ref"] = ff1.attrs
        diff = differences(ff0.attrs, ff1.attrs, both_recorded=True, arrow=" vs ")
        if diff and not force:
            raise IncompatibleFeatures(
                f"{ff0.path} and {ff1.path} were made differently ({'; '.join(diff)}); "
                "use --force to match them anyway")
    return attrs


def _check_output(store: H5Store, attrs: dict[str, Any], out: Path, overwrite: bool,
                  force: bool) -> None:
    """Matches already in ``out`` of other features or settings: reset, keep, or refuse."""
    existing = store.existing_attrs()
    diff = _check_existing(existing, attrs, out) if existing is not None else []
    if diff and overwrite:
        store.reset()  # other features or settings: mixing is never right
    elif diff and not force:
        raise IncompatibleFeatures(
            f"{out} holds matches of other features or settings ({'; '.join(diff)}); "
            "use --overwrite to redo it, --force to add to it anyway, or another --out")


def _plan(pair_list: list[Pair], done: set[str], ff0: FeatureFile, ff1: FeatureFile,
          result: MatchResult) -> tuple[list[Pair], dict[Pair, str]]:
    """(pairs to match, pairs naming an image missing from its file -> why); done ones skipped."""
    todo: list[Pair] = []
    missing: dict[Pair, str] = {}
    collide = colliding_names({n for p in pair_list for n in p})
    for a, b in pair_list:
        if (why := pair_collision(a, b, collide)) is not None:
            missing[(a, b)] = why
        elif pair_key(a, b) in done or pair_key(b, a) in done:
            result.skipped.append((a, b))
        elif a not in ff0:
            missing[(a, b)] = f"pair {a} {b}: {a} is not in features file {ff0.path}"
        elif b not in ff1:
            missing[(a, b)] = f"pair {a} {b}: {b} is not in features file {ff1.path}"
        else:
            todo.append((a, b))
    return todo, missing


def _match_pairs(todo: list[Pair], cache: DescriptorCache, store: H5Store,
                 matcher: DescriptorMatcher, dev: torch.device, tile: tuple[int, int] | None,
                 precision: str, result: MatchResult, stage: Stage) -> None:
    """``matcher`` on each pair, descriptors read ahead in a thread; Ctrl-C stops
    after the pair in flight."""
    reader_done = threading.Event()
    # A reader thread pays off only where the products leave the CPU idle (a GPU): on the
    # CPU they already use every core, and the thread's reads and wake-ups take cores from
    # them (2,000 pairs of 1k keypoints, 2 cores: 3-12 % slower with the thread).
    reads = (_read_in_order(cache, len(todo)) if dev.type == "cpu"
             else _read_ahead(cache, len(todo), 2, reader_done))
    try:
        with interruptible() as stop:
            for k, d0, d1, error in stop.each(reads):
                a, b = todo[k]
                if error is None and d0.shape[1] != d1.shape[1]:
                    error = f"pair {a} {b}: descriptor sizes differ ({d0.shape[1]} vs {d1.shape[1]})"
                if error is not None:
                    _fail(result, (a, b), error, stage)
                    continue
                m, sc = matcher(d0.to(dev), d1.to(dev), tile=tile, precision=precision)
                store.add(pair_key(a, b), matches_to_arrays(m.numpy(), sc.numpy(),
                                                            d0.shape[0], d1.shape[0]))
                result.matched.append((a, b))
                result.num_matches.append(len(m))
                stage.advance(f"{a} {b}", matches=len(m))
        result.interrupted = stop.requested
    finally:
        reader_done.set()


def _fail(result: MatchResult, pair: Pair, error: str, stage: Stage) -> None:
    result.failed[f"{pair[0]} {pair[1]}"] = error
    stage.advance(f"{pair[0]} {pair[1]}", error=error)
