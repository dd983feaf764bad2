"""Training pairs from three kinds of data, behind one interface.

* :class:`DepthScenes` - MegaDepth-style scenes (undistorted COLMAP model + depth maps):
  dense correspondences by warping the feature-cell grid with depth and poses, as the
  paper (reference ``lib/dataset.py``, ``warp``).
* :class:`ColmapTracks` - any COLMAP model with its images: sparse correspondences from
  the 2D observations of the 3D points both images see (no depth needed).
* :class:`HomographyFolder` - any folder of images: each pair is one image and a random
  homography of it with strong photometric changes (no 3D data needed).

A source has ``len(source)`` items (images or image pairs) and makes a
:class:`TrainPair` from an item and a random generator. Items split once into
training and validation (:func:`split_items`), so validation never sees training items.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..colmap.keypoints import from_colmap
from ..errors import BadFile, EmptyInput, InputNotFound, UsageError
from ..images import find_images, load_rgb
from ..lru import LRU
from .augment import HomographyRange, photometric, random_homography, warp_image
from .loss import cell_centres
from .warp import DEPTH_TOLERANCE, warp_depth, warp_homography

KINDS = ("depth", "colmap", "homography")
IMAGES_CACHED = 32  # decoded training images kept per source


@dataclass
class TrainPair:
    """Two crops and their correspondences.

    image1/2: (S, S, 3) float32 RGB 0..255 (not yet preprocessed);
    pos1/pos2: (N, 2) float64 (row, col) pixel positions in crop 1 / crop 2.
    """

    image1: np.ndarray
    image2: np.ndarray
    pos1: torch.Tensor
    pos2: torch.Tensor
    source: str


class PairSource(ABC):
    """A set of items, each of which can make random training pairs."""

    kind: str
    dense: bool  # correspondences on the whole cell grid (else sparse points)

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._cache: LRU[tuple[Path, int | None, int], np.ndarray] = LRU(
            lambda key: _decoded(*key), IMAGES_CACHED)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def pair(self, item: int, rng: np.random.Generator, crop: int) -> TrainPair | None:
        """A pair made from item ``item``; None when this draw gives no usable pair."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "items": len(self)}

    def _image(self, path: Path, max_edge: int | None = None, min_side: int = 0) -> np.ndarray:
        """Decoded image (H, W, 3) uint8, resized to fit max_edge / reach min_side; LRU-cached."""
        return self._cache[path, max_edge, min_side]


def _decoded(path: Path, max_edge: int | None, min_side: int) -> np.ndarray:
    img = load_rgb(path)
    f = _resize_factor(img.shape[:2], max_edge, min_side)
    if f != 1.0:
        h, w = img.shape[:2]
        size = (max(1, round(w * f)), max(1, round(h * f)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    return img


def _resize_factor(hw: tuple[int, ...], max_edge: int | None, min_side: int) -> float:
    f = 1.0
    if max_edge and max(hw) > max_edge:
        f = max_edge / max(hw)
    if min(hw) * f < min_side:
        f = min_side / min(hw)
    return f


def split_items(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Items 0..n-1 -> (training, validation), a fixed random split (at least one each if n > 1)."""
    order = np.random.default_rng([seed, 7]).permutation(n).tolist()
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def crop_origin(centre: float, size: int, crop: int) -> int:
    """First row (or column) of a crop of ``crop`` pixels centred near ``centre``, inside the image."""
    start = max(int(centre) - crop // 2, 0)
    return max(0, min(start, size - crop))


# --------------------------------------------------------------------------- homographies
class HomographyFolder(PairSource):
    """Any folder of images: (crop, random homography of it) with photometric changes."""

    kind = "homography"
    dense = True

    def __init__(self, root: str | os.PathLike, max_edge: int | None = 1024,
                 warp: HomographyRange | None = None, photometric: float = 1.0) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise InputNotFound(f"{self.root}: folder not found")
        self.images = find_images(self.root)
        if not self.images:
            raise EmptyInput(f"{self.root}: no images found")
        self.max_edge, self.strength = max_edge, photometric
        self.warp = warp or HomographyRange()

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, item: int, rng: np.random.Generator, crop: int) -> TrainPair | None:
        img = self._image(self.images[item], self.max_edge, crop).astype(np.float32)
        h, w = img.shape[:2]
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        crop1 = img[top:top + crop, left:left + crop]
        H = random_homography(rng, crop, self.warp)  # crop-1 pixels -> crop-2 pixels
        full_to_2 = H @ np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]])
        crop2 = warp_image(img, np.linalg.inv(full_to_2), (crop, crop))
        image1 = photometric(rng, crop1, self.strength)
        image2 = photometric(rng, crop2, self.strength)
        grid = cell_centres(crop // 8, crop // 8)
        pos2, ids = warp_homography(grid, H, (crop, crop))
        return TrainPair(image1, image2, grid[ids], pos2, self.kind)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_edge": self.max_edge, "photometric": self.strength}


# --------------------------------------------------------------------------- COLMAP models
MODEL_DIRS = ("sparse/0", "sparse", "sparse-txt", "sparse/manhattan/0", ".")


def find_model_dir(root: Path) -> Path | None:
    for sub in MODEL_DIRS:
        d = root / sub
        if any((d / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return d
    return None


class _Scene:
    """A COLMAP model: per image its 3D point ids, pose, intrinsics; covisibility."""

    def __init__(self, root: Path, image_dir: Path) -> None:
        from ..pairs import _load_model

        model_dir = find_model_dir(root)
        if model_dir is None:
            raise InputNotFound(f"{root}: no COLMAP model (cameras.bin/txt) in "
                                f"{', '.join(MODEL_DIRS)}")
        rec = _load_model(model_dir)
        self.names: list[str] = []
        self.points: list[dict[int, tuple[float, float]]] = []  # id -> COLMAP (x, y)
        self.K: list[np.ndarray] = []
        self.pose: list[np.ndarray] = []
        self.camera_models: set[str] = set()
        for iid in sorted(rec.reg_image_ids()):
            im = rec.image(iid)
            if not (image_dir / im.name).is_file():
                continue
            obs = {int(p.point3D_id): (float(p.xy[0]), float(p.xy[1]))
                   for p in im.points2D if p.has_point3D()}
            pose = np.eye(4)
            pose[:3] = im.cam_from_world().matrix()
            self.names.append(im.name)
            self.points.append(obs)
            self.K.append(np.asarray(im.camera.calibration_matrix(), dtype=np.float64))
            self.pose.append(pose)
            self.camera_models.add(str(im.camera.model_name))
        if len(self.names) < 2:
            raise EmptyInput(f"{root}: fewer than two registered images found in {image_dir}")
        self.image_dir = image_dir

    def overlapping_pairs(self, min_overlap: float, max_overlap: float, min_common: int
                          ) -> list[tuple[int, int]]:
        """Ordered pairs (i, j) with |common| / |points of i| in [min, max] (asymmetric, as MegaDepth)."""
        sets = [set(p) for p in self.points]
        out = []
        for i, a in enumerate(sets):
            for j, b in enumerate(sets):
                if i == j or not a:
                    continue
                common = len(a & b)
                if common >= min_common and min_overlap <= common / len(a) <= max_overlap:
                    out.append((i, j))
        return out


class ColmapTracks(PairSource):
    """Any COLMAP model + its images: correspondences from the 3D points' tracks (sparse)."""

    kind = "colmap"
    dense = False

    def __init__(self, root: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 max_edge: int | None = 1024, min_overlap: float = 0.1,
                 max_overlap: float = 1.0, min_common: int = 32, photometric: float = 0.0) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise InputNotFound(f"{self.root}: folder not found")
        images = Path(image_dir) if image_dir else (
            self.root / "images" if (self.root / "images").is_dir() else self.root)
        self.scene = _Scene(self.root, images)
        self.pairs = self.scene.overlapping_pairs(min_overlap, max_overlap, min_common)
        if not self.pairs:
            raise EmptyInput(f"{self.root}: no image pair shares {min_common}+ 3D points")
        self.max_edge, self.strength = max_edge, photometric

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, item: int, rng: np.random.Generator, crop: int) -> TrainPair | None:
        i, j = self.pairs[item]
        sc = self.scene
        common = sorted(set(sc.points[i]) & set(sc.points[j]))
        centre = common[int(rng.integers(len(common)))]
        crops, pos = [], []
        for k in (i, j):
            raw_hw = _image_size(sc.image_dir / sc.names[k])
            img = self._image(sc.image_dir / sc.names[k], self.max_edge, crop).astype(np.float32)
            f = img.shape[0] / raw_hw[0]
            # COLMAP (x, y) -> (row, col) in d2cli pixels of the resized image
            rc = np.array([[sc.points[k][p][1], sc.points[k][p][0]] for p in common])
            rc = from_colmap(rc * f)
            c = rc[common.index(centre)]
            top = crop_origin(c[0], img.shape[0], crop)
            left = crop_origin(c[1], img.shape[1], crop)
            crops.append(photometric(rng, img[top:top + crop, left:left + crop], self.strength))
            pos.append(rc - [top, left])
        p1, p2 = (torch.from_numpy(p) for p in pos)
        inside = ((p1 >= 0) & (p1 <= crop - 1) & (p2 >= 0) & (p2 <= crop - 1)).all(dim=1)
        return TrainPair(crops[0], crops[1], p1[inside], p2[inside], self.kind)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file without decoding it."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as e:
        raise BadFile(f"{path}: cannot read the image ({e})") from None


# --------------------------------------------------------------------------- depth (MegaDepth)
class DepthScenes(PairSource):
    """An undistorted COLMAP scene with depth maps: dense correspondences from depth (the paper).

    Layout: ``SCENE/sparse[/0]`` (PINHOLE / SIMPLE_PINHOLE cameras), ``SCENE/images/``,
    ``SCENE/depths/<image stem>.h5`` (dataset ``depth``, MegaDepth's) or ``.npy``, the
    size of the image, 0 where unknown. Pairs: overlap in [0.5, 1], crops centred on a
    random common 3D point, no augmentation, as the reference.
    """

    kind = "depth"
    dense = True

    def __init__(self, root: str | os.PathLike, min_overlap: float = 0.5, max_overlap: float = 1.0,
                 tolerance: float = DEPTH_TOLERANCE, photometric: float = 0.0) -> None:
        super().__init__(root)
        self.depth_dir = self.root / "depths"
        if not self.depth_dir.is_dir():
            raise InputNotFound(f"{self.root}: no depths/ folder (depth maps of the images)")
        self.scene = _Scene(self.root, self.root / "images")
        bad = self.scene.camera_models - {"PINHOLE", "SIMPLE_PINHOLE"}
        if bad:
            raise UsageError(f"{self.root}: cameras must be undistorted (PINHOLE), found "
                             f"{', '.join(sorted(bad))}")
        have = [self._depth_path(n) is not None for n in self.scene.names]
        self.pairs = [(i, j) for i, j in self.scene.overlapping_pairs(min_overlap, max_overlap, 1)
                      if have[i] and have[j]]
        if not self.pairs:
            raise EmptyInput(f"{self.root}: no image pair with depth and overlap >= {min_overlap}")
        self.tolerance, self.strength = tolerance, photometric

    def __len__(self) -> int:
        return len(self.pairs)

    def _depth_path(self, name: str) -> Path | None:
        stem = Path(name).with_suffix("")
        for ext in (".h5", ".npy"):
            p = self.depth_dir / f"{stem}{ext}"
            if p.is_file():
                return p
        return None

    def _depth(self, name: str) -> np.ndarray:
        p = self._depth_path(name)
        assert p is not None
        try:
            if p.suffix == ".npy":
                d = np.load(p)
            else:
                import h5py

                with h5py.File(p, "r") as f:
                    d = f["depth"][()]
        except (OSError, KeyError, ValueError) as e:
            raise BadFile(f"{p}: not a readable depth map ({e})") from None
        if d.ndim != 2:
            raise BadFile(f"{p}: depth map must be 2-D, got shape {d.shape}")
        return d.astype(np.float64)

    def pair(self, item: int, rng: np.random.Generator, crop: int) -> TrainPair | None:
        i, j = self.pairs[item]
        sc = self.scene
        common = sorted(set(sc.points[i]) & set(sc.points[j]))
        centre = common[int(rng.integers(len(common)))]
        parts = []
        for k in (i, j):
            img = self._image(sc.image_dir / sc.names[k]).astype(np.float32)
            depth = self._depth(sc.names[k])
            if depth.shape != img.shape[:2]:
                raise BadFile(f"{sc.names[k]}: depth map {depth.shape} and image "
                              f"{img.shape[:2]} differ in size")
            if min(depth.shape) < crop:
                return None  # as the reference, images smaller than the crop are not used
            x, y = sc.points[k][centre]
            top, left = crop_origin(y, depth.shape[0], crop), crop_origin(x, depth.shape[1], crop)
            parts.append((photometric(rng, img[top:top + crop, left:left + crop], self.strength),
                          torch.from_numpy(depth[top:top + crop, left:left + crop]),
                          torch.from_numpy(sc.K[k]), torch.from_numpy(sc.pose[k]), (top, left)))
        (im1, d1, K1, P1, b1), (im2, d2, K2, P2, b2) = parts
        grid = cell_centres(crop // 8, crop // 8)
        pos2, ids = warp_depth(grid, d1, K1, P1, b1, d2, K2, P2, b2, self.tolerance)
        return TrainPair(im1, im2, grid[ids], pos2, self.kind)


def open_source(spec: str, **options: Any) -> PairSource:
    """``[kind:]PATH`` -> a source; the kind is guessed from the folder when not given.

    depth: a COLMAP model and a depths/ folder; colmap: a COLMAP model; homography: any
    folder of images.
    """
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS:
        kind, path = "", spec
    root = Path(path)
    if not root.exists():
        raise InputNotFound(f"{root}: no such folder")
    if not root.is_dir():
        raise UsageError(f"{root}: training data must be a folder")
    if not kind:
        model = find_model_dir(root)
        kind = ("depth" if model and (root / "depths").is_dir()
                else "colmap" if model else "homography")
    if kind == "depth":
        return DepthScenes(root, **{k: v for k, v in options.items() if k in ("photometric",)})
    if kind == "colmap":
        return ColmapTracks(root, **{k: v for k, v in options.items()
                                     if k in ("max_edge", "photometric")})
    return HomographyFolder(root, warp=HomographyRange().scaled(options.get("warp", 1.0)),
                            **{k: v for k, v in options.items() if k in ("max_edge", "photometric")})
