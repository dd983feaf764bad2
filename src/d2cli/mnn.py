"""Mutual nearest neighbours of two descriptor sets: the matcher of D2-Net and hloc.

Row ``i`` and column ``j`` of ``sim = desc0 @ desc1.T`` match when each is the other's
best, ties going to the first index, exactly as ``torch.max`` on the full matrix. Two
ways compute that same decision:

- **exact** (fp32): the matrix tile by tile, keeping running row and column maxima, so
  memory is O(N0 + N1) plus one tile for any keypoint count.
- **bf16 screen**: the products in bf16 (5-8x faster on CPUs with AVX512-BF16 or AMX, and
  on tensor cores), then the decision in fp32. Every bf16 similarity is within ``e`` of its
  fp32 value, ``e`` a proven bound (:func:`screen_margin`), so a row's fp32 argmax is among
  the entries within ``2e`` of the row's bf16 maximum (likewise for columns). Those few
  candidates (3-6 per row on real D2 descriptors) are the only ones looked at again: a row
  or column with one candidate is decided, the others are re-scored in fp32. The result is
  the fp32 matcher's, up to the order of fp32 summation (ulp-level near-ties).

Shapes: ``desc0`` (N0, D), ``desc1`` (N1, D), L2-normalised rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .precision import bf16_is_fast, check_precision

# (rows, columns) of one similarity tile. Each tile costs six parallel operations (the
# product, the row max, four vectorised passes for the column max). On a CPU shared with
# other processes each parallel operation also waits for a descheduled thread (~10 ms per
# operation measured on the 2-core development machine at load 8), so fewer, larger tiles
# win there: at 8k x 8k, 2048 x 8192 gave 80-89% of a plain torch.mm, 1024 x 4096 50-67%.
# On a quiet machine the extra passes read the tile from memory instead of the cache,
# a few percent of the product's time.
DEFAULT_TILE = {"cpu": (2048, 8192), "cuda": (8192, 8192)}


def _distance(sim: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between unit vectors from their dot product: sqrt(2 - 2 sim)."""
    return (2 - 2 * sim).clamp_(min=0).sqrt_()


# ``auto`` screens in bf16 only on CPUs with native bf16 and from this many similarities
# on: below it the screen's extra passes cost as much as the faster product saves (real
# descriptors on the 2-core AMX development CPU: 0.9-1.05x at 1k x 1k, 1.4x at 1.5k and
# 2k, 2.6x at 8k). On GPUs the exact fp32 path is the faster one (H200, 8k x 8k: the
# screen ran at 0.47x). docs/benchmarks.md, "Matching" and "GPU".
SCREEN_MIN_SIMILARITIES = 2_000_000


def matcher_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` means for the matcher on ``device``: ``fp32`` or ``bf16``.

    ``bf16`` from ``auto`` applies to pairs of at least :data:`SCREEN_MIN_SIMILARITIES`.
    """
    check_precision(precision)
    if precision == "auto":
        return "bf16" if device.type == "cpu" and bf16_is_fast(device) else "fp32"
    return "bf16" if precision == "bf16" else "fp32"


def uses_bf16_screen(precision: str, device: torch.device, n0: int, n1: int) -> bool:
    """Whether :func:`mnn` screens this pair in bf16 (``precision`` as given to it)."""
    if matcher_precision(precision, device) != "bf16":
        return False
    return precision == "bf16" or n0 * n1 >= SCREEN_MIN_SIMILARITIES


# bf16 screen: rows per block of the candidate search (a block is skipped at once when
# none of its entries can be a row's or a column's best)
ROW_BLOCK = 8
# re-scored candidates per chunk: two gathered (chunk, D) fp32 blocks stay in cache
RESCORE_CHUNK = 1024
# more candidates than this per row and column means a degenerate similarity (e.g. a
# collection of identical descriptors): the exact path is then cheaper
MAX_CANDIDATES_PER_ITEM = 32


@torch.no_grad()
def mnn(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    *,
    ratio: float | None = None,
    max_distance: float | None = None,
    tile: tuple[int, int] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of two descriptor sets (the D2-Net / hloc ``mnn`` matcher).

    ``desc0`` (N0, D) and ``desc1`` (N1, D): L2-normalised rows, same float dtype and device.
    Row ``i`` and column ``j`` match when ``j = argmax_j sim[i, :]`` and
    ``i = argmax_i sim[:, j]`` with ``sim = desc0 @ desc1.T`` and ties going to the first
    index, exactly as ``torch.max`` on the full matrix; ``sim`` is never held whole.

    ``ratio``: Lowe's test on distances sqrt(2 - 2 sim), in both directions (as hloc):
    best <= ratio * second best. ``max_distance``: best distance <= it.
    ``tile``: (rows, cols) of the similarity blocks; default by device.
    ``precision``: ``fp32`` computes every similarity in the descriptors' dtype; ``bf16``
    screens in bf16 and decides in fp32 (module docstring): the same matches. ``auto``
    screens where that is faster (:func:`uses_bf16_screen`). The screen applies to fp32
    descriptors with no negative entries (D2's post-ReLU descriptors) and no ratio test;
    anything else runs exact.

    Returns ``matches`` (M, 2) int64 [i0, i1] in increasing i0, and ``scores`` (M,) float32,
    the similarity of each match.
    """
    n0, n1 = desc0.shape[0], desc1.shape[0]
    dev = desc0.device
    if desc0.ndim != 2 or desc1.ndim != 2 or desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptor shapes {tuple(desc0.shape)} and {tuple(desc1.shape)} "
                         "do not match")
    if n0 == 0 or n1 == 0:
        return torch.empty(0, 2, dtype=torch.int64), torch.empty(0, dtype=torch.float32)
    tile = tile or DEFAULT_TILE.get(dev.type, DEFAULT_TILE["cuda"])
    if (uses_bf16_screen(precision, dev, n0, n1) and ratio is None
            and desc0.dtype == torch.float32 and desc1.dtype == torch.float32
            and bool(desc0.min() >= 0) and bool(desc1.min() >= 0)):
        found = _mnn_bf16_screen(desc0, desc1, tile)
        if found is not None:
            idx0, idx1, scores = found
            if max_distance is not None:
                near = _distance(scores.clone()) <= max_distance
                idx0, idx1, scores = idx0[near], idx1[near], scores[near]
            return torch.stack([idx0, idx1], 1).cpu(), scores.cpu()
    return _mnn_exact(desc0, desc1, ratio, max_distance, tile)


def _mnn_exact(desc0: torch.Tensor, desc1: torch.Tensor, ratio: float | None,
               max_distance: float | None, tile: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mnn` in the descriptors' own dtype, tile by tile, with running maxima."""
    n0, n1 = desc0.shape[0], desc1.shape[0]
    dev, dtype = desc0.device, desc0.dtype
    b0, b1 = tile
    b0, b1 = max(1, min(b0, n0)), max(1, min(b1, n1))
    second = ratio is not None

    # running best (and second best, for the ratio test) of every row and column
    row_v = torch.full((n0,), -torch.inf, dtype=dtype, device=dev)
    row_i = torch.zeros(n0, dtype=torch.int64, device=dev)
    col_v = torch.full((n1,), -torch.inf, dtype=dtype, device=dev)
    col_i = torch.zeros(n1, dtype=torch.int64, device=dev)
    row_v2 = torch.full_like(row_v, -torch.inf) if second else row_v
    col_v2 = torch.full_like(col_v, -torch.inf) if second else col_v
    buf = torch.empty(b0 * b1, dtype=dtype, device=dev)  # reused: no allocation per tile
    # strictly decreasing row weights b0..1, exact in this dtype (for the column argmax);
    # the ratio test needs the tile intact, so it takes the plain max(0)
    exact = 2 ** (round(-math.log2(torch.finfo(dtype).eps)) + 1)
    weight = (None if second or b0 > exact else
              torch.arange(b0, 0, -1, dtype=dtype, device=dev)[:, None])
    d1t = desc1.T
    for r0 in range(0, n0, b0):
        a = desc0[r0:r0 + b0]
        h = a.shape[0]
        rv, ri, rv2 = row_v[r0:r0 + h], row_i[r0:r0 + h], row_v2[r0:r0 + h]
        for c0 in range(0, n1, b1):
            w = min(b1, n1 - c0)
            s = buf[:h * w].view(h, w)
            torch.mm(a, d1t[:, c0:c0 + w], out=s)
            tv, ti = s.max(1)  # best column of each row within the tile (first on ties)
            cv_, ci_, cv2_ = col_v[c0:c0 + w], col_i[c0:c0 + w], col_v2[c0:c0 + w]
            if weight is not None:
                # best row of each column: max(0) with indices runs a slow strided loop on
                # the CPU (~10x the vectorised amax), so the tile is overwritten instead:
                # (s == column max) * weight peaks at the first row reaching the max
                cv = s.amax(0)
                s.eq_(cv).mul_(weight[:h])
                ci = (b0 - s.amax(0)).long()
            else:
                cv, ci = s.max(0)
            if second:
                # second best within the tile: hide each best once, take the max again
                rows = torch.arange(h, device=dev)
                s[rows, ti] = -torch.inf
                tv2 = s.amax(1)
                s[rows, ti] = tv
                cols = torch.arange(w, device=dev)
                s[ci, cols] = -torch.inf
                cv2 = s.amax(0)
                # merge top-2: the new second is the best of what the new best did not take
                rv2.copy_(torch.where(tv > rv, torch.maximum(rv, tv2), torch.maximum(rv2, tv)))
                cv2_.copy_(torch.where(cv > cv_, torch.maximum(cv_, cv2), torch.maximum(cv2_, cv)))
            # Tiles arrive in increasing index order along both axes, so a later tile only
            # wins when strictly greater: ties keep the first index, as torch.max does.
            better = tv > rv
            torch.where(better, ti + c0, ri, out=ri)
            torch.maximum(rv, tv, out=rv)
            better = cv > cv_
            torch.where(better, ci + r0, ci_, out=ci_)
            torch.maximum(cv_, cv, out=cv_)

    keep = col_i[row_i] == torch.arange(n0, device=dev)
    if max_distance is not None:
        keep &= _distance(row_v.clone()) <= max_distance
    if ratio is not None:
        d1 = _distance(row_v.clone())
        keep &= d1 <= ratio * _distance(row_v2.clone())
        keep &= d1 <= ratio * _distance(col_v2[row_i])  # the column's own second best
    idx0 = torch.nonzero(keep).squeeze(1)
    matches = torch.stack([idx0, row_i[idx0]], 1)
    return matches.cpu(), row_v[idx0].float().cpu()



# --------------------------------------------------------------------------- bf16 screen
def screen_margin(desc0: torch.Tensor, desc1: torch.Tensor) -> float:
    """``2e``: twice the largest error of one similarity computed from bf16 inputs.

    With u = 2^-8 (bf16 unit roundoff) and n = max|a| max|b| (which bounds both |a.b| and
    sum|a_k b_k|): rounding the inputs changes a.b by at most (2u + u^2) n, accumulating D
    products in fp32 by D 2^-24 n (doubled, for pairwise/blocked sums), and rounding the
    sum to bf16 by u n, counted twice should a GEMM round a partial sum once. 1 % on top
    absorbs the products of small terms. Twice this separates any two entries.
    """
    u = 2.0 ** -8
    n = float(desc0.norm(dim=1).max()) * float(desc1.norm(dim=1).max())
    return 2 * n * (2 * u + u * u + 2 * u + 2 * desc0.shape[1] * 2.0 ** -24) * 1.01


def _threshold_keys(best: torch.Tensor, margin: float) -> torch.Tensor:
    """int16 keys k such that (key >= k) holds for every bf16 value >= best - margin.

    ``best``: int16 keys of non-negative bf16 values, whose bit patterns are ordered
    like the values. best - margin is rounded down to bf16; below zero, everything passes.
    """
    t = best.view(torch.bfloat16).float() - margin
    t16 = t.bfloat16()
    k = t16.view(torch.int16) - (t16.float() > t).to(torch.int16)  # one bf16 step down
    return torch.where(t > 0, k, torch.full_like(k, torch.iinfo(torch.int16).min))


@contextmanager
def _single_rounding(device: torch.device) -> Iterator[None]:
    """cuBLAS may otherwise reduce split-K partial sums in bf16 (more roundings than bounded)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = old


def _mnn_bf16_screen(desc0: torch.Tensor, desc1: torch.Tensor, tile: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The exact MNN decision from bf16 similarities: (idx0, idx1, fp32 scores) of the matches.

    None when the candidates grow past :data:`MAX_CANDIDATES_PER_ITEM` (use the exact path).
    """
    n0, n1 = desc0.shape[0], desc1.shape[0]
    dev = desc0.device
    G = ROW_BLOCK
    margin = screen_margin(desc0, desc1)
    n0p = -(-n0 // G) * G
    a16 = torch.zeros(n0p, desc0.shape[1], dtype=torch.bfloat16, device=dev)
    a16[:n0] = desc0  # padding rows: similarity 0, never a row candidate (below)
    b16t = desc1.bfloat16().T
    b0 = max(G, tile[0] // G * G)
    b1 = max(1, tile[1])
    # running maxima as int16 keys: non-negative bf16 values order like their bit patterns
    row_best = torch.full((n0p,), torch.iinfo(torch.int16).min, dtype=torch.int16, device=dev)
    col_best = torch.full((n1,), torch.iinfo(torch.int16).min, dtype=torch.int16, device=dev)
    never = torch.iinfo(torch.int16).max  # the NaN pattern: no similarity reaches it
    buf = torch.empty(min(b0, n0p) * min(b1, n1), dtype=torch.bfloat16, device=dev)
    parts: list[tuple[torch.Tensor, ...]] = []
    count, limit = 0, MAX_CANDIDATES_PER_ITEM * (n0 + n1)
    with _single_rounding(dev):
        for r0 in range(0, n0p, b0):
            a = a16[r0:r0 + b0]
            h = a.shape[0]
            nb = h // G
            for c0 in range(0, n1, b1):
                w = min(b1, n1 - c0)
                s = buf[:h * w].view(h, w)
                torch.mm(a, b16t[:, c0:c0 + w], out=s)
                x = s.view(torch.int16)
                block_max = x.view(nb, G, w).amax(1)  # (nb, w): each column over G rows
                rb, cb = row_best[r0:r0 + h], col_best[c0:c0 + w]
                torch.maximum(rb, x.amax(1), out=rb)
                torch.maximum(cb, block_max.amax(0), out=cb)
                # thresholds from the running maxima: lower than the final ones, so the
                # candidates found here are a superset of this tile's true candidates
                tr = _threshold_keys(rb, margin)
                if r0 + h > n0:
                    tr[n0 - r0:] = never
                tc = _threshold_keys(cb, margin)
                blk, col = (block_max >= torch.minimum(tr.view(nb, G).amin(1)[:, None],
                                                      tc[None, :])).nonzero().unbind(1)
                # the G entries of each surviving block: (K_blocks, G)
                flat = (blk * (G * w) + col)[:, None] + torch.arange(0, G * w, w, device=dev)
                v = x.view(-1).index_select(0, flat.view(-1)).view(-1, G)
                is_row = v >= tr.view(nb, G).index_select(0, blk)
                is_col = v >= tc.index_select(0, col)[:, None]
                k = (is_row | is_col).view(-1).nonzero().squeeze(1)
                i = r0 + blk.index_select(0, k // G) * G + k % G
                parts.append((i, c0 + col.index_select(0, k // G),
                              is_row.view(-1).index_select(0, k), is_col.view(-1).index_select(0, k)))
                count += len(k)
                if count > limit:
                    return None
    i, j, is_row, is_col = (torch.cat(p) for p in zip(*parts, strict=True))
    real = i < n0  # padding rows can only be column candidates of all-zero columns
    if not bool(real.all()):
        i, j, is_row, is_col = i[real], j[real], is_row[real], is_col[real]
    # a row (column) with one candidate is decided; the others are re-scored in fp32
    ones = torch.ones_like(i, dtype=torch.int32)
    row_n = torch.zeros(n0, dtype=torch.int32, device=dev).index_add_(0, i, ones * is_row)
    col_n = torch.zeros(n1, dtype=torch.int32, device=dev).index_add_(0, j, ones * is_col)
    both = is_row & is_col
    row_open = torch.zeros(n0, dtype=torch.bool, device=dev).index_fill_(0, i[both], True)
    col_open = torch.zeros(n1, dtype=torch.bool, device=dev).index_fill_(0, j[both], True)
    row_open &= row_n > 1
    col_open &= col_n > 1
    need = ((is_row & row_open[i]) | (is_col & col_open[j])).nonzero().squeeze(1)
    value = torch.zeros(len(i), dtype=torch.float32, device=dev)
    value[need] = _dot(desc0, desc1, i[need], j[need])
    best_j = _first_argmax(i, j, value, is_row, n0)
    best_i = _first_argmax(j, i, value, is_col, n1)
    idx0 = (best_i[best_j] == torch.arange(n0, device=dev)).nonzero().squeeze(1)
    idx1 = best_j[idx0]
    return idx0, idx1, _dot(desc0, desc1, idx0, idx1)


def _dot(desc0: torch.Tensor, desc1: torch.Tensor, i: torch.Tensor, j: torch.Tensor
         ) -> torch.Tensor:
    """fp32 similarities desc0[i] . desc1[j], (K,), in cache-sized chunks."""
    out = torch.empty(len(i), dtype=torch.float32, device=desc0.device)
    for s in range(0, len(i), RESCORE_CHUNK):
        e = s + RESCORE_CHUNK
        torch.linalg.vecdot(desc0.index_select(0, i[s:e]), desc1.index_select(0, j[s:e]),
                            out=out[s:e])
    return out


def _first_argmax(group: torch.Tensor, other: torch.Tensor, value: torch.Tensor,
                  member: torch.Tensor, n: int) -> torch.Tensor:
    """For each group g < n: the smallest ``other`` among its members of largest ``value``."""
    v = torch.where(member, value, -math.inf)
    best = torch.full((n,), -math.inf, device=value.device).scatter_reduce(0, group, v, "amax")
    big = torch.iinfo(torch.int64).max
    first = torch.where(member & (v == best[group]), other, big)
    return torch.full((n,), big, dtype=torch.int64, device=value.device).scatter_reduce(
        0, group, first, "amin")
