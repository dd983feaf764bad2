"""Two images side by side with their matches, or verified inliers and rejected matches
(arrays in, PNG out)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from .arrays import check_rgb, check_rows, check_values
from .draw import (
    INLIER_COLOR,
    MIN_EDGE,
    REJECTED_COLOR,
    ShowResult,
    backdrop,
    check_out,
    figure,
    image_axes,
    pt,
    save,
    to_display,
)

UNVERIFIED_COLOR = "#ffb000"
GAP = 12  # pixels between the two images


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    matches: np.ndarray,
    out: str | os.PathLike,
    *,
    inliers: np.ndarray | None = None,
    config: str | None = None,
    verified: bool | None = None,
    names: tuple[str, str] | None = None,
    max_width: int = 2400,
    max_height: int = 1000,
) -> ShowResult:
    """Write ``out`` (PNG): the two images side by side at one height, in faded gray, with a
    line per match.

    ``image0``, ``image1``: (H, W, 3) uint8 RGB. ``keypoints0``, ``keypoints1``: (N0, 2) and
    (N1, 2) float x, y, pixel centre at integer coordinates. ``matches``: (M, 2) int, rows
    (index into keypoints0, index into keypoints1).

    Colours: without ``inliers`` and ``verified``, each line by its height in image 0 (a
    crossing line stands out); ``inliers`` ((M,) bool, the matches a verified two-view
    geometry kept): inliers green, rejected red, ``config`` (the geometry's name) in the
    heading; ``verified=False`` (no geometry is known for the pair): all lines orange.
    ``names`` head the picture. Returns its size and counts (``matches``; ``inliers``,
    ``rejected``, ``config``, ``verified`` when verification is known).
    """
    out = check_out(out)
    rgb0, rgb1 = check_rgb(image0, "image0"), check_rgb(image1, "image1")
    m = check_rows(matches, 2, "matches")
    if m.dtype.kind not in "iu":
        raise ValueError(f"matches: expected integer indices, got {m.dtype}")
    for k, kp in enumerate((keypoints0, keypoints1)):
        kp = check_rows(kp, 2, f"keypoints{k}")
        if len(m) and (m[:, k].min() < 0 or m[:, k].max() >= len(kp)):
            raise ValueError(f"matches[:, {k}] index past keypoints{k} ({len(kp)} keypoints)")
    inliers = check_values(inliers, len(m), "inliers")
    if inliers is not None:
        inliers = inliers.astype(bool)
        verified = True
    elif verified:
        raise ValueError("verified=True needs the inliers")

    (h0, w0), (h1, w1) = rgb0.shape[:2], rgb1.shape[:2]
    # both images at one height; enlarge small pairs, then fit the total width
    dh = min(max_height, max(h0, h1) * max(1.0, MIN_EDGE / max(h0, h1, (w0 + w1) / 2)))
    if dh * (w0 / h0 + w1 / h1) + GAP > max_width:
        dh = (max_width - GAP) / (w0 / h0 + w1 / h1)
    f0, f1 = dh / h0, dh / h1
    dw0, dw1, dhi = max(1, round(w0 * f0)), max(1, round(w1 * f1)), max(1, round(dh))
    canvas = np.full((dhi, dw0 + GAP + dw1, 3), 255, np.uint8)
    canvas[:, :dw0] = backdrop(rgb0, (dw0, dhi))
    canvas[:, dw0 + GAP:] = backdrop(rgb1, (dw1, dhi))

    top, pad = 40, 6
    fw, fh = canvas.shape[1] + 2 * pad, dhi + top + pad
    fig = figure(fw, fh)
    ax = image_axes(fig, canvas, pad, pad, fw, fh)

    p0 = to_display(np.asarray(keypoints0)[m[:, 0]], f0) if len(m) else np.zeros((0, 2))
    p1 = to_display(np.asarray(keypoints1)[m[:, 1]], f1) + [dw0 + GAP, 0] if len(m) else np.zeros((0, 2))
    lw = float(np.clip(1.6 * np.sqrt(150 / max(len(m), 1)), 0.5, 1.6))
    alpha = float(np.clip(0.9 * np.sqrt(300 / max(len(m), 1)), 0.35, 0.9))
    counts: dict[str, Any] = {"matches": int(len(m))}

    def draw(sel: np.ndarray, color: Any, a: float, width: float = lw) -> None:
        if isinstance(color, np.ndarray):  # one colour per match
            color = color[sel]
        segs = np.stack([p0[sel], p1[sel]], axis=1)
        ends = np.concatenate([p0[sel], p1[sel]])
        cols = np.concatenate([color, color]) if isinstance(color, np.ndarray) else color
        ax.add_collection(LineCollection(segs, colors=color, linewidths=pt(width), alpha=a))
        ax.scatter(ends[:, 0], ends[:, 1], s=pt(width * 2.6) ** 2, c=cols, alpha=min(1.0, a + 0.1),
                   linewidths=0)

    title = f"{names[0]}  —  {names[1]}:  " if names is not None else ""
    title += f"{len(m):,} matches"
    if verified is None:
        if len(m):
            draw(np.ones(len(m), bool), colormaps["turbo"](p0[:, 1] / max(dhi - 1, 1)), alpha)
    elif inliers is None:
        counts.update(inliers=None, verified=False)
        title += "  (not verified in the database)"
        if len(m):
            draw(np.ones(len(m), bool), UNVERIFIED_COLOR, alpha)
    else:
        k = int(inliers.sum())
        counts.update(inliers=k, rejected=int(len(m) - k), config=config, verified=True)
        title += f",  {k:,} inliers ({100 * k / max(len(m), 1):.0f}%)"
        if config is not None:
            title += f"  ·  {config}"
        # rejected first and fainter, so the inliers stay readable on top
        if (~inliers).any():
            draw(~inliers, REJECTED_COLOR, alpha * 0.7, lw * 0.8)
        if k:
            draw(inliers, INLIER_COLOR, min(1.0, alpha + 0.1))
        handles = [Line2D([], [], color=INLIER_COLOR, lw=2, label=f"inliers: {k:,}"),
                   Line2D([], [], color=REJECTED_COLOR, lw=2, label=f"rejected: {len(m) - k:,}")]
        ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.85)
    fig.text(pad / fw, 1 - 9 / fh, title, ha="left", va="top", fontsize=11, fontweight="bold")
    return save(fig, out, counts)
