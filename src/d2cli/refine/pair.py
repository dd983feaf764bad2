"""Two-view refinement (evaluation, localisation queries) and the geometric bias fix."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..device import pick_device
from ..images import network_input_size
from ..settings import ExtractSettings
from .config import RefineConfig
from .features import PatchFeatures, image_tensor
from .search import local_affine, neighbour_drift, search

# the reference maps cell k to 4k + 1.5 level pixels, the stride-1 avg-pool cell centre is
# at 4k + 3.5 (d2net-behaviour.md section 7.4)
CELL_BIAS = 2.0


def bias_corrected(keypoints: np.ndarray, scales: np.ndarray, image_size: tuple[int, int],
                   max_edge: int = ExtractSettings.max_edge,
                   max_sum_edges: int = ExtractSettings.max_sum_edges) -> np.ndarray:
    """D2-Net keypoints (N, 2) x y with the constant cell-centre bias removed.

    scales (N,): the features file's 1 / pyramid scale; image_size (W, H) of the original;
    max_edge / max_sum_edges: the extraction's resize policy (to undo its factor).
    """
    w, h = image_size
    nw, nh = network_input_size(w, h, max_edge, max_sum_edges)
    fact = np.array([w / nw, h / nh], dtype=np.float32)
    return (keypoints + CELL_BIAS * scales[:, None].astype(np.float32) * fact).astype(np.float32)


def _unique_best(idx: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positions in idx of the best-scoring occurrence of every distinct value."""
    order = np.lexsort((-score, idx))
    first = np.ones(len(order), dtype=bool)
    first[1:] = idx[order][1:] != idx[order][:-1]
    return order[first]


# what became of each refined point (Refined.outcome)
UNMOVED, MOVED, UNDONE_FAR, UNDONE_WEAK, UNDONE_INCONSISTENT = range(5)
OUTCOMES = ("unmoved", "moved", "undone: too far, or at the image border", "undone: weak fit",
            "undone: the reverse search disagrees")


@dataclass
class Refined:
    """Refined points (M, 2), their best similarity (M,) and outcome (M,) int64 (OUTCOMES)."""

    points: torch.Tensor
    score: torch.Tensor
    outcome: torch.Tensor

    def counts(self) -> dict[str, int]:
        """moved / undone (by a guard) / unmoved: what a user sees in summaries."""
        o = self.outcome
        return {"moved": int((o == MOVED).sum()), "undone": int((o >= UNDONE_FAR).sum()),
                "unmoved": int((o == UNMOVED).sum())}


def refine_points(feats: PatchFeatures, t0: torch.Tensor, t1: torch.Tensor, p0: torch.Tensor,
                  p1: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor] | None = None,
                  ) -> Refined:
    """Move points p1 (M, 2) of image t1 to where the matching points p0 (M, 2) of image t0
    are (t0, t1: :func:`image_tensor` of each image; p0 fixed).

    The reference patch at each p0 is warped by the local affine map of its
    ``affine_neighbours`` nearest matches (``config.affine``). A move is undone when it
    is longer than ``max_shift`` or leaves the image, when its best similarity is under
    ``min_score`` or gains less than ``min_gain`` over the start, and (``back_check`` > 0)
    when the reverse search, t1's patch at the new position sought in t0 around p0,
    lands further than ``back_check`` px from p0 (a peak of one direction only).
    context: all matches of the pair (C, 2) x2 when p0, p1 are only some of them: the
    affine maps are fitted to those (once, unrefined).
    """
    config = feats.config
    fine = PatchFeatures(dataclasses.replace(config, radius=config.steps[0]), feats.device,
                         trunk=feats.trunk) if config.pair_iterations > 1 else feats
    refit = config.affine and context is None  # refit on the refined positions each round
    affine = None
    if config.affine and context is not None:
        affine = local_affine(*context, config.affine_neighbours, at=p0)
    refs = None if refit else feats.describe(t0, p0, affine)
    new = p1
    for it in range(config.pair_iterations):
        if refit:
            affine = local_affine(p0, new, config.affine_neighbours)
            refs = feats.describe(t0, p0, affine)
        assert refs is not None
        # later rounds only polish: a small window around the last position
        found = search(feats if it == 0 else fine, t1, new, refs)
        new = found.points
        if it == 0:  # later rounds undo only their own polish
            start, far = found.start_score, found.undone
    outcome = torch.where((new - p1).norm(dim=1) > 0, MOVED, UNMOVED)
    far = far | ((new - p1).norm(dim=1) > config.max_shift)
    outcome[far] = UNDONE_FAR
    weak = (outcome == MOVED) & ((found.score < config.min_score)
                                 | (found.score - start < config.min_gain))
    outcome[weak] = UNDONE_WEAK
    if config.back_check > 0:
        moved = torch.nonzero(outcome == MOVED).squeeze(1)
        back = PatchFeatures(dataclasses.replace(config, radius=max(2 * config.back_check,
                                                                    config.steps[0])),
                             feats.device, trunk=feats.trunk)
        a_back = None if affine is None else torch.linalg.inv(affine[moved])
        found_back = search(back, t0, p0[moved], back.describe(t1, new[moved], a_back))
        off = (found_back.points - p0[moved]).norm(dim=1) > config.back_check
        outcome[moved[off]] = UNDONE_INCONSISTENT
    keep = outcome == MOVED
    return Refined(torch.where(keep[:, None], new, p1), found.score, outcome)


def refine_pair(img0: np.ndarray, img1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                matches: np.ndarray, config: RefineConfig | None = None,
                feats: PatchFeatures | None = None, counts: Counter[str] | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Move the matched keypoints of image 1 to where image 0's keypoint is.

    img0, img1: (H, W, 3) uint8 original images; kp0 (N0, 2), kp1 (N1, 2) float32 x y in
    original pixels (pixel centres at integers); matches (M, 2) index pairs. kp0 stays
    fixed (it anchors the pair: an unbiased two-view error needs nothing more); each
    matched kp1 moves to the best fit, within ``config.radius``, of kp0's descriptor
    (seen through the local affine map of its neighbouring matches if ``config.affine``).
    A kp1 in several matches takes the move of its best-scoring one. Keypoints in no
    match are unchanged. ``feats`` reuses a loaded network across calls; ``counts``, if
    given, is incremented by the matches' outcomes (:meth:`Refined.counts`).

    Returns (kp0 copy, refined kp1), float32.
    """
    config = config or RefineConfig()
    kp0 = np.asarray(kp0, dtype=np.float32).reshape(-1, 2)
    kp1 = np.asarray(kp1, dtype=np.float32).reshape(-1, 2)
    out1 = kp1.copy()
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return kp0.copy(), out1
    device = pick_device(config.device) if feats is None else feats.device
    feats = feats or PatchFeatures(config, device)
    p0 = torch.from_numpy(kp0[matches[:, 0]]).to(device)
    p1 = torch.from_numpy(kp1[matches[:, 1]]).to(device)
    t0, t1 = image_tensor(img0, config, device), image_tensor(img1, config, device)
    r = refine_points(feats, t0, t1, p0, p1)
    if counts is not None:
        counts.update(r.counts())
    new_np, score_np = r.points.cpu().numpy(), r.score.cpu().numpy()
    keep = _unique_best(matches[:, 1], score_np)
    out1[matches[keep, 1]] = new_np[keep]
    return kp0.copy(), out1


def refine_verified(img0: np.ndarray, img1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                    matches: np.ndarray, config: RefineConfig | None = None,
                    feats: PatchFeatures | None = None, counts: Counter[str] | None = None,
                    max_error: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`refine_pair` in the order two-view uses want: verify, refine, re-verify.

    Only the matches (M, 2) that a LO-RANSAC fundamental matrix keeps at ``max_error`` px
    (default: the two-view geometry's, :data:`~d2cli.colmap.verification.EPIPOLAR_MAX_ERROR`)
    are refined: a wrong match is not moved onto a plausible feature. A move is undone, and
    counted so in ``counts``, when it takes its match off that geometry (Sampson error over
    ``max_error``) or more than ``max_error`` further from where the local affine motion
    of its ``affine_neighbours`` nearest verified matches puts it
    (:func:`~d2cli.refine.search.neighbour_drift`). Returns (kp0 copy, refined kp1), float32.
    """
    from ..colmap.verification import EPIPOLAR_MAX_ERROR, epipolar_geometry, sampson_error

    config = config or RefineConfig()
    max_error = EPIPOLAR_MAX_ERROR if max_error is None else max_error
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    F, inliers = epipolar_geometry(kp0, kp1, matches, max_error)
    verified = matches[inliers]
    own: Counter[str] = Counter()
    k0, k1 = refine_pair(img0, img1, kp0, kp1, verified, config, feats, own)
    if F is not None and len(verified):
        start = np.asarray(kp1, np.float32).reshape(-1, 2)
        x0, before, after = k0[verified[:, 0]], start[verified[:, 1]], k1[verified[:, 1]]
        off = np.zeros(len(kp1), bool)  # kp1 moves per keypoint: any match it left
        off[verified[sampson_error(F, x0, after) > max_error, 1]] = True
        # F leaves a move along the epipolar line unchecked (and on a plane it is loose):
        # the neighbours' local motion does not. A move that takes its match more than
        # max_error further from where they put it jumped to another, similar structure.
        drift = neighbour_drift(*(torch.from_numpy(x) for x in (x0, before, after)),
                                config.affine_neighbours).numpy()
        off[verified[drift > max_error, 1]] = True  # NaN (no usable neighbourhood): kept
        back = np.flatnonzero(off & (k1 != start).any(axis=1))
        k1[back] = start[back]
        own.update(moved=-len(back), undone=len(back))
    if counts is not None:
        counts.update(own)
    return k0, k1
