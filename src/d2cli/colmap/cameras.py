"""Cameras for COLMAP: EXIF focal lengths, camera grouping modes, pycolmap cameras."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pycolmap
from PIL import Image, UnidentifiedImageError

from ..errors import UsageError

CAMERA_MODELS = tuple(m for m in pycolmap.CameraModelId.__members__ if m != "INVALID")
DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's guess without EXIF: f = 1.2 * max(W, H)


@dataclass(frozen=True)
class ImageInfo:
    """What decides an image's camera: its size and, when readable, its EXIF."""

    name: str
    width: int
    height: int
    path: Path | None = None  # the image file, when it exists
    exif: tuple[str, str, float] | None = None  # (make, model, focal length in mm)


def read_exif(path: Path) -> tuple[str, str, float] | None:
    """(make, model, focal mm) from EXIF, or None; only the header is read."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            focal = exif.get_ifd(0x8769).get(37386) or exif.get(37386)
            if not focal:
                return None
            return (str(exif.get(271, "")).strip(), str(exif.get(272, "")).strip(), float(focal))
    except (OSError, UnidentifiedImageError, ValueError, TypeError, ZeroDivisionError):
        return None


def camera_key(info: ImageInfo, mode: str) -> tuple[Any, ...]:
    """Images with equal keys share one camera."""
    if mode == "per-image":
        return ("image", info.name)
    if mode == "single":
        return ("single", info.width, info.height)
    if mode == "per-folder":
        return ("folder", str(PurePosixPath(info.name).parent), info.width, info.height)
    return ("auto", info.width, info.height, info.exif)  # like COLMAP: one per size + EXIF


def check_camera_model(model: str, params: Sequence[float] | None) -> str:
    model = model.upper()
    if model not in CAMERA_MODELS:
        raise UsageError(f"unknown camera model {model!r} (one of {', '.join(CAMERA_MODELS)})")
    if params is not None:
        cam = pycolmap.Camera.create_from_model_name(0, model, 1.0, 2, 2)
        if len(params) != len(cam.params):
            raise UsageError(
                f"camera model {model} takes {len(cam.params)} parameters "
                f"({cam.params_info}), got {len(params)}")
    return model


def make_camera(info: ImageInfo, model: str, params: Sequence[float] | None) -> pycolmap.Camera:
    """A camera for an image: given params, else EXIF focal prior, else COLMAP's guess."""
    w, h = info.width, info.height
    if params is not None:
        cam = pycolmap.Camera.create_from_model_name(0, model, 1.0, w, h)
        cam.params = np.asarray(params, dtype=np.float64)
        cam.has_prior_focal_length = True
        return cam
    focal, prior = DEFAULT_FOCAL_FACTOR * max(w, h), False
    if info.exif is not None and info.path is not None:
        # COLMAP's own EXIF logic (sensor-width database, 35 mm equivalent)
        try:
            guess = pycolmap.infer_camera_from_image(info.path)
        except Exception:  # an undecodable file: keep the default guess
            guess = None
        if guess is not None and guess.has_prior_focal_length and guess.width == w:
            focal, prior = float(guess.mean_focal_length()), True
    cam = pycolmap.Camera.create_from_model_name(0, model, focal, w, h)
    cam.has_prior_focal_length = prior
    return cam
