"""What ``d2 localize`` matches queries against: the 3D point under each reference keypoint,
from a COLMAP model built from the same features, or from InLoc's per-cutout XYZ scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .colmap.keypoints import from_colmap
from .errors import (
    EmptyInput,
    IncompatibleFeatures,
    InputNotFound,
)
from .inloc import alignment_path, read_alignment, read_xyzcut, sample_xyz
from .io.colmap_model import read_model
from .io.features import FeatureFile
from .lru import LRU

CACHE_IMAGES = 256  # reference images whose 3D lookups stay in memory
PROBES = 64  # observed keypoints per reference image whose model position is checked


class Reference:
    """Per reference image, the 3D point under each of its keypoints (NaN where none)."""

    mode = ""

    def __init__(self, ff: FeatureFile) -> None:
        self.ff = ff
        self._cache: LRU[str, tuple[np.ndarray, np.ndarray | None]] = LRU(self._load,
                                                                          CACHE_IMAGES)

    def usable(self, name: str) -> bool:
        raise NotImplementedError

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def points(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(xyz (N, 3) with NaN rows, point ids (N,) or None) for the N keypoints of ``name``."""
        return self._cache[name]


class ModelReference(Reference):
    """A COLMAP model built from the features file (checked image by image)."""

    mode = "model"

    def __init__(self, ff: FeatureFile, model_dir: Path) -> None:
        super().__init__(ff)
        self.rec = read_model(model_dir, "reference model")
        self.dir = model_dir
        self.images = {im.name: im for im in self.rec.images.values() if im.has_pose}
        if not self.images:
            raise EmptyInput(f"{model_dir}: the reference model has no registered image")
        self._table: tuple[np.ndarray, np.ndarray] | None = None
        if self.rec.num_points3D() == 0:
            raise EmptyInput(f"{model_dir}: the reference model has no 3D points; triangulate "
                             "it first (d2 reconstruct --reference-model)")

    def usable(self, name: str) -> bool:
        return name in self.images

    def _point_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted point ids (P,), their xyz (P, 3)): one pass over the model's points,
        made on first use. A lookup per observation through pycolmap costs ~1 us, ~1 ms
        per reference image, which at thousands of queries outgrows the pass."""
        if self._table is None:
            items = self.rec.points3D.items()
            ids = np.fromiter((i for i, _ in items), np.int64, len(items))
            xyz = np.array([p.xyz for _, p in items], dtype=np.float64).reshape(-1, 3)
            order = np.argsort(ids)
            self._table = ids[order], xyz[order]
        return self._table

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        im = self.images[name]
        if name not in self.ff:
            raise IncompatibleFeatures(f"{name}: in the reference model {self.dir} but not in "
                                       f"features file {self.ff.path}")
        kp = self.ff.keypoints(name)[:, :2].astype(np.float64)
        if im.num_points2D() != len(kp):
            raise IncompatibleFeatures(
                f"{name}: the reference model {self.dir} has {im.num_points2D()} keypoints for "
                f"this image, features file {self.ff.path} has {len(kp)}: the model was not "
                "built from these features (use d2 sfm, or d2 colmap-import --reference-model "
                "+ d2 reconstruct)")
        # only the keypoints with a 3D point matter: read those (all of them would cost
        # ~1 us each through pycolmap, per reference image)
        observed = im.get_observation_points2D()
        rows = np.asarray(im.get_observation_point2D_idxs(), dtype=np.int64)
        point_ids = np.fromiter((p.point3D_id for p in observed), np.int64, len(observed))
        ids = np.full(len(kp), -1, dtype=np.int64)
        xyz = np.full((len(kp), 3), np.nan)
        if len(rows):
            # point j must be keypoint j: the positions of a spread of observed keypoints
            # tell (a model made from other features differs at every keypoint)
            probe = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), PROBES)).astype(int))
            xy = np.array([observed[int(i)].xy for i in probe], dtype=np.float64)
            err = float(np.abs(from_colmap(xy) - kp[rows[probe]]).max())
            if err > 0.01:
                raise IncompatibleFeatures(
                    f"{name}: keypoints of the reference model {self.dir} differ from features "
                    f"file {self.ff.path} by up to {err:.2f} px: the model was not built from "
                    "these features")
            table_ids, table_xyz = self._point_table()
            at = np.searchsorted(table_ids, point_ids)
            ids[rows], xyz[rows] = point_ids, table_xyz[at]
        return xyz, ids


class ScanReference(Reference):
    """InLoc cutouts: ``<scans>/<name>.mat`` holds XYZcut, optionally aligned to the building."""

    mode = "inloc"

    def __init__(self, ff: FeatureFile, scans: Path, alignments: Path | None) -> None:
        super().__init__(ff)
        if not scans.is_dir():
            raise InputNotFound(f"{scans}: InLoc scans folder not found")
        if alignments is not None and not alignments.is_dir():
            raise InputNotFound(f"{alignments}: InLoc alignments folder not found")
        self.dir, self.alignments = scans, alignments
        self._poses: dict[Path, np.ndarray] = {}

    def scan_path(self, name: str) -> Path:
        return self.dir / f"{name}.mat"

    def usable(self, name: str) -> bool:
        return self.scan_path(name).is_file()

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if name not in self.ff:
            raise IncompatibleFeatures(f"{name}: has a scan in {self.dir} but is not in features "
                                       f"file {self.ff.path}")
        xyz_map = read_xyzcut(self.scan_path(name))
        w, h = self.ff.image_size(name)
        if w > 0 and (w, h) != (xyz_map.shape[1], xyz_map.shape[0]):
            raise IncompatibleFeatures(
                f"{name}: XYZcut is {xyz_map.shape[1]}x{xyz_map.shape[0]} but the features are "
                f"for a {w}x{h} image")
        xyz = sample_xyz(xyz_map, self.ff.keypoints(name)[:, :2])
        if self.alignments is not None:
            path = alignment_path(self.alignments, name)
            if path is None or not path.is_file():
                raise InputNotFound(f"{name}: no InLoc transformations file "
                                    f"{path or '(not a cutout name)'}")
            if path not in self._poses:
                self._poses[path] = read_alignment(path)
            P = self._poses[path]
            xyz = xyz @ P[:3, :3].T + P[:3, 3]
        return xyz, None
