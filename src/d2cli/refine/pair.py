"""Two-view refinement (evaluation, localisation queries) and the geometric bias fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..device import pick_device
from ..images import network_input_size
from ..settings import ExtractSettings
from .config import RefineConfig
from .features import PatchFeatures, image_tensor
from .search import local_affine, search

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


def refine_points(feats: PatchFeatures, t0: torch.Tensor, t1: torch.Tensor, p0: torch.Tensor,
                  p1: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move points p1 (M, 2) of image t1 to where the matching points p0 (M, 2) of image t0
    are (t0, t1: :func:`image_tensor` of each image; p0 fixed).

    The reference patch at each p0 is warped by the local affine map of its
    ``affine_neighbours`` nearest matches (``config.affine``). Moves longer than
    ``max_shift`` or whose best similarity is under ``min_score`` are undone.
    context: all matches of the pair (C, 2) x2 when p0, p1 are only some of them: the
    affine maps are fitted to those (once, unrefined).
    Returns (points (M, 2), best similarity (M,)).
    """
    config = feats.config
    fine = PatchFeatures(dataclasses.replace(config, radius=config.steps[0]), feats.device,
                         trunk=feats.trunk) if config.pair_iterations > 1 else feats
    refit = config.affine and context is None  # refit on the refined positions each round
    if not config.affine:
        refs = feats.describe(t0, p0)
    elif context is not None:
        refs = feats.describe(t0, p0, local_affine(*context, config.affine_neighbours, at=p0))
    new, score = p1, torch.zeros(len(p1), device=p1.device)
    for it in range(config.pair_iterations):
        if refit:
            refs = feats.describe(t0, p0, local_affine(p0, new, config.affine_neighbours))
        assert refs is not None
        # later rounds only polish: a small window around the last position
        step = feats if it == 0 else fine
        new, score = search(step, t1, new, refs)
    far = ((new - p1).norm(dim=1) > config.max_shift) | (score < config.min_score)
    return torch.where(far[:, None], p1, new), score


def refine_pair(img0: np.ndarray, img1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                matches: np.ndarray, config: RefineConfig | None = None,
                feats: PatchFeatures | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Move the matched keypoints of image 1 to where image 0's keypoint is.

    img0, img1: (H, W, 3) uint8 original images; kp0 (N0, 2), kp1 (N1, 2) float32 x y in
    original pixels (pixel centres at integers); matches (M, 2) index pairs. kp0 stays
    fixed (it anchors the pair: an unbiased two-view error needs nothing more); each
    matched kp1 moves to the best fit, within ``config.radius``, of kp0's descriptor
    (seen through the local affine map of its neighbouring matches if ``config.affine``).
    A kp1 in several matches takes the move of its best-scoring one. Keypoints in no
    match are unchanged. ``feats`` reuses a loaded network across calls.

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
    new, score = refine_points(feats, t0, t1, p0, p1)
    new_np, score_np = new.cpu().numpy(), score.cpu().numpy()
    keep = _unique_best(matches[:, 1], score_np)
    out1[matches[keep, 1]] = new_np[keep]
    return kp0.copy(), out1
