"""Everything ``d2 show`` reads: features and matches files, COLMAP databases and models,
and the image files they name. Returns arrays for the drawing modules."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..colmap.database import open_database
from ..colmap.keypoints import from_colmap
from ..errors import BadFile, EmptyInput, InputNotFound, MissingName
from ..images import image_under, load_rgb
from ..io.colmap_model import read_model
from ..io.features import FeatureFile, MatchFile, image_folder


@dataclass
class Located:
    name: str  # as keyed in the features file / database
    path: Path  # the image file


def locate(image: str | os.PathLike, known: Callable[[str], bool], root: Path | None,
           where: str) -> Located:
    """IMAGE as a name in ``where`` (the image under ``root``) or as a path to an image file."""
    text = str(image)
    if known(text):
        if root is None:
            raise InputNotFound(f"{text}: the image folder recorded in {where} is not there "
                                "(or none is); pass --image-dir")
        path = image_under(root, text)
        if not path.is_file():
            raise InputNotFound(f"{path}: image not found (pass --image-dir if the images moved)")
        return Located(text, path)
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
                return Located(name, p)
    raise MissingName(f"{text}: not in {where}")


def load_image(loc: Located, size_wh: tuple[int, int] | None, where: str) -> np.ndarray:
    """The (H, W, 3) uint8 image; BadFile when ``where`` recorded another size for it
    (its keypoints would be drawn in the wrong places)."""
    rgb = load_rgb(loc.path)
    if size_wh is None or min(size_wh) <= 0:
        return rgb
    h, w = rgb.shape[:2]
    if (w, h) != tuple(size_wh):
        raise BadFile(f"{loc.path} is {w}x{h} but {where} has {loc.name} as "
                      f"{size_wh[0]}x{size_wh[1]}; wrong image or --image-dir?")
    return rgb


def _size(f: Any) -> tuple[int, int]:
    return (int(f.image_size[0]), int(f.image_size[1]))


# --------------------------------------------------------------------------- keypoints
@dataclass
class ImageKeypoints:
    name: str
    path: Path
    image: np.ndarray  # (H, W, 3) uint8
    keypoints: np.ndarray  # (N, 2) float, pixel centre at integers
    scores: np.ndarray  # (N,)
    scales: np.ndarray  # (N,)


def load_keypoints(image: str | os.PathLike, features: str | os.PathLike,
                   image_dir: str | os.PathLike | None) -> ImageKeypoints:
    """An image (a name in the features file or a path to its file) and its keypoints."""
    with FeatureFile(features) as ff:
        loc = locate(image, ff.__contains__, image_folder(ff, image_dir), f"features file {ff.path}")
        feats = ff[loc.name]
    rgb = load_image(loc, _size(feats), f"features file {features}")
    return ImageKeypoints(loc.name, loc.path, rgb, feats.keypoints[:, :2], feats.scores,
                          feats.scales)


# --------------------------------------------------------------------------- matches
@dataclass
class ImagePair:
    names: tuple[str, str]
    images: tuple[np.ndarray, np.ndarray]  # (H, W, 3) uint8 each
    keypoints: tuple[np.ndarray, np.ndarray]  # (N0, 2), (N1, 2), pixel centre at integers
    matches: np.ndarray  # (M, 2) int
    inliers: np.ndarray | None  # (M,) bool, None without a verified geometry
    config: str | None  # the verified geometry's configuration
    from_database: bool


def load_pair(name0: str | os.PathLike, name1: str | os.PathLike, features: str | os.PathLike,
              matches: str | os.PathLike, db: str | os.PathLike | None,
              image_dir: str | os.PathLike | None) -> ImagePair:
    """Two images with their keypoints and matches: from the features and matches files,
    or (``db``) from a COLMAP database, with its verified inliers. With ``db`` the features
    file is only read for the image folder, and not at all when ``image_dir`` is given and
    it is missing."""
    db_path = Path(db) if db is not None else None
    if db_path is not None and not db_path.is_file():
        raise InputNotFound(f"{db_path}: database not found")
    need_features = db_path is None or image_dir is None
    ff = FeatureFile(features) if need_features or Path(features).is_file() else None
    try:
        root = image_folder(ff, image_dir)
        if db_path is not None:
            where = f"database {db_path}"
            with open_database(db_path, create=False) as cdb:
                def known(n: str) -> bool:
                    return cdb.read_image_with_name(n) is not None
                locs = (locate(name0, known, root, where), locate(name1, known, root, where))
                sizes = [_db_size(cdb, loc.name) for loc in locs]
                kp0, kp1, m, inliers, config = _pair_from_db(cdb, *locs, db_path)
        else:
            assert ff is not None
            where = f"features file {ff.path}"
            locs = (locate(name0, ff.__contains__, root, where),
                    locate(name1, ff.__contains__, root, where))
            with MatchFile(matches) as mf:
                m, _ = mf.get(locs[0].name, locs[1].name)
            f0, f1 = ff[locs[0].name], ff[locs[1].name]
            sizes = [_size(f) for f in (f0, f1)]
            kp0, kp1, inliers, config = f0.keypoints[:, :2], f1.keypoints[:, :2], None, None
    finally:
        if ff is not None:
            ff.close()
    for k, kp in ((0, kp0), (1, kp1)):
        if len(m) and m[:, k].max() >= len(kp):
            raise BadFile(f"{where}: matches of {locs[k].name} index past its keypoints")
    images = (load_image(locs[0], sizes[0], where), load_image(locs[1], sizes[1], where))
    return ImagePair((locs[0].name, locs[1].name), images, (kp0, kp1), m, inliers, config,
                     db_path is not None)


def _pair_from_db(db: Any, loc0: Located, loc1: Located, db_path: Path
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, str | None]:
    import pycolmap

    id0 = db.read_image_with_name(loc0.name).image_id
    id1 = db.read_image_with_name(loc1.name).image_id
    if not db.exists_matches(id0, id1):
        raise MissingName(f"pair {loc0.name} {loc1.name}: no matches in {db_path}")
    matches = np.asarray(db.read_matches(id0, id1), dtype=np.int64).reshape(-1, 2)
    kp0 = from_colmap(np.asarray(db.read_keypoints(id0))[:, :2])
    kp1 = from_colmap(np.asarray(db.read_keypoints(id1))[:, :2])
    inlier, config = None, None
    if db.exists_two_view_geometry(id0, id1):
        tvg = db.read_two_view_geometry(id0, id1)  # columns already in (id0, id1) order
        config = pycolmap.TwoViewGeometryConfiguration(int(tvg.config)).name
        good = np.asarray(tvg.inlier_matches, dtype=np.int64).reshape(-1, 2)
        inlier = _rows_in(matches, good)
    return kp0, kp1, matches, inlier, config


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a: is it a row of b? (int index pairs)"""
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    base = int(max(a.max(), b.max())) + 1
    return np.isin(a[:, 0] * base + a[:, 1], b[:, 0] * base + b[:, 1])


def _db_size(db: Any, name: str) -> tuple[int, int] | None:
    im = db.read_image_with_name(name)
    cam = db.read_camera(im.camera_id)
    return (int(cam.width), int(cam.height)) if cam is not None else None


# --------------------------------------------------------------------------- model
@dataclass
class SparseModel:
    points: np.ndarray  # (N, 3) float64
    colors: np.ndarray  # (N, 3) uint8
    track_lengths: np.ndarray  # (N,) int64
    errors: np.ndarray  # (N,) float64, px
    rotations: np.ndarray  # (K, 3, 3) cam_from_world of the K registered images
    centres: np.ndarray  # (K, 3)
    directions: np.ndarray  # (K, 3) viewing directions
    num_images: int  # registered or not
    mean_reprojection_error: float  # COLMAP's, over the whole model
    smaller_models: int  # model folders in <model>/models (d2 reconstruct keeps them there)


def load_model(model_dir: Path) -> SparseModel:
    """The arrays of a COLMAP model; EmptyInput when it has neither images nor points."""
    rec = read_model(model_dir)
    ids = list(rec.point3D_ids())
    reg = [rec.images[i] for i in rec.reg_image_ids()]
    if not ids and not reg:
        raise EmptyInput(f"{model_dir}: the model has no registered images and no 3D points")
    pts = [rec.points3D[i] for i in ids]
    poses = [im.cam_from_world() for im in reg]
    others = model_dir / "models"
    return SparseModel(
        points=np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3),
        colors=np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3),
        track_lengths=np.array([p.track.length() for p in pts], dtype=np.int64),
        errors=np.array([p.error for p in pts], dtype=np.float64),
        rotations=np.array([p.rotation.matrix() for p in poses], dtype=np.float64).reshape(-1, 3, 3),
        centres=np.array([im.projection_center() for im in reg], dtype=np.float64).reshape(-1, 3),
        directions=np.array([im.viewing_direction() for im in reg], dtype=np.float64).reshape(-1, 3),
        num_images=int(rec.num_images()),
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()) if ids else 0.0,
        smaller_models=sum(1 for p in others.iterdir() if p.is_dir()) if others.is_dir() else 0,
    )
