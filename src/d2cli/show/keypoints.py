"""An image with its keypoints, coloured by score or by pyramid scale (arrays in, PNG out)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from ..errors import UsageError
from .arrays import check_rgb, check_rows, check_values
from .draw import (
    COLOR_BY,
    ShowResult,
    backdrop,
    check_out,
    figure,
    fit,
    image_axes,
    pixel_axes,
    pt,
    save,
    to_display,
)

SCALE_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf", "#bcbd22", "#7f7f7f"]


def check_color_by(color_by: str) -> None:
    if color_by not in COLOR_BY:
        raise UsageError(f"unknown colouring {color_by!r} (one of {', '.join(COLOR_BY)})")


def draw_keypoints(
    image: np.ndarray,
    keypoints: np.ndarray,
    out: str | os.PathLike,
    *,
    scores: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    color_by: str = "score",
    name: str | None = None,
    max_width: int = 1600,
    max_height: int = 1200,
) -> ShowResult:
    """Write ``out`` (PNG): ``image`` in faded gray with its keypoints.

    ``image``: (H, W, 3) uint8 RGB. ``keypoints``: (N, 2) float x, y in image pixels, pixel
    centre at integer coordinates (the features file's convention). ``scores``: (N,),
    needed for ``color_by="score"`` (colour scale: their 1-99 percentile, strongest on
    top). ``scales``: (N,) stored scales (1 / pyramid scale), needed for
    ``color_by="scale"`` (one colour and marker size per level). ``name`` heads the
    picture. The image is resampled to fit ``max_width`` x ``max_height`` (enlarged to an
    800 px long edge when smaller). Returns the picture's size and counts (``keypoints``,
    ``color_by``, and ``by_scale``: level -> count).
    """
    check_color_by(color_by)
    out = check_out(out)
    rgb = check_rgb(image)
    kp = check_rows(keypoints, 2, "keypoints")
    n = len(kp)
    scores = check_values(scores, n, "scores")
    scales = check_values(scales, n, "scales")
    if color_by == "score" and scores is None or color_by == "scale" and scales is None:
        raise ValueError(f"color_by={color_by!r} needs the keypoints' {color_by}s")

    h, w = rgb.shape[:2]
    f = fit(w, h, max_width, max_height)
    dw, dh = max(1, round(w * f)), max(1, round(h * f))
    side, top, pad = 150, 34, 6
    fw, fh = pad + dw + side, top + dh + pad
    fig = figure(fw, fh)
    ax = image_axes(fig, backdrop(rgb, (dw, dh)), pad, pad, fw, fh)
    heading = f"{name}  ({w}x{h})" if name is not None else f"{w}x{h}"
    fig.text(pad / fw, 1 - 8 / fh, heading, ha="left", va="top", fontsize=11, fontweight="bold")

    xy = to_display(kp, f) if n else np.zeros((0, 2))
    # marker diameter from the free area per keypoint: dense sets get small dots
    diameter = float(np.clip(0.45 * np.sqrt(dw * dh / max(n, 1)), 3.0, 9.0))
    counts: dict[str, Any] = {"keypoints": n, "color_by": color_by}
    if color_by == "score":
        assert scores is not None
        scores = scores.astype(np.float64)
        lo, hi = (np.percentile(scores, [1, 99]) if n else (0.0, 1.0))
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        order = np.argsort(scores, kind="stable")  # strongest drawn last, on top
        sc = ax.scatter(xy[order, 0], xy[order, 1], c=scores[order], cmap="plasma", norm=norm,
                        s=pt(diameter) ** 2, edgecolors="black", linewidths=pt(0.6))
        cax = pixel_axes(fig, pad + dw + 18, pad + dh * 0.1, 16, dh * 0.8, fw, fh)
        cb = fig.colorbar(sc, cax=cax)
        cb.set_label("score (1-99 percentile)", fontsize=9)
        cb.ax.tick_params(labelsize=8)
    else:
        assert scales is not None
        # stored scales are 1 / pyramid scale: 2.0 = found on the half-size image (larger support)
        levels = np.unique(scales) if n else np.zeros(0)
        handles, by_scale = [], {}
        for i, s in enumerate(sorted(levels, reverse=True)):  # coarse (big) first, fine on top
            sel = scales == s
            d = diameter * float(np.clip(np.sqrt(s), 0.6, 1.6))
            color = SCALE_PALETTE[i % len(SCALE_PALETTE)]
            ax.scatter(xy[sel, 0], xy[sel, 1], color=color, s=pt(d) ** 2, edgecolors="black",
                       linewidths=pt(0.6))
            label = f"{1 / s:g}x"
            by_scale[label] = int(sel.sum())
            handles.append(Line2D([], [], ls="", marker="o", markersize=pt(d), color=color,
                                  markeredgecolor="black", label=f"{label}: {int(sel.sum())}"))
        counts["by_scale"] = by_scale
        if handles:
            fig.legend(handles=handles, title="pyramid scale", loc="upper left", fontsize=9,
                       title_fontsize=9, bbox_to_anchor=((pad + dw + 8) / fw, 1 - top / fh),
                       frameon=False)
    ax.text(8, 8, f"{n:,} keypoints", ha="left", va="top", fontsize=11, color="black",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 3})
    return save(fig, out, counts)
