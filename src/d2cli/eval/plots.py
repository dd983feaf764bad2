"""The figures of ``d2 eval``: MMA vs threshold (the D2-Net paper's style) and pose recall."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.atomic import write_atomic
from .hpatches import KINDS, HPatchesResult
from .pose import AUC_THRESHOLDS, PoseResult

# the paper's figure: thick lines, one colour per method, panels Overall / Illum / Viewpoint
COLORS = ("red", "blue", "green", "orange", "purple", "brown", "black", "magenta")
STYLES = ("-", "--", "-.", ":")


def _figure(ncols: int, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 5))
    return plt, fig, np.atleast_1d(axes)


def _save(plt, fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with write_atomic(path, suffix=".png") as tmp:
            fig.savefig(tmp, bbox_inches="tight", dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_mma(result: HPatchesResult, path: str | os.PathLike, max_px: int = 10) -> Path:
    """MMA at 1..max_px pixels, one curve per method, panels Overall / Illumination / Viewpoint."""
    plt, fig, axes = _figure(3)
    t = np.array(result.thresholds[:max_px])
    panels = [(None, "Overall")] + [(k, v.capitalize()) for k, v in KINDS.items()]
    for ax, (kind, title) in zip(axes, panels, strict=True):
        n = result.num_pairs(kind)
        for i, ms in enumerate(result.methods):
            mma = ms.mma(kind)
            if mma is not None:
                ax.plot(t, mma[:max_px], color=COLORS[i % len(COLORS)],
                        ls=STYLES[(i // len(COLORS)) % len(STYLES)], linewidth=3,
                        label=ms.run.method.label)
        ax.set_title(f"{title} ({n} pairs)" if n else f"{title} (no sequences)", fontsize=16)
        ax.set_xlim([1, max_px])
        ax.set_ylim([0, 1])
        ax.set_xticks(range(1, max_px + 1))
        ax.set_xlabel("threshold [px]", fontsize=14)
        ax.grid()
        ax.tick_params(axis="both", labelsize=12)
    axes[0].set_ylabel("MMA", fontsize=14)
    axes[0].legend(loc="lower right", fontsize=11)
    return _save(plt, fig, path)


def plot_pose(result: PoseResult, path: str | os.PathLike, max_deg: float = 20.0) -> Path:
    """Fraction of pairs with pose error <= x, for x up to max_deg; AUCs in the legend."""
    plt, fig, axes = _figure(1, width=6.5)
    ax = axes[0]
    x = np.linspace(0, max_deg, 401)
    for i, ms in enumerate(result.methods):
        errs = np.array([p.error for p in ms.pairs])
        if errs.size == 0:
            continue
        recall = (errs[None, :] <= x[:, None]).mean(1)
        auc = " / ".join(f"{a * 100:.1f}" for a in ms.auc())
        ax.plot(x, recall, color=COLORS[i % len(COLORS)],
                ls=STYLES[(i // len(COLORS)) % len(STYLES)], linewidth=3,
                label=f"{ms.run.method.label} (AUC {auc})")
    ax.set_title(f"Relative pose, {len(result.methods[0].pairs) if result.methods else 0} "
                 f"pairs (AUC@{'/'.join(map(str, AUC_THRESHOLDS))}°)", fontsize=14)
    ax.set_xlim([0, max_deg])
    ax.set_ylim([0, 1])
    ax.set_xlabel("pose error [deg] (max of rotation and translation-direction errors)",
                  fontsize=12)
    ax.set_ylabel("fraction of pairs", fontsize=12)
    ax.grid()
    ax.legend(loc="lower right", fontsize=10)
    return _save(plt, fig, path)
