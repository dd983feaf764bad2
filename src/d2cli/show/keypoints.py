"""``d2 show keypoints``: an image with its keypoints, coloured by score or scale."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from ..errors import UsageError
from ..images import load_rgb
from ..io.features import image_folder
from .canvas import (
    COLOR_BY,
    ShowResult,
    _backdrop,
    _check_out,
    _check_size,
    _figure,
    _fit,
    _image_axes,
    _locate,
    _open_features,
    _pixel_axes,
    _pt,
    _save,
    _to_display,
)


def show_keypoints(
    image: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    out: str | os.PathLike = "keypoints.png",
    *,
    color_by: str = "score",
    image_dir: str | os.PathLike | None = None,
    max_width: int = 1600,
    max_height: int = 1200,
) -> ShowResult:
    """Draw one image with its keypoints coloured by score or by pyramid scale.

    ``image``: a name as keyed in the features file (found under ``image_dir``, default
    the features file's image root) or a path to the image file.
    """
    if color_by not in COLOR_BY:
        raise UsageError(f"unknown colouring {color_by!r} (one of {', '.join(COLOR_BY)})")
    out = _check_out(out)
    with _open_features(features) as ff:
        loc = _locate(image, ff.__contains__, image_folder(ff, image_dir), f"features file {ff.path}")
        feats = ff[loc.name]
    rgb = load_rgb(loc.path)
    _check_size(loc, rgb, tuple(int(v) for v in feats.image_size[:2]), f"features file {features}")

    h, w = rgb.shape[:2]
    f = _fit(w, h, max_width, max_height)
    dw, dh = max(1, round(w * f)), max(1, round(h * f))
    side, top, pad = 150, 34, 6
    fw, fh = pad + dw + side, top + dh + pad
    fig = _figure(fw, fh)
    ax = _image_axes(fig, _backdrop(rgb, (dw, dh)), pad, pad, fw, fh)
    fig.text(pad / fw, 1 - 8 / fh, f"{loc.name}  ({w}x{h})", ha="left", va="top", fontsize=11,
             fontweight="bold")

    n = len(feats)
    xy = _to_display(feats.keypoints[:, :2], f) if n else np.zeros((0, 2))
    # marker diameter from the free area per keypoint: dense sets get small dots
    diameter = float(np.clip(0.45 * np.sqrt(dw * dh / max(n, 1)), 3.0, 9.0))
    counts: dict[str, Any] = {"name": loc.name, "image": str(loc.path), "keypoints": n,
                              "color_by": color_by}
    if color_by == "score":
        scores = feats.scores.astype(np.float64)
        lo, hi = (np.percentile(scores, [1, 99]) if n else (0.0, 1.0))
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        order = np.argsort(scores, kind="stable")  # strongest drawn last, on top
        sc = ax.scatter(xy[order, 0], xy[order, 1], c=scores[order], cmap="plasma", norm=norm,
                        s=_pt(diameter) ** 2, edgecolors="black", linewidths=_pt(0.6))
        cax = _pixel_axes(fig, pad + dw + 18, pad + dh * 0.1, 16, dh * 0.8, fw, fh)
        cb = fig.colorbar(sc, cax=cax)
        cb.set_label("score (1-99 percentile)", fontsize=9)
        cb.ax.tick_params(labelsize=8)
    else:
        # stored scales are 1 / pyramid scale: 2.0 = found on the half-size image (larger support)
        levels = np.unique(feats.scales) if n else np.zeros(0)
        palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#17becf", "#bcbd22", "#7f7f7f"]
        handles, by_scale = [], {}
        for i, s in enumerate(sorted(levels, reverse=True)):  # coarse (big) first, fine on top
            sel = feats.scales == s
            d = diameter * float(np.clip(np.sqrt(s), 0.6, 1.6))
            color = palette[i % len(palette)]
            ax.scatter(xy[sel, 0], xy[sel, 1], color=color, s=_pt(d) ** 2, edgecolors="black",
                       linewidths=_pt(0.6))
            label = f"{1 / s:g}x"
            by_scale[label] = int(sel.sum())
            handles.append(Line2D([], [], ls="", marker="o", markersize=_pt(d), color=color,
                                  markeredgecolor="black", label=f"{label}: {int(sel.sum())}"))
        counts["by_scale"] = by_scale
        if handles:
            fig.legend(handles=handles, title="pyramid scale", loc="upper left", fontsize=9,
                       title_fontsize=9, bbox_to_anchor=((pad + dw + 8) / fw, 1 - top / fh),
                       frameon=False)
    ax.text(8, 8, f"{n:,} keypoints", ha="left", va="top", fontsize=11, color="black",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 3})
    width, height = _save(fig, out)
    return ShowResult(out, width, height, counts)
