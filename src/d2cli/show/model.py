"""A sparse model: top and side views of its 3D points and cameras, histograms of track
lengths and reprojection errors (arrays in, PNG out)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .arrays import check_rows, check_values
from .draw import (
    CAMERA_COLOR,
    MAX_POINTS_DRAWN,
    ShowResult,
    check_out,
    figure,
    pt,
    save,
)


def _view_frame(cams_R: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Rows (a1, a2, up): ``up`` from the cameras (COLMAP's image y points down), else the
    points' flattest direction; a1 the main horizontal direction of the points."""
    up = -cams_R[:, 1, :].mean(0) if len(cams_R) else np.zeros(3)
    pts = xyz if len(xyz) >= 3 else np.zeros((0, 3))
    if np.linalg.norm(up) < 1e-6:
        if len(pts):
            up = np.linalg.eigh(np.cov(pts.T))[1][:, 0]
        else:
            up = np.array([0.0, -1.0, 0.0])
    up = up / np.linalg.norm(up)
    flat = pts - np.outer(pts @ up, up) if len(pts) else np.zeros((0, 3))
    if len(flat) >= 10:  # PCA of the central 90 %: a few far points must not pick the axis
        d = np.linalg.norm(flat - np.median(flat, axis=0), axis=1)
        flat = flat[d <= np.percentile(d, 90)]
    a1 = np.linalg.eigh(np.cov(flat.T))[1][:, -1] if len(flat) >= 3 else np.zeros(3)
    a1 = a1 - (a1 @ up) * up
    if np.linalg.norm(a1) < 1e-6:  # fall back to any horizontal direction
        a1 = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
    a1 /= np.linalg.norm(a1)
    return np.stack([a1, np.cross(up, a1), up])


def _limits(pts: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D view box: the points' 1-99 percentile (outliers would squash the plot), grown to
    the cameras, except cameras lying more than 5 box sizes away (a camera registered far
    off would squash it just the same)."""
    if len(pts):
        lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
        reach = 5 * float(np.max(hi - lo))
        near = np.all((cams >= lo - reach) & (cams <= hi + reach), axis=1) if len(cams) else []
        if len(cams) and np.any(near):
            lo, hi = np.minimum(lo, cams[near].min(0)), np.maximum(hi, cams[near].max(0))
    else:
        lo, hi = cams.min(0), cams.max(0)
    span = np.maximum(hi - lo, 1e-6 if not len(pts) else 1e-9)
    return lo - 0.05 * span, hi + 0.05 * span


def _equal_aspect(lo: np.ndarray, hi: np.ndarray, box: Any, fw: int, fh: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Grow the short side of the view box so one unit is as long on both axes and the
    axes keep their full size (matplotlib would otherwise shrink them or drop our limits)."""
    want = (box.width * fw) / (box.height * fh)  # axes width / height in pixels
    span, mid = hi - lo, (hi + lo) / 2
    if span[0] / span[1] < want:
        span = np.array([span[1] * want, span[1]])
    else:
        span = np.array([span[0], span[0] / want])
    return mid - span / 2, mid + span / 2




def draw_model(
    points: np.ndarray,
    rotations: np.ndarray,
    centres: np.ndarray,
    out: str | os.PathLike,
    *,
    colors: np.ndarray | None = None,
    track_lengths: np.ndarray | None = None,
    errors: np.ndarray | None = None,
    directions: np.ndarray | None = None,
    title: str | None = None,
    width: int = 1600,
) -> ShowResult:
    """Write ``out`` (PNG, ``width`` x 0.72 ``width``): a top and a side view of the 3D
    points with the camera centres and viewing directions, and histograms of track lengths
    and reprojection errors.

    ``points``: (N, 3) float world coordinates. ``rotations``: (K, 3, 3) cam_from_world
    rotation matrices (COLMAP's: camera x right, y down, z forward) and ``centres``: (K, 3)
    camera centres, of the K cameras drawn. ``colors``: (N, 3) uint8 RGB (None or all black:
    one colour). ``track_lengths``: (N,) int, ``errors``: (N,) float mean reprojection
    error in pixels (None: that histogram is left empty). ``directions``: (K, 3) viewing
    directions (default the rotations' z rows). ``title`` heads the picture (default:
    the counts).

    "Up" is the cameras' mean up direction (no gravity is known); the horizontal axis is
    the points' main direction. Views keep the points' 1-99 percentile box. Returns the
    size and counts (``points3D``, ``cameras``, ``mean_track_length``,
    ``points_outside_view``: the most points one view leaves out).
    """
    out = check_out(out)
    xyz = check_rows(points, 3, "points").astype(np.float64)
    n_pts = len(xyz)
    cams_R = np.asarray(rotations, dtype=np.float64)
    if cams_R.ndim != 3 or cams_R.shape[1:] != (3, 3):
        raise ValueError(f"rotations: expected shape (K, 3, 3), got {cams_R.shape}")
    centres = check_rows(centres, 3, "centres", len(cams_R)).astype(np.float64)
    dirs = check_rows(cams_R[:, 2, :] if directions is None else directions, 3, "directions",
                      len(cams_R)).astype(np.float64)
    if not n_pts and not len(centres):
        raise ValueError("nothing to draw: no points and no cameras")
    rgb = (np.zeros((n_pts, 3)) if colors is None
           else check_rows(colors, 3, "colors", n_pts).astype(np.float64) / 255)
    track = check_values(track_lengths, n_pts, "track_lengths")
    track = np.zeros(0, np.int64) if track is None else track.astype(np.int64)
    err = check_values(errors, n_pts, "errors")
    err = np.zeros(0) if err is None else err.astype(np.float64)

    frame = _view_frame(cams_R, xyz)
    # origin at the points' median: ticks read as distances, not as 0.9705, 0.9706, ...
    origin = np.median(xyz, axis=0) if n_pts else centres.mean(0)
    P, C, D = (xyz - origin) @ frame.T, (centres - origin) @ frame.T, dirs @ frame.T

    fw = int(width)
    fh = int(round(fw * 0.72))
    fig = figure(fw, fh)
    gs = fig.add_gridspec(2, 2, height_ratios=[2.1, 1], left=0.05, right=0.985, bottom=0.07,
                          top=0.9, hspace=0.32, wspace=0.14)
    drawn = np.arange(n_pts)
    if n_pts > MAX_POINTS_DRAWN:
        drawn = np.sort(np.random.default_rng(0).choice(n_pts, MAX_POINTS_DRAWN, replace=False))
    colored = bool(n_pts) and float(rgb.max()) > 0  # models mapped without extract_colors are black
    point_px = float(np.clip(1800 / np.sqrt(max(len(drawn), 1)), 1.5, 5.0))
    outside = 0
    for col, (axes_idx, name, labels) in enumerate((
            ((0, 1), "top view", ("main horizontal axis", "horizontal (right-handed)")),
            ((0, 2), "side view", ("main horizontal axis", "up (mean camera up)")))):
        ax = fig.add_subplot(gs[0, col])
        p2, c2, d2 = P[:, axes_idx], C[:, axes_idx], D[:, axes_idx]
        lo, hi = _limits(p2, c2)
        lo, hi = _equal_aspect(lo, hi, ax.get_position(), fw, fh)
        out_here = int(np.sum(np.any((p2 < lo) | (p2 > hi), axis=1)))
        cams_out = int(np.sum(np.any((c2 < lo) | (c2 > hi), axis=1)))
        outside = max(outside, out_here)
        ax.scatter(p2[drawn, 0], p2[drawn, 1], s=pt(point_px) ** 2, linewidths=0,
                   c=rgb[drawn] if colored else "#1f4e9c", alpha=0.6 if colored else 0.45,
                   rasterized=True)
        if len(c2):
            arrow = 0.07 * float(np.max(hi - lo))
            norms = np.linalg.norm(d2, axis=1, keepdims=True)
            d2n = np.where(norms > 1e-9, d2 / np.maximum(norms, 1e-12), 0.0)
            segs = np.stack([c2, c2 + arrow * d2n], axis=1)
            ax.add_collection(LineCollection(segs, colors=CAMERA_COLOR, linewidths=pt(1.6)))
            ax.scatter(c2[:, 0], c2[:, 1], s=pt(6) ** 2, color=CAMERA_COLOR, edgecolors="black",
                       linewidths=pt(0.6), zorder=3)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(labels[0], fontsize=9)
        ax.set_ylabel(labels[1], fontsize=9)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(style="sci", scilimits=(-3, 4))  # short ticks at any model scale
        sub = f"{name}: {n_pts:,} points, {len(C)} cameras"
        hidden = [f"{k:,} {what}{'s' if k > 1 else ''}"
                  for k, what in ((out_here, "point"), (cams_out, "camera")) if k]
        if hidden:
            sub += f" ({' and '.join(hidden)} outside the view)"
        ax.set_title(sub, fontsize=10)
        ax.grid(alpha=0.25)
    if len(C):
        fig.legend(handles=[Line2D([], [], color=CAMERA_COLOR, marker="o", markeredgecolor="black",
                                   lw=1.5, label="camera centre and viewing direction")],
                   loc="upper right", fontsize=9, frameon=False, bbox_to_anchor=(0.985, 0.955))

    ax = fig.add_subplot(gs[1, 0])
    if len(track):
        cap = int(max(np.percentile(track, 99.5), 2))
        bins = np.arange(1.5, cap + 1.5 + 1)
        ax.hist(np.minimum(track, cap), bins=bins, color="#4c72b0", edgecolor="white")
        ax.set_xlim(1.5, max(cap, 6) + 0.5)  # a one-bar histogram of a tiny model stays narrow
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"track length: mean {track.mean():.2f}, median {np.median(track):g}"
                     + (f" (last bar: {cap}+)" if track.max() > cap else ""), fontsize=10)
    ax.set_xlabel("images observing a 3D point", fontsize=9)
    ax.set_ylabel("3D points", fontsize=9)
    ax.tick_params(labelsize=8)

    ax = fig.add_subplot(gs[1, 1])
    good = err[np.isfinite(err) & (err >= 0)]
    if len(good):
        top_err = float(max(np.percentile(good, 99), 1e-3))
        ax.hist(np.minimum(good, top_err), bins=40, range=(0, top_err), color="#dd8452",
                edgecolor="white")
        ax.set_title(f"reprojection error: mean {good.mean():.2f} px, median {np.median(good):.2f} px"
                     + (" (last bar: 99th pct+)" if good.max() > top_err else ""), fontsize=10)
    ax.set_xlabel("mean reprojection error of a 3D point (px)", fontsize=9)
    ax.set_ylabel("3D points", fontsize=9)
    ax.tick_params(labelsize=8)

    mean_track = float(track.mean()) if len(track) else 0.0
    if title is None:
        title = f"{len(C)} cameras  ·  {n_pts:,} points" + (
            f"  ·  mean track length {mean_track:.2f}" if len(track) else "")
    fig.text(0.05, 0.985, title, ha="left", va="top", fontsize=11, fontweight="bold")
    return save(fig, out, {"points3D": n_pts, "cameras": len(C),
                           "mean_track_length": round(mean_track, 4),
                           "points_outside_view": outside})
