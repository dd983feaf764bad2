"""Hard detection, sub-pixel refinement and descriptor sampling, at candidate cells only.

The reference builds dense (512, h, w) Hessian and displacement volumes, although
only a few thousand cells survive the cheap tests. Here the channel-wise maximum
picks one candidate channel per cell (ties keep all), and the 3x3 local-max test,
the Hessian edge test and the Newton step are evaluated on the 3x3 neighbourhood
of that channel alone: the same arithmetic as the reference's depthwise 3x3
filters (zero padding for derivatives, -inf padding for the max-pool), at a
fraction of the time and memory.

Shapes: ``D`` is one image's dense feature map (C, h, w), float32 or the bf16 of a
reduced-precision trunk, in any memory layout (comparisons run in its dtype, all
arithmetic in float32 on gathered values); positions are (row i, column j) in
feature-map cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EDGE_THRESHOLD = 5  # the paper's r; cells with tr^2/det > (r+1)^2/r are edges


@dataclass
class Detections:
    """Cells that pass the hard detection test of one map, in (c, i, j) order."""

    cells: torch.Tensor  # (K, 3) long: channel, row, column
    step: torch.Tensor  # (K, 2) float: Newton step (di, dj) of the detecting channel


def _neighbourhood(D: torch.Tensor, c: torch.Tensor, i: torch.Tensor, j: torch.Tensor):
    """The 3x3 window of channel c around (i, j): values (K, 3, 3) and in-image mask."""
    _, h, w = D.shape
    off = torch.arange(-1, 2, device=D.device)
    ii = i[:, None, None] + off[None, :, None]  # (K, 3, 1)
    jj = j[:, None, None] + off[None, None, :]  # (K, 1, 3)
    inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)  # (K, 3, 3)
    v = D[c[:, None, None], ii.clamp(0, h - 1), jj.clamp(0, w - 1)]
    return v.float(), inside


def _channels_last(D: torch.Tensor) -> bool:
    """Whether each cell's C values are contiguous (the NHWC map of a bf16 trunk)."""
    return D.shape[0] > 1 and D.stride(0) == 1


def _channel_maxima(D: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (K, 3) long (c, i, j), lexicographic: every channel holding its cell's maximum.

    Ties keep all their channels (the reference's ``D == max``).
    """
    M, first = D.max(dim=0)
    if not _channels_last(D):
        return (D == M).nonzero()
    # NHWC: nonzero over the whole (C, h, w) mask walks it against its layout. Instead
    # each cell's argmax from the reduction, plus, at the few cells with exact ties
    # (common in bf16), all their maximal channels; then sort into (c, i, j) order.
    C, h, w = D.shape
    is_max = D == M
    ii = torch.arange(h, device=D.device)[:, None].expand(h, w)
    jj = torch.arange(w, device=D.device)[None, :].expand(h, w)
    is_max[first, ii, jj] = False  # what remains marks a second maximal channel
    tied = is_max.amax(dim=0).view(-1).nonzero().squeeze(1)  # (T,) cells with ties
    rows = D.permute(1, 2, 0).reshape(h * w, C).index_select(0, tied)  # (T, C)
    t, c_tied = (rows == M.view(-1).index_select(0, tied)[:, None]).nonzero().unbind(1)
    cell = torch.cat([torch.arange(h * w, device=D.device), tied.index_select(0, t)])
    c = torch.cat([first.view(-1), c_tied])
    key = torch.unique(c * (h * w) + cell)  # sorted; a tie cell's argmax appears twice
    return torch.stack([key // (h * w), key % (h * w) // w, key % w], dim=1)


def _gather(D: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """(C, h, w), cells (K,), (K,) -> (C, K) float32 values of every channel there."""
    if _channels_last(D):  # gather whole rows of C values, then view them as (C, K)
        return D.permute(1, 2, 0)[i, j].float().t()
    return D[:, i, j].float()


def detect(D: torch.Tensor, edge_threshold: float = EDGE_THRESHOLD) -> Detections:
    """D2-Net hard detection with the edge test, plus the sub-pixel step at each detection.

    A cell (c, i, j) is detected iff D[c,i,j] is the maximum over channels at (i, j),
    the maximum of its 3x3 window in channel c, and not on an edge
    (tr(H)^2 / det(H) <= (r+1)^2 / r and det(H) > 0, H the 2x2 Hessian of D[c]).
    """
    # comparisons in D's own dtype (exact); arithmetic in fp32 on the gathered values
    cand = _channel_maxima(D)  # (K, 3), lexicographic (c, i, j) like the reference
    c, i, j = cand.unbind(1)
    v, inside = _neighbourhood(D, c, i, j)
    centre = v[:, 1, 1]
    # 3x3 max-pool test (padding counts as -inf, plateaus pass)
    window_max = torch.where(inside, v, torch.full_like(v, -float("inf"))).amax(dim=(1, 2))
    z = torch.where(inside, v, torch.zeros_like(v))  # derivative filters use zero padding
    up, down, left, right = z[:, 0, 1], z[:, 2, 1], z[:, 1, 0], z[:, 1, 2]
    dii = up + -2.0 * centre + down
    djj = left + -2.0 * centre + right
    dij = 0.25 * z[:, 0, 0] + -0.25 * z[:, 0, 2] + -0.25 * z[:, 2, 0] + 0.25 * z[:, 2, 2]
    det = dii * djj - dij * dij
    tr = dii + djj
    threshold = (edge_threshold + 1) ** 2 / edge_threshold
    keep = (centre == window_max) & (tr * tr / det <= threshold) & (det > 0)
    # Newton step -H^-1 g (the reference's HandcraftedLocalizationModule)
    di = -0.5 * up + 0.5 * down
    dj = -0.5 * left + 0.5 * right
    inv00, inv01, inv11 = djj / det, -dij / det, dii / det
    step = torch.stack([-(inv00 * di + inv01 * dj), -(inv01 * di + inv11 * dj)], dim=1)
    return Detections(cand[keep], step[keep])


def sample_descriptors(D: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear interpolation of D (C, h, w) at positions (N, 2) = (i, j).

    Points whose four surrounding cells are not all inside the map are dropped.
    Returns (descriptors (C, M) un-normalised, ids (M,) of the kept points).
    """
    _, h, w = D.shape
    i, j = pos[:, 0], pos[:, 1]
    i0, j0 = torch.floor(i).long(), torch.floor(j).long()
    i1, j1 = torch.ceil(i).long(), torch.ceil(j).long()
    valid = (i0 >= 0) & (j0 >= 0) & (i1 < h) & (j1 < w)
    ids = valid.nonzero()[:, 0]
    i, j, i0, j0, i1, j1 = (t[ids] for t in (i, j, i0, j0, i1, j1))
    a = i - i0.float()
    b = j - j0.float()
    desc = (
        (1 - a) * (1 - b) * _gather(D, i0, j0)
        + (1 - a) * b * _gather(D, i0, j1)
        + a * (1 - b) * _gather(D, i1, j0)
        + a * b * _gather(D, i1, j1)
    )
    return desc, ids


def normalize_descriptors(desc: torch.Tensor) -> torch.Tensor:
    """L2-normalise (C, M) descriptors along C."""
    return F.normalize(desc, dim=0)
