"""Where in a window a reference descriptor fits best: grid search, coarse to fine, then
a parabola through the best cell and its neighbours (sub-pixel); and local affine maps
from neighbouring matches.

Shapes: N points, D descriptor size, n x n grid cells per level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .features import PatchFeatures, Samples, similarity


def _grid(step: float, radius: float, device: torch.device) -> tuple[torch.Tensor, int]:
    """(n*n, 2) x y offsets of a square grid of the given step and radius, row-major."""
    k = int(round(radius / step))
    t = torch.arange(-k, k + 1, dtype=torch.float32, device=device) * step
    ty, tx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([tx.reshape(-1), ty.reshape(-1)], dim=1), 2 * k + 1


def _parabola(sim: torch.Tensor, best: torch.Tensor, n: int) -> torch.Tensor:
    """Sub-cell (dx, dy) (N, 2) of the maximum of sim (N, n*n) at flat index best (N,):
    a 1-D parabola through each axis' three values; 0 at the grid border or no peak."""
    s = sim.reshape(-1, n, n)  # (N, y, x)
    iy, ix = best // n, best % n
    rows = torch.arange(len(best), device=sim.device)
    c = s[rows, iy, ix]
    out = []
    for pos, before, after in (
        (ix, s[rows, iy, (ix - 1).clamp(min=0)], s[rows, iy, (ix + 1).clamp(max=n - 1)]),
        (iy, s[rows, (iy - 1).clamp(min=0), ix], s[rows, (iy + 1).clamp(max=n - 1), ix]),
    ):
        den = before - 2 * c + after
        ok = (pos > 0) & (pos < n - 1) & (den < 0)
        d = 0.5 * (before - after) / torch.where(ok, den, torch.full_like(den, -1.0))
        out.append(torch.where(ok, d, torch.zeros_like(d)).clamp(-0.5, 0.5))
    return torch.stack(out, dim=1)


def _beside_cut(whole: torch.Tensor, top: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) whether the best cell ``top`` (B,) of an n x n grid has a neighbour (8-connected)
    whose template is cut by the image border (``whole`` (B, n*n) False)."""
    w = F.pad((~whole).float().reshape(-1, 1, n, n), (1, 1, 1, 1))
    near = F.max_pool2d(w, 3, stride=1).reshape(-1, n * n)
    return near[torch.arange(len(top)), top] > 0


def _whole(at: torch.Tensor, reach: float, size: tuple[int, int]) -> torch.Tensor:
    """(B, G) whether the template of each candidate at ``at`` (B, G, 2) x y, reaching
    ``reach`` px from it, lies wholly inside the image."""
    lim = at.new_tensor([size[0] - 1, size[1] - 1])
    return ((at - reach >= 0) & (at + reach <= lim)).all(dim=-1)


@dataclass
class Found:
    """Where each of N points fits best: points (N, 2), their similarity (N,), the
    similarity where the point started (N,) and whether the move was undone (N,) for
    leaving the window (longer than max_shift) or at the image border."""

    points: torch.Tensor
    score: torch.Tensor
    start_score: torch.Tensor
    undone: torch.Tensor


@torch.no_grad()
def search(feats: PatchFeatures, image: torch.Tensor, points: torch.Tensor,
           refs: Samples) -> Found:
    """Move points (N, 2) of one image to where its samples best match refs (N, 1, C, T).

    Level 0 searches +-radius on a grid of steps[0]; level k searches +-steps[k-1] around
    the previous best on a grid of steps[k]; the last level's maximum gets a parabola fit.
    Only candidates whose template lies wholly inside the image are compared; a point
    whose reference reaches off its image, whose own template is cut by the border, or
    whose best fit lies beside a cut candidate (the true fit may be beyond) is left where
    it was, as are moves longer than max_shift.
    """
    cfg = feats.config
    if len(points) == 0:
        empty = torch.zeros(0, device=points.device)
        return Found(points.clone(), empty, empty, empty.bool())
    levels = [_grid(cfg.steps[0], cfg.radius, feats.device)]
    levels += [_grid(s, prev, feats.device) for prev, s in zip(cfg.steps, cfg.steps[1:], strict=False)]
    centre = len(levels[0][0]) // 2  # level 0's offset (0, 0): where the point started
    W, H = image.shape[-1], image.shape[-2]
    reach = (cfg.template // 2) * cfg.template_step
    new, score, start, undone = [], [], [], []
    for b0 in range(0, len(points), cfg.block_size):
        p = points[b0 : b0 + cfg.block_size]
        r = refs[b0 : b0 + cfg.block_size]
        c = torch.round(p)  # integer crop centre: the crop is an exact copy of the pixels
        cf = feats.crops(image, c)
        best = p - c
        border = ~r.inside.flatten(1).all(dim=1)  # the reference reaches off its image
        for k, (offsets, n) in enumerate(levels):
            u = best[:, None, :] + offsets[None]  # (B, n*n, 2)
            sim = similarity(r, cf.sample(u), feats.zero_mean)
            # outside, a crop reads zeros: an edge not in the scene; whole templates only
            whole = _whole(c[:, None, :] + u, reach, (W, H))
            sim = sim.masked_fill(~whole, -1.0)
            top = sim.argmax(dim=1)
            if k == 0:
                start.append(sim[:, centre])
                # the point's own template is cut: the true fit may well be too
                border |= ~whole[:, centre]
                # a best fit beside a cut-off candidate: the true one may lie beyond
                border |= ~whole.all(dim=1) & _beside_cut(whole, top, n)
            best = u[torch.arange(len(top)), top]
        best = best + _parabola(sim, top, levels[-1][1]) * cfg.steps[-1]
        q = c + best
        bad = border | ((q - p).norm(dim=1) > cfg.max_shift)
        new.append(torch.where(bad[:, None], p, q))
        score.append(sim.max(dim=1).values)
        undone.append(bad)
    return Found(torch.cat(new), torch.cat(score), torch.cat(start), torch.cat(undone))


MIN_SPREAD = 4.0  # px: neighbours closer than this fit their keypoints' noise, not a warp


def _local_fits(x0: torch.Tensor, x1: torch.Tensor, k: int, queries: torch.Tensor,
                skip_self: bool, block: int = 1024,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares fits x1 ~ A x0 + t over each query's (Q, 2) k nearest matches in image
    0 (skip_self: queries are x0 itself, and each query's own match is left out).

    Two rounds: the second drops neighbours whose residual exceeds 3x the median (wrong
    matches). Returns A (Q, 2, 2), the prediction A q + t (Q, 2), and whether the fit is
    unusable (Q,): neighbours on a line (their spread across it under a tenth of that
    along it) or within MIN_SPREAD px of each other, or a non-finite A.
    """
    k = min(k, len(x0) - int(skip_self))
    out = []
    for b0 in range(0, len(queries), block):
        q = queries[b0 : b0 + block]
        nn_idx = torch.cdist(q, x0).topk(k + int(skip_self), largest=False).indices
        nn_idx = nn_idx[:, int(skip_self):]  # (B, k); the nearest of x0 to itself is itself
        a, b = x0[nn_idx], x1[nn_idx]  # (B, k, 2)
        w = torch.ones(a.shape[:2], device=x0.device)
        for _ in range(2):
            ma = (w[..., None] * a).sum(1, keepdim=True) / w.sum(1).clamp(min=1)[:, None, None]
            mb = (w[..., None] * b).sum(1, keepdim=True) / w.sum(1).clamp(min=1)[:, None, None]
            da, db = a - ma, b - mb
            cov_aa = torch.einsum("bk,bki,bkj->bij", w, da, da) + 1e-3 * torch.eye(2, device=x0.device)
            cov_ba = torch.einsum("bk,bki,bkj->bij", w, db, da)
            A = cov_ba @ torch.linalg.inv(cov_aa)
            res = (db - torch.einsum("bij,bkj->bki", A, da)).norm(dim=-1)
            w = (res <= 3 * res.median(dim=1, keepdim=True).values.clamp(min=0.5)).float()
        # (B, 2) rms spread of the neighbours across / along their main axis
        spread = (torch.linalg.eigvalsh(cov_aa) / w.sum(1, keepdim=True).clamp(min=1)).sqrt()
        pred = mb[:, 0] + torch.einsum("bij,bj->bi", A, q - ma[:, 0])
        bad = (spread[:, 0] < 0.1 * spread[:, 1]) | (spread[:, 0] < MIN_SPREAD)
        out.append((A, pred, bad | ~torch.isfinite(A).flatten(1).all(1)))
    A, pred, bad = zip(*out, strict=True)
    return torch.cat(A), torch.cat(pred), torch.cat(bad)


def local_affine(x0: torch.Tensor, x1: torch.Tensor, k: int, block: int = 1024,
                 at: torch.Tensor | None = None) -> torch.Tensor:
    """For each match (x0[i] -> x1[i], (M, 2) each) the 2x2 affine part (M, 2, 2) of a
    least-squares fit x1 ~ A x0 + t over its k nearest matches in image 0; with ``at``
    (Q, 2) image-0 points, the fits around those instead (Q, 2, 2).

    Robust as :func:`_local_fits`. Too few matches, unusable neighbourhoods and degenerate
    or extreme fits (singular values outside 1/8..8) give the identity: refinement then
    searches without the warp.
    """
    queries = x0 if at is None else at
    eye = torch.eye(2, device=x0.device).expand(len(queries), 2, 2).clone()
    if len(x0) < 4:
        return eye
    A, _, bad = _local_fits(x0, x1, k, queries, skip_self=False, block=block)
    A = torch.where(bad[:, None, None], eye, A)
    sv = torch.linalg.svdvals(A)
    bad = bad | (sv[:, 1] < 1 / 8) | (sv[:, 0] > 8) | (torch.linalg.det(A) <= 0)
    return torch.where(bad[:, None, None], eye, A)


def neighbour_prediction(x0: torch.Tensor, x1: torch.Tensor, k: int) -> torch.Tensor:
    """(M, 2) where each match's k nearest other matches (x0 -> x1, (M, 2) each) put its
    image-1 point: their robust local affine motion (:func:`_local_fits`) applied to its
    x0; NaN where that fit is unusable or there are fewer than 5 matches."""
    if len(x0) < 5:
        return torch.full_like(x1, float("nan"))
    _, pred, bad = _local_fits(x0, x1, k, x0, skip_self=True)
    return pred.masked_fill(bad[:, None], float("nan"))


def neighbour_drift(x0: torch.Tensor, before: torch.Tensor, after: torch.Tensor, k: int,
                    ) -> torch.Tensor:
    """(M,) how much further (px; < 0: closer) each moved image-1 point ``after`` (M, 2)
    lies than its start ``before`` (M, 2) from :func:`neighbour_prediction` (the matches
    x0 -> before); NaN where there is no prediction."""
    pred = neighbour_prediction(x0, before, k)
    return (after - pred).norm(dim=1) - (before - pred).norm(dim=1)
