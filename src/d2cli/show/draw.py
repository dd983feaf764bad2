"""Drawing primitives every picture shares: the figure in output pixels, the faded photo,
display sizes and coordinates, the PNG written atomically, and ``ShowResult``.

Nothing here reads an input file (``inputs`` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..errors import OutputError, UsageError
from ..io.atomic import write_atomic

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


def pt(px: float) -> float:
    """Pixels -> points at DPI (matplotlib sizes are in points)."""
    return px * 72.0 / DPI


def fit(w: int, h: int, max_w: int, max_h: int) -> float:
    """Display factor: fit into max_w x max_h, enlarge small images up to MIN_EDGE."""
    return min(max_w / w, max_h / h, max(1.0, MIN_EDGE / max(w, h)))


def backdrop(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 photo -> faded gray (h, w, 3) uint8 at ``size`` = (w, h)."""
    g = Image.fromarray(rgb).convert("L").resize(size, Image.Resampling.LANCZOS)
    faded = 64 + 0.6 * np.asarray(g, dtype=np.float32)  # 0..255 -> 64..217: overlay stays visible
    return np.repeat(faded.astype(np.uint8)[:, :, None], 3, axis=2)


def to_display(xy: np.ndarray, factor: float) -> np.ndarray:
    """(N, 2) original pixel coords (centre at integers) -> display pixel coords, same convention."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * factor - 0.5


def figure(width: int, height: int) -> Figure:
    """A figure of exactly ``width`` x ``height`` output pixels on the Agg canvas."""
    # +0.01 px: figsize * dpi is truncated when saving; never lose the last pixel row
    fig = Figure(figsize=((width + 0.01) / DPI, (height + 0.01) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def pixel_axes(fig: Figure, left: float, bottom: float, w: float, h: float, fw: int, fh: int
               ) -> Axes:
    """Axes placed in figure pixels (origin bottom-left)."""
    return fig.add_axes((left / fw, bottom / fh, w / fw, h / fh))


def image_axes(fig: Figure, image: np.ndarray, left: int, bottom: int, fw: int, fh: int) -> Axes:
    """Axes showing the (h, w, 3) ``image`` one pixel per output pixel, data coordinates in
    its pixels (centre at integers, y down)."""
    h, w = image.shape[:2]
    ax = pixel_axes(fig, left, bottom, w, h, fw, fh)
    ax.imshow(image, interpolation="nearest")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    return ax


def check_out(out: str | os.PathLike) -> Path:
    """The output path, refused before any work when it is not a ``*.png`` file name."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: pictures are written as PNG; name the output *.png")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder")
    return out


def save(fig: Figure, out: Path, counts: dict[str, Any]) -> ShowResult:
    """Write the PNG atomically (temporary file + rename): never a half-written picture."""
    with write_atomic(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    w, h = fig.canvas.get_width_height()
    return ShowResult(out, int(w), int(h), counts)
