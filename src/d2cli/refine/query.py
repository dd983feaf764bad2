"""Two-view refinement of localisation queries (``d2 localize --refine``).

``d2 localize`` refines the 2D-3D correspondences that the pose RANSAC kept as inliers,
then estimates the pose again from them (a wrong match is not refined into a plausible one).

A query's 2D-3D correspondences come from its matches to reference images. Each one's 2D
position is refined against the reference keypoint it was matched to (the reference
fixed, as the 3D point was triangulated from it; its patch warped by the local affine map
of that pair's matches), so a query keypoint matched to two references may get two
slightly different positions, one per correspondence, which is what the pose solver wants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..device import pick_device
from ..images import image_under, load_rgb
from .config import RefineConfig
from .features import ImageCache, PatchFeatures
from .pair import refine_points


class QueryRefiner:
    """Refines query points against reference keypoints; keeps the last ``cache`` images
    (references recur across queries) of ``image_dir`` loaded."""

    def __init__(self, config: RefineConfig, image_dir: Path, cache: int = 8) -> None:
        self.feats = PatchFeatures(config, pick_device(config.device))
        # an unreadable image raises BadImage naming the file
        self.images = ImageCache(lambda n: load_rgb(image_under(image_dir, n)), config,
                                 self.feats.device, cache)

    def refine(self, query: str, reference: str, query_points: np.ndarray,
               reference_points: np.ndarray, rows: np.ndarray
               ) -> tuple[np.ndarray, dict[str, int]]:
        """Refined query positions (R, 2) float32 of the matches ``rows`` (R,), and how
        many moved or were undone (:meth:`~d2cli.refine.pair.Refined.counts`).

        query_points, reference_points (M, 2): x y of all M matches of the pair (the
        affine maps are fitted to all of them); rows: the ones to refine.
        """
        dev = self.feats.device
        tq, tr = self.images[query], self.images[reference]
        xq = torch.from_numpy(np.ascontiguousarray(query_points, dtype=np.float32)).to(dev)
        xr = torch.from_numpy(np.ascontiguousarray(reference_points, dtype=np.float32)).to(dev)
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(dev)
        r = refine_points(self.feats, tr, tq, xr[idx], xq[idx], context=(xr, xq))
        return r.points.cpu().numpy().astype(np.float32), r.counts()
