"""Pictures of keypoints, matches and sparse models (``d2 show``), as PNG files.

Choices made for readability, whatever the input:

* Photos are drawn in faded gray so that the coloured overlay reads the same on any photo.
* Each photo is resampled with Pillow to its size in the picture before drawing (one drawn
  pixel = one output pixel): a 4000 px photo costs no more than a small one, and markers
  and lines keep their on-screen size. Images under 800 px are enlarged so that the
  overlay is not cramped; marker sizes and line widths shrink as the count grows.
* matplotlib's object API on the Agg canvas, never ``pyplot``: no display is needed and
  no global figure state is kept between calls.
* Keypoints are in the features file's convention (pixel centre at integer coordinates);
  COLMAP's (+0.5) is undone when they come from a database.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .colmap.database import open_database
from .errors import BadFile, EmptyInput, InputNotFound, MissingName, OutputError, UsageError
from .images import load_rgb
from .io.atomic import write_atomic
from .io.colmap_model import read_model
from .io.features import FeatureFile, MatchFile

DPI = 100
MIN_EDGE = 800  # smaller images are enlarged to this long edge
COLOR_BY = ("score", "scale")
INLIER_COLOR = "#1fd14a"
REJECTED_COLOR = "#ff2a2a"
CAMERA_COLOR = "#d62728"
MAX_POINTS_DRAWN = 200_000  # a denser scatter looks the same and costs seconds more


@dataclass
class ShowResult:
    """The picture written and what it shows (counts for the CLI summary)."""

    out: Path
    width: int
    height: int
    counts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "width": self.width, "height": self.height, **self.counts}


# --------------------------------------------------------------------------- shared pieces
def _pt(px: float) -> float:
    """Pixels -> points at DPI (matplotlib sizes are in points)."""
    return px * 72.0 / DPI


def _fit(w: int, h: int, max_w: int, max_h: int) -> float:
    """Display factor: fit into max_w x max_h, enlarge small images up to MIN_EDGE."""
    return min(max_w / w, max_h / h, max(1.0, MIN_EDGE / max(w, h)))


def _backdrop(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Faded gray (H, W, 3) uint8 at ``size`` = (W, H)."""
    g = Image.fromarray(rgb).convert("L").resize(size, Image.Resampling.LANCZOS)
    faded = 64 + 0.6 * np.asarray(g, dtype=np.float32)  # 0..255 -> 64..217: overlay stays visible
    return np.repeat(faded.astype(np.uint8)[:, :, None], 3, axis=2)


def _to_display(xy: np.ndarray, factor: float) -> np.ndarray:
    """Original pixel coords (centre at integers) -> display pixel coords, same convention."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * factor - 0.5


def _figure(width: int, height: int) -> Figure:
    # +0.01 px: figsize * dpi is truncated when saving; never lose the last pixel row
    fig = Figure(figsize=((width + 0.01) / DPI, (height + 0.01) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _pixel_axes(fig: Figure, left: float, bottom: float, w: float, h: float, fw: int, fh: int):
    """Axes placed in figure pixels (origin bottom-left)."""
    return fig.add_axes((left / fw, bottom / fh, w / fw, h / fh))


def _image_axes(fig: Figure, backdrop: np.ndarray, left: int, bottom: int, fw: int, fh: int):
    h, w = backdrop.shape[:2]
    ax = _pixel_axes(fig, left, bottom, w, h, fw, fh)
    ax.imshow(backdrop, interpolation="nearest")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    return ax


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: pictures are written as PNG; name the output *.png")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder")
    return out


def _save(fig: Figure, out: Path) -> tuple[int, int]:
    """Write the PNG atomically (temporary file + rename): never a half-written picture."""
    with write_atomic(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    w, h = fig.canvas.get_width_height()
    return int(w), int(h)


@dataclass
class _Located:
    name: str  # as keyed in the features file / database
    path: Path  # the image file


def _image_root(ff: FeatureFile | None, image_dir: str | os.PathLike | None) -> Path | None:
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise InputNotFound(f"{image_dir}: image folder not found")
        return Path(image_dir)
    root = ff.attrs.get("image_root") if ff is not None else None
    return Path(root) if root else None


def _locate(image: str | os.PathLike, known: Callable[[str], bool], root: Path | None,
            where: str) -> _Located:
    """IMAGE as a name in ``where`` (the image under ``root``) or as a path to an image file."""
    text = str(image)
    if known(text):
        if root is None:
            raise InputNotFound(f"{text}: no image folder recorded in {where}; pass --image-dir")
        path = root / text
        if not path.is_file():
            raise InputNotFound(f"{path}: image not found (pass --image-dir if the images moved)")
        return _Located(text, path)
    p = Path(image)
    if p.is_file():
        candidates = []
        if root is not None:
            try:
                candidates.append(p.resolve().relative_to(root.resolve()).as_posix())
            except ValueError:
                pass
        candidates.append(p.name)
        for name in candidates:
            if known(name):
                return _Located(name, p)
    raise MissingName(f"{text}: not in {where}")


def _check_size(loc: _Located, rgb: np.ndarray, size_wh: tuple[int, int] | None, where: str) -> None:
    """Keypoints of another image size would be drawn in the wrong places."""
    if size_wh is None or min(size_wh) <= 0:
        return
    h, w = rgb.shape[:2]
    if (w, h) != tuple(size_wh):
        raise BadFile(f"{loc.path} is {w}x{h} but {where} has {loc.name} as "
                      f"{size_wh[0]}x{size_wh[1]}; wrong image or --image-dir?")


def _open_features(features: str | os.PathLike) -> FeatureFile:
    if not Path(features).is_file():
        raise InputNotFound(f"{features}: features file not found")
    return FeatureFile(features)


# --------------------------------------------------------------------------- keypoints
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
        loc = _locate(image, ff.__contains__, _image_root(ff, image_dir), f"features file {ff.path}")
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


# --------------------------------------------------------------------------- matches
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
    kp0 = np.asarray(db.read_keypoints(id0))[:, :2] - 0.5  # COLMAP: pixel centre at +0.5
    kp1 = np.asarray(db.read_keypoints(id1))[:, :2] - 0.5
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
        root = _image_root(ff, image_dir)
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
            if not Path(matches).is_file():
                raise InputNotFound(f"{matches}: matches file not found")
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


# --------------------------------------------------------------------------- model
def _read_model(model_dir: Path) -> Any:
    return read_model(model_dir)


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


def show_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike = "model.png",
    *,
    width: int = 1600,
) -> ShowResult:
    """Draw a COLMAP model: a top and a side view of the 3D points with the camera centres
    and viewing directions, and histograms of track lengths and reprojection errors.

    "Up" is the cameras' mean up direction (no gravity is known); the horizontal axis is
    the points' main direction. Views keep the points' 1-99 percentile box.
    """
    out = _check_out(out)
    model_dir = Path(model_dir)
    rec = _read_model(model_dir)
    ids = list(rec.point3D_ids())
    n_pts = len(ids)
    reg = [rec.images[i] for i in rec.reg_image_ids()]
    if not n_pts and not reg:
        raise EmptyInput(f"{model_dir}: the model has no registered images and no 3D points")
    xyz = np.array([rec.points3D[i].xyz for i in ids], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([rec.points3D[i].color for i in ids], dtype=np.float64).reshape(-1, 3) / 255
    track = np.array([rec.points3D[i].track.length() for i in ids], dtype=np.int64)
    err = np.array([rec.points3D[i].error for i in ids], dtype=np.float64)
    poses = [im.cam_from_world() for im in reg]
    cams_R = np.array([p.rotation.matrix() for p in poses]).reshape(-1, 3, 3)
    centres = np.array([im.projection_center() for im in reg], dtype=np.float64).reshape(-1, 3)
    dirs = np.array([im.viewing_direction() for im in reg], dtype=np.float64).reshape(-1, 3)

    frame = _view_frame(cams_R, xyz)
    # origin at the points' median: ticks read as distances, not as 0.9705, 0.9706, ...
    origin = np.median(xyz, axis=0) if n_pts else centres.mean(0)
    P, C, D = (xyz - origin) @ frame.T, (centres - origin) @ frame.T, dirs @ frame.T

    fw = int(width)
    fh = int(round(fw * 0.72))
    fig = _figure(fw, fh)
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
        ax.scatter(p2[drawn, 0], p2[drawn, 1], s=_pt(point_px) ** 2, linewidths=0,
                   c=rgb[drawn] if colored else "#1f4e9c", alpha=0.6 if colored else 0.45,
                   rasterized=True)
        if len(c2):
            arrow = 0.07 * float(np.max(hi - lo))
            norms = np.linalg.norm(d2, axis=1, keepdims=True)
            d2n = np.where(norms > 1e-9, d2 / np.maximum(norms, 1e-12), 0.0)
            segs = np.stack([c2, c2 + arrow * d2n], axis=1)
            ax.add_collection(LineCollection(segs, colors=CAMERA_COLOR, linewidths=_pt(1.6)))
            ax.scatter(c2[:, 0], c2[:, 1], s=_pt(6) ** 2, color=CAMERA_COLOR, edgecolors="black",
                       linewidths=_pt(0.6), zorder=3)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(labels[0], fontsize=9)
        ax.set_ylabel(labels[1], fontsize=9)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(style="sci", scilimits=(-3, 4))  # short ticks at any model scale
        sub = f"{name}: {n_pts:,} points, {len(reg)} cameras"
        hidden = [f"{k:,} {what}{'s' if k > 1 else ''}"
                  for k, what in ((out_here, "point"), (cams_out, "camera")) if k]
        if hidden:
            sub += f" ({' and '.join(hidden)} outside the view)"
        ax.set_title(sub, fontsize=10)
        ax.grid(alpha=0.25)
    if len(c2):
        fig.legend(handles=[Line2D([], [], color=CAMERA_COLOR, marker="o", markeredgecolor="black",
                                   lw=1.5, label="camera centre and viewing direction")],
                   loc="upper right", fontsize=9, frameon=False, bbox_to_anchor=(0.985, 0.955))

    ax = fig.add_subplot(gs[1, 0])
    if n_pts:
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
    good = err[np.isfinite(err) & (err >= 0)] if n_pts else err
    if len(good):
        top_err = float(max(np.percentile(good, 99), 1e-3))
        ax.hist(np.minimum(good, top_err), bins=40, range=(0, top_err), color="#dd8452",
                edgecolor="white")
        ax.set_title(f"reprojection error: mean {good.mean():.2f} px, median {np.median(good):.2f} px"
                     + (" (last bar: 99th pct+)" if good.max() > top_err else ""), fontsize=10)
    ax.set_xlabel("mean reprojection error of a 3D point (px)", fontsize=9)
    ax.set_ylabel("3D points", fontsize=9)
    ax.tick_params(labelsize=8)

    mean_track = float(track.mean()) if n_pts else 0.0
    mean_err = float(rec.compute_mean_reprojection_error()) if n_pts else 0.0
    title = (f"{model_dir}:  {len(reg)} of {rec.num_images()} images registered  ·  {n_pts:,} points"
             f"  ·  mean track length {mean_track:.2f}  ·  mean reprojection error {mean_err:.2f} px")
    others = model_dir / "models"
    if others.is_dir():
        more = sum(1 for p in others.iterdir() if p.is_dir())
        if more:
            title += f"  (+{more} smaller models in {others})"
    fig.text(0.05, 0.985, title, ha="left", va="top", fontsize=11, fontweight="bold")
    width_px, height_px = _save(fig, out)
    return ShowResult(out, width_px, height_px, {
        "model": str(model_dir), "registered": len(reg), "images": int(rec.num_images()),
        "points3D": n_pts, "mean_track_length": round(mean_track, 4),
        "mean_reprojection_error": round(mean_err, 4), "points_outside_view": outside})
