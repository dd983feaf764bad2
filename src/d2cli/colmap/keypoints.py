"""COLMAP's pixel convention, in one place.

d2cli's features files (as D2-Net's and hloc's) put the centre of the top-left pixel at
(0, 0); COLMAP's databases and models put it at (0.5, 0.5). Every keypoint crossing into
or out of COLMAP goes through :func:`to_colmap` / :func:`from_colmap`, and every keypoint
written into a database through :func:`write_keypoints`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pycolmap loads on first use (d2cli.colmap)
    import pycolmap

COLMAP_OFFSET = 0.5  # COLMAP's top-left pixel centre, in d2cli's pixels


def to_colmap(xy: np.ndarray) -> np.ndarray:
    """(N, 2) d2cli keypoint pixels -> COLMAP's, same dtype (float32 stays float32)."""
    xy = np.asarray(xy)
    return xy + xy.dtype.type(COLMAP_OFFSET) if xy.dtype.kind == "f" else xy + COLMAP_OFFSET


def from_colmap(xy: np.ndarray) -> np.ndarray:
    """(N, 2) COLMAP pixels (database keypoints, model points2D) -> d2cli's, same dtype."""
    xy = np.asarray(xy)
    return xy - xy.dtype.type(COLMAP_OFFSET) if xy.dtype.kind == "f" else xy - COLMAP_OFFSET


def write_keypoints(db: pycolmap.Database, image_id: int, xy: np.ndarray, *,
                    replace: bool = False) -> None:
    """Keypoints (N, 2+) in d2cli pixels into ``db`` for ``image_id``, as COLMAP's float32
    (N, 2); ``replace``: overwrite the image's keypoints (else they must not be there)."""
    # offset in the keypoints' own dtype, then float32: one rounding, as COLMAP stores them
    kp = np.ascontiguousarray(to_colmap(np.asarray(xy)[:, :2]), dtype=np.float32)
    if replace:
        db.update_keypoints(image_id, kp)
    else:
        db.write_keypoints(image_id, kp)
