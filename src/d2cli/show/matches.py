"""``d2 show matches``: two images side by side with their matches (or verified inliers)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from ..colmap.database import open_database
from ..colmap.keypoints import from_colmap
from ..errors import BadFile, InputNotFound, MissingName
from ..images import load_rgb
from ..io.features import FeatureFile, MatchFile, image_folder
from .canvas import (
    INLIER_COLOR,
    MIN_EDGE,
    REJECTED_COLOR,
    ShowResult,
    _backdrop,
    _check_out,
    _check_size,
    _figure,
    _image_axes,
    _locate,
    _Located,
    _open_features,
    _pt,
    _save,
    _to_display,
)


@dataclass
class _PairData:
    kp0: np.ndarray
    kp1: np.ndarray
    matches: np.ndarray  # (M, 2)
    inlier: np.ndarray | None  # (M,) bool, None without a verified geometry
    config: str | None


def _pair_from_db(db: Any, loc0: _Located, loc1: _Located, db_path: Path) -> _PairData:
    import pycolmap

    id0 = db.read_image_with_name(loc0.name).image_id
    id1 = db.read_image_with_name(loc1.name).image_id
    if not db.exists_matches(id0, id1):
        raise MissingName(f"pair {loc0.name} {loc1.name}: no matches in {db_path}")
    matches = np.asarray(db.read_matches(id0, id1), dtype=np.int64).reshape(-1, 2)
    kp0 = from_colmap(np.asarray(db.read_keypoints(id0))[:, :2])
    kp1 = from_colmap(np.asarray(db.read_keypoints(id1))[:, :2])
    inlier, config = None, None
    if db.exists_two_view_geometry(id0, id1):
        tvg = db.read_two_view_geometry(id0, id1)  # columns already in (id0, id1) order
        config = pycolmap.TwoViewGeometryConfiguration(int(tvg.config)).name
        good = np.asarray(tvg.inlier_matches, dtype=np.int64).reshape(-1, 2)
        inlier = _rows_in(matches, good)
    return _PairData(kp0, kp1, matches, inlier, config)


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a: is it a row of b? (int index pairs)"""
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    base = int(max(a.max(), b.max())) + 1
    return np.isin(a[:, 0] * base + a[:, 1], b[:, 0] * base + b[:, 1])


def show_matches(
    name0: str | os.PathLike,
    name1: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    matches: str | os.PathLike = "matches.h5",
    *,
    db: str | os.PathLike | None = None,
    out: str | os.PathLike = "matches.png",
    image_dir: str | os.PathLike | None = None,
    max_width: int = 2400,
    max_height: int = 1000,
) -> ShowResult:
    """Draw two images side by side with their match lines.

    Without ``db``: the matches of the matches file, coloured by their height in the first
    image (a crossing line stands out from its neighbours). With ``db`` (a COLMAP database
    from ``d2 colmap-import``): keypoints and matches come from the database, inliers of
    the verified two-view geometry are green, rejected matches red. The features file is
    then only read for the image folder (``image_dir`` replaces it).
    """
    out = _check_out(out)
    db_path = Path(db) if db is not None else None
    if db_path is not None and not db_path.is_file():
        raise InputNotFound(f"{db_path}: database not found")
    need_features = db_path is None or image_dir is None
    if need_features or Path(features).is_file():
        ff: FeatureFile | None = _open_features(features)
    else:
        ff = None
    try:
        root = image_folder(ff, image_dir)
        if db_path is not None:
            with open_database(db_path, create=False) as cdb:
                def known(n: str) -> bool:
                    return cdb.read_image_with_name(n) is not None
                loc0 = _locate(name0, known, root, f"database {db_path}")
                loc1 = _locate(name1, known, root, f"database {db_path}")
                sizes = [_db_size(cdb, loc.name) for loc in (loc0, loc1)]
                pair = _pair_from_db(cdb, loc0, loc1, db_path)
            where = f"database {db_path}"
        else:
            assert ff is not None
            where = f"features file {ff.path}"
            loc0 = _locate(name0, ff.__contains__, root, where)
            loc1 = _locate(name1, ff.__contains__, root, where)
            with MatchFile(matches) as mf:
                m, _ = mf.get(loc0.name, loc1.name)
            f0, f1 = ff[loc0.name], ff[loc1.name]
            sizes = [tuple(int(v) for v in f.image_size[:2]) for f in (f0, f1)]
            pair = _PairData(f0.keypoints[:, :2], f1.keypoints[:, :2], m, None, None)
    finally:
        if ff is not None:
            ff.close()
    for k, kp in ((0, pair.kp0), (1, pair.kp1)):
        if len(pair.matches) and pair.matches[:, k].max() >= len(kp):
            raise BadFile(f"{where}: matches of {(loc0, loc1)[k].name} index past its keypoints")

    rgb0, rgb1 = load_rgb(loc0.path), load_rgb(loc1.path)
    _check_size(loc0, rgb0, sizes[0], where)
    _check_size(loc1, rgb1, sizes[1], where)
    (h0, w0), (h1, w1) = rgb0.shape[:2], rgb1.shape[:2]
    gap = 12
    # both images at one height; enlarge small pairs, then fit the total width
    dh = min(max_height, max(h0, h1) * max(1.0, MIN_EDGE / max(h0, h1, (w0 + w1) / 2)))
    if dh * (w0 / h0 + w1 / h1) + gap > max_width:
        dh = (max_width - gap) / (w0 / h0 + w1 / h1)
    f0, f1 = dh / h0, dh / h1
    dw0, dw1, dhi = max(1, round(w0 * f0)), max(1, round(w1 * f1)), max(1, round(dh))
    canvas = np.full((dhi, dw0 + gap + dw1, 3), 255, np.uint8)
    canvas[:, :dw0] = _backdrop(rgb0, (dw0, dhi))
    canvas[:, dw0 + gap:] = _backdrop(rgb1, (dw1, dhi))

    top, pad = 40, 6
    fw, fh = canvas.shape[1] + 2 * pad, dhi + top + pad
    fig = _figure(fw, fh)
    ax = _image_axes(fig, canvas, pad, pad, fw, fh)

    m = pair.matches
    p0 = _to_display(pair.kp0[m[:, 0]], f0) if len(m) else np.zeros((0, 2))
    p1 = _to_display(pair.kp1[m[:, 1]], f1) + [dw0 + gap, 0] if len(m) else np.zeros((0, 2))
    lw = float(np.clip(1.6 * np.sqrt(150 / max(len(m), 1)), 0.5, 1.6))
    alpha = float(np.clip(0.9 * np.sqrt(300 / max(len(m), 1)), 0.35, 0.9))
    counts: dict[str, Any] = {"name0": loc0.name, "name1": loc1.name, "matches": int(len(m))}

    def draw(sel: np.ndarray, color: Any, a: float, width: float = lw) -> None:
        if isinstance(color, np.ndarray):  # one colour per match
            color = color[sel]
        segs = np.stack([p0[sel], p1[sel]], axis=1)
        ends = np.concatenate([p0[sel], p1[sel]])
        cols = np.concatenate([color, color]) if isinstance(color, np.ndarray) else color
        ax.add_collection(LineCollection(segs, colors=color, linewidths=_pt(width), alpha=a))
        ax.scatter(ends[:, 0], ends[:, 1], s=_pt(width * 2.6) ** 2, c=cols, alpha=min(1.0, a + 0.1),
                   linewidths=0)

    title = f"{loc0.name}  —  {loc1.name}:  {len(m):,} matches"
    if db_path is None:
        if len(m):
            from matplotlib import colormaps

            draw(np.ones(len(m), bool), colormaps["turbo"](p0[:, 1] / max(dhi - 1, 1)), alpha)
    elif pair.inlier is None:
        counts.update(inliers=None, verified=False)
        title += "  (not verified in the database)"
        if len(m):
            draw(np.ones(len(m), bool), "#ffb000", alpha)
    else:
        k = int(pair.inlier.sum())
        counts.update(inliers=k, rejected=int(len(m) - k), config=pair.config, verified=True)
        title += f",  {k:,} inliers ({100 * k / max(len(m), 1):.0f}%)  ·  {pair.config}"
        # rejected first and fainter, so the inliers stay readable on top
        if (~pair.inlier).any():
            draw(~pair.inlier, REJECTED_COLOR, alpha * 0.7, lw * 0.8)
        if k:
            draw(pair.inlier, INLIER_COLOR, min(1.0, alpha + 0.1))
        handles = [Line2D([], [], color=INLIER_COLOR, lw=2, label=f"inliers: {k:,}"),
                   Line2D([], [], color=REJECTED_COLOR, lw=2, label=f"rejected: {len(m) - k:,}")]
        ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.85)
    fig.text(pad / fw, 1 - 9 / fh, title, ha="left", va="top", fontsize=11, fontweight="bold")
    width, height = _save(fig, out)
    return ShowResult(out, width, height, counts)


def _db_size(db: Any, name: str) -> tuple[int, int] | None:
    im = db.read_image_with_name(name)
    cam = db.read_camera(im.camera_id)
    return (int(cam.width), int(cam.height)) if cam is not None else None
