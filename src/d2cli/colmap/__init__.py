"""COLMAP databases: ``database`` (open, stats, pycolmap imported on first use), ``cameras``
(EXIF, camera modes), ``keypoints`` (COLMAP's +0.5 pixel convention and the one keypoint
writer), ``importer`` (``d2 colmap-import``: images, keypoints, matches),
``verification`` (pycolmap's two-view verification of the imported pairs)."""

from __future__ import annotations

from typing import Any

from ..settings import CAMERA_MODES
from .database import database_stats, open_database, quiet_colmap

_LAZY = {  # importing these loads pycolmap
    "colmap_import": "importer", "ImportResult": "importer", "ImportSettings": "importer",
    "UNUSABLE_CONFIGS": "verification", "VERIFY_OPTIONS": "verification",
    "DEFAULT_FOCAL_FACTOR": "cameras",
    "CAMERA_MODELS": "cameras", "ImageInfo": "cameras", "camera_key": "cameras",
    "check_camera_model": "cameras", "make_camera": "cameras", "read_exif": "cameras",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CAMERA_MODES", "database_stats", "open_database", "quiet_colmap", *_LAZY]
