"""The D2-Net training loss (paper Sec. 3.4; reference ``lib/loss.py``).

For each ground-truth correspondence c = (A cell in image 1, B cell in image 2):

    p(c) = ||d_A - d_B||^2                                   positive distance
    n(c) = min(||d_A - d_N2||^2, ||d_B - d_N1||^2)           hardest negatives, searched
           over every cell of the other map outside a safe radius (Chebyshev, in cells)
           around the true match, so that near-duplicates of the positive do not count
    m(c) = relu(margin + p(c) - n(c))                        triplet margin ranking
    L    = sum_c s1_A s2_B m(c) / sum_c s1_A s2_B            weighted by soft detection

Descriptors are the raw (pre-ReLU) conv4_3 features, L2-normalised; distances are
squared distances of unit vectors (2 - 2 <a, b>), so the largest is 4 and the "+10"
that masks the safe radius is always larger. Defaults: margin 1, safe radius 4 cells
(32 px at stride 8), as the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STRIDE = 8  # train-time network: one feature cell = 8x8 input pixels
MARGIN = 1.0
SAFE_RADIUS = 4
MIN_MATCHES = 128


def cell_centres(h: int, w: int, stride: int = STRIDE) -> torch.Tensor:
    """All cells of an (h, w) map, row-major, as pixel positions (h*w, 2) = (row, col).

    Cell k covers pixels stride*k .. stride*k + stride-1 after three 2x2 poolings, so
    its centre is stride*k + (stride-1)/2 = 8k + 3.5 (reference ``upscale_positions``).
    """
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1).double()
    return grid * stride + (stride - 1) / 2


def pixels_to_cells(pos: torch.Tensor, h: int, w: int, stride: int = STRIDE) -> tuple[
        torch.Tensor, torch.Tensor]:
    """Pixel positions (N, 2) -> (nearest cell (N, 2) long, mask (N,) of those inside the map).

    torch.round rounds half to even, as the reference does.
    """
    cells = torch.round((pos - (stride - 1) / 2) / stride).long()
    inside = (cells[:, 0] >= 0) & (cells[:, 0] < h) & (cells[:, 1] >= 0) & (cells[:, 1] < w)
    return cells, inside


def _hardest_negative(d: torch.Tensor, d_all: torch.Tensor, cells: torch.Tensor, h: int, w: int,
                      safe_radius: int) -> torch.Tensor:
    """min over the cells of the other map, outside the safe radius around ``cells``.

    d: (N, C) unit descriptors; d_all: (h*w, C) unit descriptors of the other map;
    cells: (N, 2) true matches in the other map. Returns (N,).
    """
    ii, jj = torch.meshgrid(torch.arange(h, device=d.device), torch.arange(w, device=d.device),
                            indexing="ij")
    grid = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)  # (h*w, 2)
    cheb = (cells[:, None, :] - grid[None, :, :]).abs().max(dim=2).values  # (N, h*w)
    dist = 2 - 2 * d @ d_all.t()
    return (dist + 10 * (cheb <= safe_radius).to(dist.dtype)).min(dim=1).values


def spread_loss(d1_all: torch.Tensor, d2_all: torch.Tensor) -> torch.Tensor:
    """Spread-out regulariser (Zhang et al., ICCV 2017) on the cells of two images.

    d1_all, d2_all: (n1, C), (n2, C) unit descriptors. Almost all of the n1 x n2 pairs are
    non-matching, so their cosines should look like those of random unit vectors: mean 0 and
    second moment 1/C. Penalising mean^2 + relu(second moment - 1/C) stops the cheapest way
    down the triplet loss from a weak start: all descriptors drifting to one direction.
    """
    cos = d1_all @ d2_all.t()
    return cos.mean() ** 2 + F.relu((cos ** 2).mean() - 1.0 / d1_all.shape[1])


def pair_loss(features1: torch.Tensor, features2: torch.Tensor, scores1: torch.Tensor,
              scores2: torch.Tensor, cells1: torch.Tensor, cells2: torch.Tensor,
              margin: float = MARGIN, safe_radius: int = SAFE_RADIUS,
              spread: float = 0.0) -> torch.Tensor | None:
    """Loss of one image pair (+ ``spread`` x ``spread_loss``; 0 is the paper's loss).

    features1/2: raw features (C, h1, w1) / (C, h2, w2); scores1/2: soft detection
    scores (h1, w1) / (h2, w2); cells1/2: (N, 2) long, the matching cells (row, col).
    Returns a scalar, or None when the detection weights of all matches are zero.
    """
    c, h1, w1 = features1.shape
    _, h2, w2 = features2.shape
    d1_all = F.normalize(features1.reshape(c, -1), dim=0).t()  # (h1*w1, C)
    d2_all = F.normalize(features2.reshape(c, -1), dim=0).t()
    ids1 = cells1[:, 0] * w1 + cells1[:, 1]
    ids2 = cells2[:, 0] * w2 + cells2[:, 1]
    d1, d2 = d1_all[ids1], d2_all[ids2]  # (N, C)
    positive = 2 - 2 * (d1 * d2).sum(dim=1)
    negative = torch.minimum(
        _hardest_negative(d1, d2_all, cells2, h2, w2, safe_radius),  # in image 2, around B
        _hardest_negative(d2, d1_all, cells1, h1, w1, safe_radius))  # in image 1, around A
    weight = scores1.reshape(-1)[ids1] * scores2.reshape(-1)[ids2]
    total = weight.sum()
    if not total > 0:
        return None
    loss = (weight * F.relu(margin + positive - negative)).sum() / total
    return loss + spread * spread_loss(d1_all, d2_all) if spread else loss
