"""Pair lists (``d2 pairs``): which images to match, written as a pairs file.

Every function returns a list of ``(name0, name1)`` with names exactly as keyed in the
features file (or the COLMAP model); :func:`save_pairs` drops self and duplicate
unordered pairs, refuses names with whitespace and writes the file atomically.
Exhaustive pairs (N^2 / 2 of them) also come as a stream, :func:`iter_pairs_exhaustive`,
which :func:`save_pairs` writes a chunk at a time: memory stays flat in the pair count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadFile, EmptyInput, InputNotFound, MissingName, UsageError
from .io import h5safe
from .io.colmap_model import read_model
from .io.features import FeatureFile
from .io.pairs import iter_unique_pairs, normalize_pairs, read_name_list, write_pairs_counted
from .settings import NUM_MATCHED, SEQUENTIAL_OVERLAP

Pair = tuple[str, str]


@dataclass
class PairsResult:
    out: Path
    method: str
    pairs: int
    images: int

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "method": self.method, "pairs": self.pairs,
                "images": self.images}


# --------------------------------------------------------------------------- names
def image_names(features: str | os.PathLike | None = "feats.h5",
                image_list: str | os.PathLike | None = None) -> list[str]:
    """Names from an image list if given, else the images of a features file (file order)."""
    if image_list is not None:
        names = read_name_list(image_list)
        where = str(image_list)
    else:
        if features is None:
            raise UsageError("give a features file or an image list")
        with FeatureFile(features) as ff:
            names = list(ff.names)
        where = str(features)
    if not names:
        raise EmptyInput(f"{where}: no image names")
    return names


def select_names(
    names: Sequence[str], prefix: str | None = None,
    list_file: str | os.PathLike | None = None, what: str = "query",
) -> list[str] | None:
    """The names matching a prefix and/or listed in a file (in ``names`` order); None if neither.

    A listed name that is not among ``names`` is an error: a typo would silently drop pairs.
    """
    if prefix is None and list_file is None:
        return None
    chosen = list(names)
    if list_file is not None:
        listed = read_name_list(list_file)
        known = set(names)
        missing = [n for n in listed if n not in known]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MissingName(f"{missing[0]}{more}: in --{what}-list {list_file} but not among "
                              "the image names")
        wanted = set(listed)
        chosen = [n for n in chosen if n in wanted]
    if prefix is not None:
        chosen = [n for n in chosen if n.startswith(prefix)]
    if not chosen:
        rule = " and ".join(x for x in (
            f"prefix {prefix!r}" if prefix is not None else "",
            f"list {list_file}" if list_file is not None else "") if x)
        raise EmptyInput(f"no {what} image matches {rule}")
    return chosen


# --------------------------------------------------------------------------- strategies
def pairs_exhaustive(names: Sequence[str], queries: Sequence[str] | None = None,
                     refs: Sequence[str] | None = None) -> list[Pair]:
    """All unordered pairs of ``names``; or every query with every reference.

    With only one of ``queries``/``refs`` given, the other side is the rest of ``names``
    (e.g. ``--query-prefix query/`` pairs each query with every non-query image).
    The list of :func:`iter_pairs_exhaustive`.
    """
    return list(iter_pairs_exhaustive(names, queries, refs))


def iter_pairs_exhaustive(names: Sequence[str], queries: Sequence[str] | None = None,
                          refs: Sequence[str] | None = None) -> Iterator[Pair]:
    """:func:`pairs_exhaustive` one pair at a time, without self or duplicate unordered
    pairs by construction (nothing to remember): memory O(names), not O(pairs).

    All pairs: ``names[i]`` with every later name. Queries x references: each query with
    each reference in their orders, less itself and less the pairs already given the
    other way round (an earlier query that is also a reference): the pairs, and their
    order, that dropping the duplicates of the full product keeps.
    """
    if queries is None and refs is None:
        unique = list(dict.fromkeys(names))
        for i, a in enumerate(unique):
            rest = unique[i + 1:]
            yield from zip(repeat(a, len(rest)), rest, strict=True)
        return
    q_side, r_side = _complete_sides(names, queries, refs)
    q_side, r_side = list(dict.fromkeys(q_side)), list(dict.fromkeys(r_side))
    q_pos = {q: k for k, q in enumerate(q_side)}
    r_set = set(r_side)
    for k, a in enumerate(q_side):
        # a query that is also a reference: (a, b) with b a query up to a came as (b, a)
        row = [b for b in r_side if q_pos.get(b, k + 1) > k] if a in r_set else r_side
        yield from zip(repeat(a, len(row)), row, strict=True)


def _complete_sides(names: Sequence[str], queries: Sequence[str] | None,
                    refs: Sequence[str] | None) -> tuple[Sequence[str], Sequence[str]]:
    """Queries and references; a missing side is the rest of ``names``, both missing: all."""
    if queries is None and refs is None:
        return list(names), list(names)
    if queries is None:
        r = set(refs or ())
        queries = [n for n in names if n not in r]
    if refs is None:
        q = set(queries)
        refs = [n for n in names if n not in q]
    return queries, refs


def pairs_sequential(names: Sequence[str], overlap: int) -> list[Pair]:
    """Each image with the next ``overlap`` images in name order (video, ordered captures)."""
    if overlap < 1:
        raise UsageError("overlap must be >= 1")
    ordered = sorted(names)
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:i + 1 + overlap]]


def _load_model(model_dir: str | os.PathLike) -> Any:
    return read_model(model_dir)


def _best_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores, best first; ties by lower index."""
    js = np.flatnonzero(np.isfinite(scores))
    if len(js) > 4 * k:  # keep what reaches the k-th best (ties included): O(N), not a sort
        v = scores[js]
        js = js[v >= np.partition(v, len(v) - k)[len(v) - k]]
    return js[np.argsort(-scores[js], kind="stable")][:k]


def pairs_from_model(model_dir: str | os.PathLike, num_matched: int) -> list[Pair]:
    """Covisibility: each registered image with the ``num_matched`` images sharing most 3D points.

    The count for (a, b) sums, over the 3D points both observe, the products of their
    observation counts (as hloc's ``pairs_from_covisibility``); images sharing no point are
    never paired.
    """
    if num_matched < 1:
        raise UsageError("num-matched must be >= 1")
    rec = _load_model(model_dir)
    ids = sorted(rec.reg_image_ids())
    if not ids:
        raise EmptyInput(f"{model_dir}: the model has no registered image")
    row = {iid: r for r, iid in enumerate(ids)}
    # observations as (point, image row), then every ordered pair of observations of a point:
    # sparse, so memory grows with the tracks, not with images squared
    obs_point, obs_image = [], []
    for p, point in enumerate(rec.points3D.values()):
        for e in point.track.elements:
            if e.image_id in row:
                obs_point.append(p)
                obs_image.append(row[e.image_id])
    n = len(ids)
    names = [rec.image(i).name for i in ids]
    pairs: list[Pair] = []
    if obs_point:
        pt = np.asarray(obs_point, np.int64)
        im = np.asarray(obs_image, np.int64)
        order = np.argsort(pt, kind="stable")
        pt, im = pt[order], im[order]
        starts = np.flatnonzero(np.r_[True, pt[1:] != pt[:-1]])
        lengths = np.diff(np.r_[starts, len(pt)])
        length_of = np.repeat(lengths, lengths)  # track length of each observation
        start_of = np.repeat(starts, lengths)  # where its track starts
        src = np.repeat(np.arange(len(pt)), length_of)
        offset = np.arange(len(src)) - np.repeat(np.cumsum(length_of) - length_of, length_of)
        dst = np.repeat(start_of, length_of) + offset
        a, b = im[src], im[dst]
        keep = a != b
        keys, cnt = np.unique(a[keep] * n + b[keep], return_counts=True)  # sorted by a
        rows = keys // n
        bounds = np.searchsorted(rows, np.arange(n + 1))
        for i in range(n):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            score = np.full(n, -np.inf)
            score[keys[lo:hi] % n] = cnt[lo:hi]
            pairs.extend((names[i], names[int(j)]) for j in _best_k(score, num_matched))
    return normalize_pairs(pairs)


def pairs_from_poses(model_dir: str | os.PathLike, num_matched: int,
                     max_angle: float | None = 30.0) -> list[Pair]:
    """Each posed image with its ``num_matched`` nearest camera centres (as hloc).

    ``max_angle`` (degrees): only cameras whose viewing directions differ by less are
    candidates (the angle between principal axes, so a roll about the axis does not count);
    ``None`` disables it. Ties go to the image with the lower id.
    """
    if num_matched < 1:
        raise UsageError("num-matched must be >= 1")
    rec = _load_model(model_dir)
    images = [rec.image(i) for i in sorted(rec.images.keys())]
    images = [im for im in images if im.has_pose]
    if not images:
        raise EmptyInput(f"{model_dir}: the model has no image with a pose")
    centres = np.stack([im.projection_center() for im in images])  # (N, 3)
    axes = np.stack([im.viewing_direction() for im in images])  # (N, 3) unit
    names = [im.name for im in images]
    pairs = []
    for i in range(len(images)):  # one row at a time: memory O(N), not O(N^2)
        score = -np.linalg.norm(centres - centres[i], axis=1)
        score[i] = -np.inf
        if max_angle is not None:
            angle = np.rad2deg(np.arccos(np.clip(axes @ axes[i], -1.0, 1.0)))
            score[angle >= max_angle] = -np.inf
        pairs.extend((names[i], names[int(j)]) for j in _best_k(score, num_matched))
    return normalize_pairs(pairs)


def read_global_descriptors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Names and (N, D) float32 descriptors of a global-descriptor file (hloc layout:
    ``<name>/global_descriptor`` (D,), as written by hloc's NetVLAD / OpenIBL / DIR)."""
    from .io.h5store import list_entries, open_h5

    p = Path(path)
    with open_h5(p, what="global descriptors file") as h5:
        names = list_entries(h5, holding="global_descriptor")
        if not names:
            raise EmptyInput(f"{p}: no <name>/global_descriptor datasets (hloc layout)")
        try:
            desc = [np.asarray(h5safe.require(h5[n], "global_descriptor"), np.float32).ravel()
                    for n in names]
        except (OSError, ValueError) as e:
            raise BadFile(f"{p}: unreadable global descriptor ({e})") from None
    dims = {d.size for d in desc}
    if len(dims) != 1:
        raise BadFile(f"{p}: global descriptors of different lengths {sorted(dims)}")
    return names, np.stack(desc)


def read_feature_global_descriptors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Names and (N, D) float32 global descriptors of a features file (every image's
    ``<name>/global_descriptor``, written by ``d2 extract`` or ``d2 global``)."""
    from .retrieval import describe_missing

    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: features file not found")
    with FeatureFile(p) as ff:
        names, have = ff.names, ff.global_names
    if not names:
        raise EmptyInput(f"{p}: no images with keypoints")
    missing = [n for n in names if n not in have]
    if missing:
        raise MissingName(describe_missing(p, missing))
    return read_global_descriptors(p)


def pairs_from_retrieval(names: Sequence[str], descriptors: np.ndarray, num_matched: int,
                         queries: Sequence[str] | None = None, refs: Sequence[str] | None = None,
                         min_score: float = 0.0, whiten: bool = False) -> list[Pair]:
    """Each query with the ``num_matched`` references of most similar global descriptor.

    Similarity: dot product of the L2-normalised descriptors (as hloc's
    ``pairs_from_retrieval``); an image is never its own match, references scoring below
    ``min_score`` are not paired, ties go to the earlier reference. Queries and references
    default as in :func:`pairs_exhaustive` (neither given: every image is both).
    ``whiten``: first whiten all descriptors with a PCA whitening learned from the
    references' (:func:`d2cli.retrieval.whiten`). Memory: the descriptors plus one block
    of 1024 x references scores, whatever the number of images.
    """
    if num_matched < 1:
        raise UsageError("num-matched must be >= 1")
    index = {n: i for i, n in enumerate(names)}
    queries, refs = _complete_sides(names, queries, refs)
    if not queries or not refs:
        raise EmptyInput("no query or no reference image to pair")
    qi = np.array([index[n] for n in queries])
    ri = np.array([index[n] for n in refs])
    if whiten:
        from .retrieval import whiten as whitened

        unit = whitened(descriptors, learn_from=descriptors[ri])
    else:
        norm = np.linalg.norm(descriptors, axis=1, keepdims=True)
        unit = np.divide(descriptors, norm, out=np.zeros_like(descriptors), where=norm > 0)
    db = np.ascontiguousarray(unit[ri].T)
    pairs: list[Pair] = []
    for start in range(0, len(qi), 1024):  # bounded memory: 1024 x references scores at a time
        block = qi[start:start + 1024]
        scores = unit[block] @ db
        scores[block[:, None] == ri[None, :]] = -np.inf  # not with itself
        scores[scores < min_score] = -np.inf
        for row, i in enumerate(block):
            pairs.extend((names[i], refs[int(j)]) for j in _best_k(scores[row], num_matched))
    return normalize_pairs(pairs)


# --------------------------------------------------------------------------- strategies
PAIR_METHODS = ("auto", "exhaustive", "sequential", "retrieval", "file")
# ``auto`` matches every pair up to this many images, retrieval pairs above: at 100 images
# exhaustive is 4,950 pairs (a few minutes on a 2-core CPU, verification included) and
# retrieval with K = 20 up to 2,000; from there on the N^2 / 2 pairs soon take hours.
AUTO_RETRIEVAL_ABOVE = 100


@dataclass(frozen=True)
class PairStrategy:
    """How a pipeline (``d2 sfm``) chooses the pairs among the images that have features.

    ``auto`` (default): ``exhaustive`` up to :data:`AUTO_RETRIEVAL_ABOVE` images, else
    ``retrieval``. ``exhaustive``: all pairs (N^2/2: fine up to a few hundred images);
    ``sequential``: each image with the next ``overlap`` in name order (video);
    ``retrieval``: each image with its ``num_matched`` nearest by global descriptor, from
    the file ``descriptors`` (hloc layout, e.g. NetVLAD) or, without one, those of the
    features file itself (:mod:`d2cli.retrieval`); ``file``: the pairs of ``file``, as given.
    """

    method: str = "auto"
    overlap: int = SEQUENTIAL_OVERLAP
    descriptors: str | None = None
    num_matched: int = NUM_MATCHED
    file: str | None = None
    whiten: bool = False

    def __post_init__(self) -> None:
        if self.method not in PAIR_METHODS:
            raise UsageError(f"unknown pair method {self.method!r} ({', '.join(PAIR_METHODS)})")
        if self.method == "file" and self.file is None:
            raise UsageError("pairs from a file need the file (--pairs FILE)")

    def resolved(self, count: int) -> PairStrategy:
        """``auto`` made concrete for ``count`` images (the others as they are)."""
        if self.method != "auto":
            return self
        return replace(self, method="retrieval" if count > AUTO_RETRIEVAL_ABOVE else "exhaustive")

    def make(self, names: Sequence[str], features: str | os.PathLike | None = None
             ) -> list[Pair]:
        """The pairs of ``names`` (images with features; pairs naming others are dropped),
        without self or duplicate pairs: the list of :meth:`pairs`. ``features``: the
        features file, whose global descriptors ``retrieval`` uses without ``descriptors``."""
        return list(self.pairs(names, features))

    def pairs(self, names: Sequence[str], features: str | os.PathLike | None = None
              ) -> Iterator[Pair]:
        """:meth:`make` as a stream; exhaustive pairs are generated as they are consumed."""
        s = self.resolved(len(names))
        if s.method == "exhaustive":
            return iter_pairs_exhaustive(sorted(names))
        return iter(s._listed(names, features))

    def source(self, names: Sequence[str], features: str | os.PathLike | None = None
               ) -> Callable[[], Iterator[Pair]]:
        """A function giving :meth:`pairs` afresh at each call, for readers that need them
        twice: exhaustive pairs are generated again (never held), the others (N x K) are
        computed once, here."""
        s = self.resolved(len(names))
        if s.method == "exhaustive":
            ordered = sorted(names)
            return lambda: iter_pairs_exhaustive(ordered)
        listed = s._listed(names, features)
        return lambda: iter(listed)

    def _listed(self, names: Sequence[str], features: str | os.PathLike | None) -> list[Pair]:
        """The pairs of the methods that pick a few per image (N x K: a list is small)."""
        if self.method == "sequential":
            return list(iter_unique_pairs(pairs_sequential(sorted(names), self.overlap)))
        if self.method == "retrieval":
            source = self.descriptors or features
            if source is None:
                raise UsageError("retrieval pairs need global descriptors: a features file "
                                 "or a global-descriptor file (--descriptors)")
            all_names, desc = (read_global_descriptors(source) if self.descriptors
                               else read_feature_global_descriptors(source))
            have = set(names)
            keep = [i for i, n in enumerate(all_names) if n in have]
            if len(keep) < len(have):
                missing = sorted(have - set(all_names))
                raise MissingName(f"{source}: no global descriptor for {len(missing)} "
                                  f"image(s), e.g. {missing[0]}")
            return pairs_from_retrieval([all_names[i] for i in keep], desc[keep],
                                        self.num_matched, whiten=self.whiten)
        from .io.pairs import read_pairs

        assert self.method == "file" and self.file is not None  # exhaustive: see pairs()
        have = set(names)
        return [(a, b) for a, b in read_pairs(self.file) if a in have and b in have]

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method}
        if self.method == "sequential":
            d["overlap"] = self.overlap
        elif self.method == "retrieval":
            d.update(descriptors=self.descriptors or "features file",
                     num_matched=self.num_matched, whiten=self.whiten)
        elif self.method == "file":
            d["file"] = self.file
        return d


# --------------------------------------------------------------------------- output
def save_pairs(pairs: Iterable[Pair], out: str | os.PathLike = "pairs.txt",
               method: str = "", *, unique: bool = False) -> PairsResult:
    """Write a pairs file (atomic); an empty list is an error, not an empty file.

    ``pairs`` may be a stream (:func:`iter_pairs_exhaustive`), written as it comes;
    ``unique``: it holds no self or duplicate pair (no per-pair memory spent finding them).
    """
    n, images = write_pairs_counted(out, pairs, unique=unique,
                                    empty=f"no pairs to write to {out} ({method or 'empty list'})")
    return PairsResult(out=Path(out), method=method, pairs=n, images=images)
