"""Track-level refinement for SfM: one refined position per keypoint.

Tracks are the connected components of the verified match graph. Each track
has an anchor, its keypoint with the most verified matches, which stays fixed; every
keypoint verified-matched to it moves to where the anchor's patch fits best, exactly as
in two-view refinement (affine warp from the pair's matches, NCC guard). All observations
of a track then agree with one detection, to sub-pixel accuracy. (A first version moved
every keypoint to the mean descriptor of its track, without warp: on the validation
scenes of ``benchmarks/refine.py tracks`` MMA@1 32.9 vs 77.4 for the anchor, and it lost
12 points at 5 px.) The work is pair-major, memory a few images plus one pair's matches.

Left unchanged (and counted in :class:`Tracks`): tracks holding two keypoints of one
image (a wrong match merged them; pulling both to one feature would only duplicate
them) and tracks larger than ``config.max_track`` (chains of wrong matches).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..device import pick_device
from .config import RefineConfig
from .features import ImageCache, PatchFeatures
from .pair import refine_points

ImageSource = np.ndarray | Callable[[], np.ndarray]


def _components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of the graph on ``n`` vertices with edges ``u[k]-v[k]`` ((E,)
    integers, the dtype of :func:`_index_dtype`).

    Returns (n,) ids: a vertex of its component for every vertex (the same for two
    vertices iff they are connected). Boruvka-style contraction, all numpy: each round
    (:func:`_hook`) every super-vertex with an edge hooks to its smallest neighbour, so
    each hook tree holds two or more and the super-vertices with edges at least halve:
    O(log n) rounds of O(n + E) work, also on a long chain (where min-label propagation
    would take as many rounds as the chain is long).
    """
    label = np.arange(n, dtype=u.dtype)
    keep = u != v
    if not keep.all():  # self-loops (an image matched with itself) are rare: no copy else
        u, v = u[keep], v[keep]
    while len(u):  # u, v: the edges between distinct super-vertices (roots)
        root = _flatten(_hook(n, u, v))
        label = root[label]
        u, v = root[u], root[v]
        keep = u != v
        u, v = u[keep], v[keep]
    return label


def _hook(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) parent of each vertex: its smallest neighbour along the (E,) edges ``u-v``, or
    itself without edges. Two vertices choosing each other (the only cycle possible: a
    longer one would need its labels to decrease all the way round) keep the smaller as root.
    """
    ids = np.arange(n, dtype=u.dtype)
    best = np.full(n, n, dtype=u.dtype)
    np.minimum.at(best, u, v)
    np.minimum.at(best, v, u)
    parent = np.where(best < n, best, ids)
    mutual = (parent[parent] == ids) & (ids < parent)
    parent[mutual] = ids[mutual]
    return parent


def _flatten(parent: np.ndarray) -> np.ndarray:
    """(n,) root of every vertex of a forest given by (n,) parents (roots: their own parent).

    Pointer jumping: each step doubles the distance skipped, log2(depth) + 1 steps.
    """
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _index_dtype(n: int) -> type[np.signedinteger]:
    """int32 for up to 2^31 - 1 keypoints (half the memory of the edge arrays), else int64."""
    return np.int32 if n < 2**31 - 1 else np.int64


def _global_edges(counts: Mapping[str, int], matches: Mapping[tuple[str, str], np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keypoints of all images numbered in one range (image order, then index).

    Returns the (I + 1,) int64 offsets of the images (``counts`` order) and the (E,) global
    ids (:func:`_index_dtype`) of both ends of every match, written in place into arrays
    of the final size; the loop is per pair, never per match.
    """
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum([counts[n] for n in counts], out=offsets[1:])
    start = dict(zip(counts, offsets.tolist(), strict=False))
    dtype = _index_dtype(int(offsets[-1]))
    total = sum(np.size(m) // 2 for m in matches.values())
    u, v = np.empty(total, dtype), np.empty(total, dtype)
    at = 0
    for (a, b), m in matches.items():
        m = np.asarray(m).reshape(-1, 2)
        if len(m) and (m.min() < 0 or m[:, 0].max() >= counts[a] or m[:, 1].max() >= counts[b]):
            raise IndexError(f"matches of {a} {b}: a keypoint index out of range")
        np.add(m[:, 0], start[a], out=u[at:at + len(m)], casting="unsafe")
        np.add(m[:, 1], start[b], out=v[at:at + len(m)], casting="unsafe")
        at += len(m)
    return offsets, u, v


@dataclass
class Tracks:
    """Track id of every keypoint (-1: in no refinable track), per image."""

    ids: dict[str, np.ndarray]  # name -> (N,) int64
    count: int  # refinable tracks
    conflicting: int  # tracks with two keypoints of one image, left unchanged
    too_large: int  # tracks over max_track keypoints, left unchanged


def build_tracks(num_keypoints: Mapping[str, int], matches: Mapping[tuple[str, str], np.ndarray],
                 max_track: int = 512) -> Tracks:
    """Connected components of the match graph (matches: (a, b) -> (M, 2) indices).

    Refinable tracks are numbered in the order of their first keypoint (images in
    ``num_keypoints`` order, then index), whatever the order of the matches.
    """
    names = list(num_keypoints)
    offsets, u, v = _global_edges(num_keypoints, matches)
    total = int(offsets[-1])
    degree = np.bincount(u, minlength=total) + np.bincount(v, minlength=total)
    label = _components(total, u, v)
    del u, v  # the edges are done with: the rest is O(keypoints)
    # components numbered in the order of their smallest keypoint, whatever the edge order
    smallest = np.full(total, total, dtype=np.int64)
    np.minimum.at(smallest, label, np.arange(total, dtype=np.int64))
    smallest = smallest[label]
    is_first = np.zeros(total, dtype=bool)
    is_first[smallest] = True
    comp = (np.cumsum(is_first) - 1)[smallest]
    image_of = np.repeat(np.arange(len(names)), np.diff(offsets))
    matched = degree > 0
    sizes = np.bincount(comp[matched], minlength=comp.max() + 1 if total else 0)
    # a track with two keypoints of one image: (track, image) pairs occurring twice
    key = comp[matched] * len(names) + image_of[matched]
    uniq, cnt = np.unique(key, return_counts=True)
    bad = np.zeros(len(sizes), dtype=bool)
    bad[uniq[cnt > 1] // max(len(names), 1)] = True
    large = sizes > max_track
    ok = (sizes >= 2) & ~bad & ~large
    new_id = np.full(len(sizes), -1, dtype=np.int64)
    new_id[ok] = np.arange(int(ok.sum()))
    tid = np.where(matched, new_id[comp] if total else comp, -1)
    ids = {n: tid[offsets[k]:offsets[k + 1]] for k, n in enumerate(names)}
    return Tracks(ids, int(ok.sum()), int((bad & (sizes >= 2)).sum()), int((large & ~bad).sum()))


def _load(src: ImageSource) -> np.ndarray:
    return src() if callable(src) else src


def anchors(tracks: Tracks, matches: Mapping[tuple[str, str], np.ndarray]) -> dict[str, np.ndarray]:
    """name -> (N,) bool: the anchor of every refinable track, the keypoint with the most
    verified matches in it (ties: the first image, the lowest index)."""
    names = list(tracks.ids)
    offsets, u, v = _global_edges({n: len(tracks.ids[n]) for n in names}, matches)
    total = int(offsets[-1])
    degree = np.bincount(u, minlength=total) + np.bincount(v, minlength=total)
    tid = np.concatenate([tracks.ids[n] for n in names] or [np.zeros(0, np.int64)])
    anchor = np.zeros(total, dtype=bool)
    sel = np.flatnonzero(tid >= 0)  # global ids: their order is (image, index)
    if len(sel):
        # every track keypoint by (track, -degree, global id): the first of each track wins
        order = sel[np.lexsort((sel, -degree[sel], tid[sel]))]
        anchor[order[np.r_[True, tid[order][1:] != tid[order][:-1]]]] = True
    return {n: anchor[offsets[k]:offsets[k + 1]] for k, n in enumerate(names)}


@dataclass
class PairMoves:
    """The keypoints one verified pair moved: (image name, indices (K,), positions (K, 2))."""

    pair: tuple[str, str]
    moves: list[tuple[str, np.ndarray, np.ndarray]]
    undone: int = 0  # moves a guard undid (those keypoints keep their position)


def track_moves(images: Mapping[str, ImageSource], keypoints: Mapping[str, np.ndarray],
                matches: Mapping[tuple[str, str], np.ndarray],
                config: RefineConfig | None = None, feats: PatchFeatures | None = None,
                skip: Collection[tuple[str, str]] = (), cache: int = 4,
                tracks: Tracks | None = None) -> Iterator[PairMoves]:
    """The work of :func:`refine_tracks`, pair by pair (sorted), for jobs that journal
    and resume: a pair's moves depend only on the inputs (the anchors are fixed by the
    match graph, every keypoint moves in at most one pair), so pairs in ``skip`` (done
    earlier) are left out without changing the others. ``tracks``: :func:`build_tracks`
    of these inputs, if the caller has it."""
    config = config or RefineConfig()
    kps = {n: np.asarray(k, dtype=np.float32).reshape(-1, 2) for n, k in keypoints.items()}
    if tracks is None:
        tracks = build_tracks({n: len(k) for n, k in kps.items()}, matches, config.max_track)
    if tracks.count == 0:
        return
    device = pick_device(config.device) if feats is None else feats.device
    feats = feats or PatchFeatures(config, device)
    anchor = anchors(tracks, matches)
    tensor = ImageCache(lambda n: _load(images[n]), config, device, cache)

    skip = set(skip)
    for a, b in sorted(matches):
        if (a, b) in skip:
            continue
        m = np.asarray(matches[(a, b)], dtype=np.int64).reshape(-1, 2)
        ta, tb = tracks.ids[a][m[:, 0]], tracks.ids[b][m[:, 1]]
        same = (ta >= 0) & (ta == tb)
        xa = torch.from_numpy(kps[a][m[:, 0]]).to(device)
        xb = torch.from_numpy(kps[b][m[:, 1]]).to(device)
        moves, undone = [], 0
        for src, dst, s_idx, d_idx, fwd in ((a, b, m[:, 0], m[:, 1], True),
                                            (b, a, m[:, 1], m[:, 0], False)):
            sel = np.flatnonzero(same & anchor[src][s_idx] & ~anchor[dst][d_idx])
            if len(sel) == 0:
                continue
            ctx = (xa, xb) if fwd else (xb, xa)
            idx = torch.from_numpy(sel).to(device)
            r = refine_points(feats, tensor[src], tensor[dst], ctx[0][idx], ctx[1][idx], ctx)
            moves.append((dst, d_idx[sel], r.points.cpu().numpy().astype(np.float32)))
            undone += r.counts()["undone"]
        yield PairMoves((a, b), moves, undone)


def apply_moves(keypoints: Mapping[str, np.ndarray], moves: Iterable[PairMoves]
                ) -> dict[str, np.ndarray]:
    """Copies of keypoints (name -> (N, 2)) with the moves applied."""
    out = {n: np.asarray(k, dtype=np.float32).reshape(-1, 2).copy() for n, k in keypoints.items()}
    for pm in moves:
        for name, idx, pos in pm.moves:
            out[name][idx] = pos
    return out


def refine_tracks(images: Mapping[str, ImageSource], keypoints: Mapping[str, np.ndarray],
                  matches: Mapping[tuple[str, str], np.ndarray],
                  config: RefineConfig | None = None, feats: PatchFeatures | None = None,
                  cache: int = 4) -> dict[str, np.ndarray]:
    """Refine the keypoints of every track to its anchor: one position per keypoint.

    images: name -> (H, W, 3) uint8 array or a loader returning one; keypoints: name ->
    (N, 2) float32 x y original pixels; matches: (a, b) -> (M, 2) verified index pairs.
    Every track keypoint verified-matched to its track's anchor moves to where the anchor
    is (:func:`~d2cli.refine.pair.refine_points`: the anchor's patch warped by the local
    affine map of that pair's matches, the guards of ``config``); anchors, keypoints not
    matched to their anchor and those outside refinable tracks stay put. Pair-major: the
    last ``cache`` images stay loaded (:func:`track_moves`). Returns name -> (N, 2) float32.
    """
    return apply_moves(keypoints, track_moves(images, keypoints, matches, config, feats,
                                              cache=cache))
