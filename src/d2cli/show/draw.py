"""What every picture shares: the figure, the faded photo, sizes, saving, finding images."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..errors import BadFile, InputNotFound, MissingName, OutputError, UsageError
from ..images import image_under
from ..io.atomic import write_atomic
from ..io.features import FeatureFile

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


def _locate(image: str | os.PathLike, known: Callable[[str], bool], root: Path | None,
            where: str) -> _Located:
    """IMAGE as a name in ``where`` (the image under ``root``) or as a path to an image file."""
    text = str(image)
    if known(text):
        if root is None:
            raise InputNotFound(f"{text}: the image folder recorded in {where} is not there "
                                "(or none is); pass --image-dir")
        path = image_under(root, text)
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
    return FeatureFile(features)
