"""COLMAP databases: ``database`` (open, stats, pycolmap imported on first use), ``cameras``
(EXIF, camera modes), ``keypoints`` (COLMAP's +0.5 pixel convention and the one keypoint
writer), ``importer`` (``d2 colmap-import``: images, keypoints, matches, verification)."""

from __future__ import annotations

from typing import Any

from .database import database_stats, open_database, quiet_colmap

_LAZY = {  # importing these loads pycolmap
    "colmap_import": "importer", "ImportResult": "importer", "UNUSABLE_CONFIGS": "importer",
    "VERIFY_OPTIONS": "importer", "DEFAULT_FOCAL_FACTOR": "cameras", "CAMERA_MODES": "cameras",
    "CAMERA_MODELS": "cameras", "ImageInfo": "cameras", "camera_key": "cameras",
    "check_camera_model": "cameras", "make_camera": "cameras", "read_exif": "cameras",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["database_stats", "open_database", "quiet_colmap", *_LAZY]
