"""Track-level refinement for SfM: one refined position per keypoint.

Tracks are the connected components (union-find) of the verified match graph. Each track
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


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


@dataclass
class Tracks:
    """Track id of every keypoint (-1: in no refinable track), per image."""

    ids: dict[str, np.ndarray]  # name -> (N,) int64
    count: int  # refinable tracks
    conflicting: int  # tracks with two keypoints of one image, left unchanged
    too_large: int  # tracks over max_track keypoints, left unchanged


def build_tracks(num_keypoints: Mapping[str, int], matches: Mapping[tuple[str, str], np.ndarray],
                 max_track: int = 512) -> Tracks:
    """Connected components of the match graph (matches: (a, b) -> (M, 2) indices)."""
    names = list(num_keypoints)
    start = dict(zip(names, np.cumsum([0] + [num_keypoints[n] for n in names[:-1]]).tolist(),
                     strict=True))
    total = sum(num_keypoints.values())
    parent = np.arange(total)
    degree = np.zeros(total, dtype=np.int64)
    for (a, b), m in matches.items():
        m = np.asarray(m, dtype=np.int64).reshape(-1, 2)
        for i, j in zip((m[:, 0] + start[a]).tolist(), (m[:, 1] + start[b]).tolist(), strict=True):
            ri, rj = _find(parent, i), _find(parent, j)
            if ri != rj:
                parent[rj] = ri
        np.add.at(degree, m[:, 0] + start[a], 1)
        np.add.at(degree, m[:, 1] + start[b], 1)
    roots = np.array([_find(parent, i) for i in range(total)], dtype=np.int64)
    image_of = np.repeat(np.arange(len(names)), [num_keypoints[n] for n in names])
    matched = degree > 0
    _, comp = np.unique(roots, return_inverse=True)
    sizes = np.bincount(comp[matched], minlength=comp.max() + 1 if total else 0)
    # a track with two keypoints of one image: (track, image) pairs occurring twice
    key = comp[matched] * len(names) + image_of[matched]
    uniq, cnt = np.unique(key, return_counts=True)
    bad = np.zeros(len(sizes), dtype=bool)
    bad[uniq[cnt > 1] // len(names)] = True
    large = sizes > max_track
    ok = (sizes >= 2) & ~bad & ~large
    new_id = np.full(len(sizes), -1, dtype=np.int64)
    new_id[ok] = np.arange(int(ok.sum()))
    tid = np.where(matched, new_id[comp] if total else comp, -1)
    ids = {n: tid[start[n] : start[n] + num_keypoints[n]] for n in names}
    return Tracks(ids, int(ok.sum()), int((bad & (sizes >= 2)).sum()), int((large & ~bad).sum()))


def _load(src: ImageSource) -> np.ndarray:
    return src() if callable(src) else src


def anchors(tracks: Tracks, matches: Mapping[tuple[str, str], np.ndarray]) -> dict[str, np.ndarray]:
    """name -> (N,) bool: the anchor of every refinable track, the keypoint with the most
    verified matches in it (ties: the first image, the lowest index)."""
    names = list(tracks.ids)
    degree = {n: np.zeros(len(tracks.ids[n]), dtype=np.int64) for n in names}
    for (a, b), m in matches.items():
        m = np.asarray(m, dtype=np.int64).reshape(-1, 2)
        np.add.at(degree[a], m[:, 0], 1)
        np.add.at(degree[b], m[:, 1], 1)
    # every track keypoint as (track, -degree, image, index); the first row of each track wins
    rows = [(tracks.ids[n][sel], -degree[n][sel], np.full(len(sel), k), sel)
            for k, n in enumerate(names) for sel in [np.flatnonzero(tracks.ids[n] >= 0)]]
    out = {n: np.zeros(len(tracks.ids[n]), dtype=bool) for n in names}
    if not rows:
        return out
    tid, neg_deg, img, idx = (np.concatenate(c) for c in zip(*rows, strict=True))
    order = np.lexsort((idx, img, neg_deg, tid))
    first = order[np.r_[True, tid[order][1:] != tid[order][:-1]]]
    for k, n in enumerate(names):
        out[n][idx[first][img[first] == k]] = True
    return out


@dataclass
class PairMoves:
    """The keypoints one verified pair moved: (image name, indices (K,), positions (K, 2))."""

    pair: tuple[str, str]
    moves: list[tuple[str, np.ndarray, np.ndarray]]


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
        moves = []
        for src, dst, s_idx, d_idx, fwd in ((a, b, m[:, 0], m[:, 1], True),
                                            (b, a, m[:, 1], m[:, 0], False)):
            sel = np.flatnonzero(same & anchor[src][s_idx] & ~anchor[dst][d_idx])
            if len(sel) == 0:
                continue
            ctx = (xa, xb) if fwd else (xb, xa)
            idx = torch.from_numpy(sel).to(device)
            new, _ = refine_points(feats, tensor[src], tensor[dst], ctx[0][idx], ctx[1][idx], ctx)
            moves.append((dst, d_idx[sel], new.cpu().numpy().astype(np.float32)))
        yield PairMoves((a, b), moves)


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
