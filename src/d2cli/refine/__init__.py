"""Featuremetric keypoint refinement (after Pixel-Perfect SfM, Lindenberger et al. 2021).

D2-Net keypoints live on a stride-4 map; this moves them, in original-image pixels, to
where dense features finer than conv4_3 (early VGG layers of the same network on local
crops, or the intensities) agree: two-view (:func:`refine_pair`) or per track
(:func:`refine_tracks`).
"""

from .config import LAYERS, SOURCES, RefineConfig
from .features import CropFeatures, PatchFeatures
from .pair import bias_corrected, refine_pair, refine_verified
from .search import local_affine, search
from .tracks import Tracks, build_tracks, refine_tracks

__all__ = ["LAYERS", "SOURCES", "CropFeatures", "PatchFeatures", "RefineConfig", "Tracks",
           "bias_corrected", "build_tracks", "local_affine", "refine_pair", "refine_tracks",
           "refine_verified",
           "search"]
