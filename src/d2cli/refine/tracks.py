"""Track-level refinement for SfM: one refined position per keypoint.

Tracks are the connected components (union-find) of the verified match graph. Each
round, a track's reference descriptor is the robust mean of its keypoints' descriptors
(round 1: plain mean; later rounds weight each by its similarity to the last reference,
so a keypoint that does not fit pulls less), and every keypoint moves to its best fit of
the reference within the search radius. The work is image-major: each round loads every
image twice (references, then search), so memory is one image plus (tracks x D) floats.

Left unchanged (and counted in :class:`Tracks`): tracks holding two keypoints of one
image (a wrong match merged them; pulling both to one feature would only duplicate
them) and tracks larger than ``config.max_track`` (chains of wrong matches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..device import pick_device
from .config import RefineConfig
from .features import PatchFeatures, image_tensor
from .search import search

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


def refine_tracks(images: Mapping[str, ImageSource], keypoints: Mapping[str, np.ndarray],
                  matches: Mapping[tuple[str, str], np.ndarray],
                  config: RefineConfig | None = None,
                  feats: PatchFeatures | None = None) -> dict[str, np.ndarray]:
    """Jointly refine the keypoints of every track so that their descriptors agree.

    images: name -> (H, W, 3) uint8 array or a loader returning one (called once per pass);
    keypoints: name -> (N, 2) float32 x y original pixels; matches: (a, b) -> (M, 2)
    verified index pairs. Returns name -> (N, 2) float32: one position per keypoint,
    unchanged outside refinable tracks (see module docstring). A keypoint never moves
    more than ``config.max_shift`` from its detection.
    """
    config = config or RefineConfig()
    kps = {n: np.asarray(k, dtype=np.float32).reshape(-1, 2) for n, k in keypoints.items()}
    tracks = build_tracks({n: len(k) for n, k in kps.items()}, matches, config.max_track)
    out = {n: k.copy() for n, k in kps.items()}
    if tracks.count == 0:
        return out
    device = pick_device(config.device) if feats is None else feats.device
    feats = feats or PatchFeatures(config, device)
    todo = [n for n in kps if (tracks.ids[n] >= 0).any()]
    ref: torch.Tensor | None = None
    for _ in range(config.iterations):
        total: torch.Tensor | None = None
        weight = torch.zeros(tracks.count, device=device)
        for n in todo:  # references: weighted mean of the track's descriptors
            sel = np.flatnonzero(tracks.ids[n] >= 0)
            tid = torch.from_numpy(tracks.ids[n][sel]).to(device)
            d = feats.describe(image_tensor(_load(images[n]), config, device),
                               torch.from_numpy(out[n][sel]).to(device))
            w = torch.ones(len(sel), device=device) if ref is None else (
                (d * ref[tid]).sum(1).clamp(min=0) ** 2)  # misfits pull less
            if total is None:
                total = torch.zeros(tracks.count, d.shape[1], device=device)
            total.index_add_(0, tid, w[:, None] * d)
            weight.index_add_(0, tid, w)
        assert total is not None
        ref = torch.nn.functional.normalize(total, dim=1, eps=1e-8)
        for n in todo:  # every keypoint to its best fit of the reference
            sel = np.flatnonzero(tracks.ids[n] >= 0)
            tid = torch.from_numpy(tracks.ids[n][sel]).to(device)
            start = torch.from_numpy(out[n][sel]).to(device)
            new, _ = search(feats, image_tensor(_load(images[n]), config, device), start, ref[tid])
            new_np = new.cpu().numpy()
            far = np.linalg.norm(new_np - kps[n][sel], axis=1) > config.max_shift
            new_np[far] = kps[n][sel][far]
            out[n][sel] = new_np
    return out
