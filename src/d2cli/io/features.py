"""The feature and match file formats (hloc layout), in one place.

Features file (``feats.h5``)::

    <image name>/            one group per image, name = POSIX path relative to the image root
        keypoints   (N, 2) float32   x, y; pixel centre at integer coordinates (hloc convention)
        descriptors (D, N) float16   L2-normalised (float32 with --descriptor-dtype float32)
        scores      (N,)   float32
        scales      (N,)   float32   1 / pyramid scale of the detection (2.0, 1.0, 0.5)
        image_size  (2,)   int64     (W, H) of the original image
        global_descriptor (G,) float32  L2-normalised, for retrieval (hloc's global-feats
                                     layout; d2cli.retrieval); absent in older files
    attrs: d2cli_version, model, model_sha256, settings_json, image_root,
           global_descriptor (the method of the global descriptors, e.g. "gem")

Matches file (``matches.h5``)::

    <name0'>/<name1'>/       name' = name with '/' replaced by '-'
        matches0           (N0,) int16/int32   index into image 1, -1 if unmatched
        matching_scores0   (N0,) float32
    attrs: d2cli_version, features_json (attrs of the features file(s)), settings_json
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadFile, InputNotFound, MissingName
from . import h5safe
from .atomic import write_atomic
from .h5store import h5_file, list_entries, open_h5, read_attrs, write_attrs

# what a features entry may hold (io/h5safe): keypoints at most this far outside the
# image (pixel centres and sub-pixel refinement stay well inside it); image sides up to
# this many pixels (a 2^62-pixel-wide camera is a hostile file, not a photo)
KEYPOINT_MARGIN = 2.0
MAX_IMAGE_SIDE = 1 << 20

FEATURE_KEYS = ("keypoints", "descriptors", "scores", "scales", "image_size")


@dataclass
class Features:
    """Local features of one image (hloc layout, see module docstring)."""

    keypoints: np.ndarray  # (N, 2) float32, x y
    descriptors: np.ndarray  # (D, N)
    scores: np.ndarray  # (N,) float32
    scales: np.ndarray  # (N,) float32
    image_size: np.ndarray  # (2,) int64, W H
    global_descriptor: np.ndarray | None = None  # (G,) float32, L2-normalised

    def as_arrays(self) -> dict[str, np.ndarray]:
        arrays = {k: getattr(self, k) for k in FEATURE_KEYS}
        if self.global_descriptor is not None:
            arrays["global_descriptor"] = self.global_descriptor
        return arrays

    def __len__(self) -> int:
        return len(self.keypoints)


class FeatureFile:
    """Read-only access to a features file; keeps the HDF5 handle open.

    ``with FeatureFile("feats.h5") as ff: ff["img.jpg"].keypoints``
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._h5 = open_h5(self.path, what="features file")
        self.attrs: dict[str, Any] = read_attrs(self._h5)
        self._names: list[str] | None = None
        self._name_set: set[str] | None = None

    @property
    def names(self) -> list[str]:
        """The images, in file order (the groups holding ``keypoints``)."""
        if self._names is None:
            self._names = list_entries(self._h5, holding="keypoints")
        return self._names

    @property
    def global_names(self) -> set[str]:
        """The images that have a ``global_descriptor``."""
        return set(list_entries(self._h5, holding="global_descriptor"))

    def __contains__(self, name: str) -> bool:
        # one walk of the file's headers, then a set: 3 HDF5 lookups per question cost
        # 70 us, 7 s for the 100k questions of planning 50k pairs
        if self._name_set is None:
            self._name_set = set(self.names)
        return name in self._name_set

    def _group(self, name: str) -> h5py.Group:
        if name not in self:
            raise MissingName(f"{name}: not in features file {self.path}")
        return self._h5[name]

    def __getitem__(self, name: str) -> Features:
        g = self._group(name)
        size = self._image_size(g)
        kp = self._keypoints(g, size)
        n = len(kp)
        scores = h5safe.read(g, "scores", ndim=1)
        scales = h5safe.read(g, "scales", ndim=1)
        for key, a in (("scores", scores), ("scales", scales)):
            if a is not None and len(a) != n:
                raise BadFile(f"{self.path}: entry {name}/{key} has {len(a)} values for {n} "
                              "keypoints")
        return Features(
            keypoints=kp,
            descriptors=self._descriptors(g, n),
            scores=np.ones(n, np.float32) if scores is None else scores,
            scales=np.ones(n, np.float32) if scales is None else scales,
            image_size=np.asarray(size, np.int64),
            global_descriptor=h5safe.read(g, "global_descriptor", ndim=1),
        )

    def descriptors(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        """(D, N) descriptors of one image, as ``dtype`` (None: as stored, float16 for d2cli)."""
        g = self._group(name)
        kp = h5safe.dataset(g, "keypoints")
        d = self._descriptors(g, None if kp is None else kp.shape[0])
        return d if dtype is None else d.astype(dtype, copy=False)

    def keypoints(self, name: str) -> np.ndarray:
        """(N, 2) keypoints of one image, checked (finite, inside the image when its size is known)."""
        return self._keypoints(self._group(name))

    def image_size(self, name: str) -> tuple[int, int]:
        """(W, H) of an image, without reading its descriptors; (0, 0) if not recorded."""
        return self._image_size(self._group(name))

    # -- checked reads of one entry (io/h5safe: nothing in an input is trusted) ----------------
    def _where(self, g: h5py.Group) -> str:
        return f"{self.path}: entry {g.name.lstrip('/')}"

    def _image_size(self, g: h5py.Group) -> tuple[int, int]:
        size = h5safe.read(g, "image_size", kind="fiu", ndim=1)
        if size is None:
            return (0, 0)
        if size.shape != (2,) or not ((size >= 0) & (size <= MAX_IMAGE_SIDE)).all():
            raise BadFile(f"{self._where(g)}/image_size is {size.tolist()}, expected (W, H) "
                          f"of at most {MAX_IMAGE_SIDE} pixels each")
        return int(size[0]), int(size[1])

    def _keypoints(self, g: h5py.Group, size: tuple[int, int] | None = None) -> np.ndarray:
        """Checked keypoints; ``size``: the entry's (W, H) when already read."""
        kp = h5safe.require(g, "keypoints", ndim=2)
        if kp.shape[1] != 2:
            raise BadFile(f"{self._where(g)}/keypoints has shape {kp.shape}, expected (N, 2)")
        d = h5safe.dataset(g, "descriptors")  # its shape only: an entry that agrees with itself
        if d is not None and (d.ndim != 2 or d.shape[1] != len(kp)):
            raise BadFile(f"{self._where(g)}/descriptors has shape {d.shape}, expected "
                          f"(D, {len(kp)}) for its {len(kp)} keypoints")
        w, h = self._image_size(g) if size is None else size
        if w and h and len(kp):
            lo, hi = kp.min(0), kp.max(0)
            if (lo < -KEYPOINT_MARGIN).any() or hi[0] > w + KEYPOINT_MARGIN or hi[1] > h + KEYPOINT_MARGIN:
                raise BadFile(f"{self._where(g)}/keypoints lie outside the {w}x{h} image "
                              f"(x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g})")
        return kp

    def _descriptors(self, g: h5py.Group, n: int | None) -> np.ndarray:
        d = h5safe.read(g, "descriptors", ndim=2)
        if d is None:
            raise BadFile(f"{self._where(g)} has no descriptors dataset")
        if n is not None and d.shape[1] != n:
            raise BadFile(f"{self._where(g)}/descriptors has shape {d.shape}, expected (D, {n}) "
                          f"for its {n} keypoints")
        return d

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def image_folder(ff: FeatureFile | None, image_dir: str | os.PathLike | None = None
                 ) -> Path | None:
    """Where the images of a features file are: ``image_dir`` when given (it must be a
    folder), else the image root ``d2 extract`` recorded in ``ff`` if that folder is there,
    else None (features made elsewhere, or the images moved)."""
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise InputNotFound(f"{image_dir}: image folder not found")
        return Path(image_dir)
    root = ff.attrs.get("image_root") if ff is not None else None
    return Path(root) if root and Path(root).is_dir() else None


def require_image_folder(ff: FeatureFile | None, image_dir: str | os.PathLike | None,
                         why: str) -> Path:
    """:func:`image_folder` for a step that must read the images (``why``: which step)."""
    folder = image_folder(ff, image_dir)
    if folder is None:
        root = ff.attrs.get("image_root") if ff is not None else None
        where = root or f"(none recorded in {ff.path if ff is not None else 'the features'})"
        raise InputNotFound(f"{why} reads the images, and the image folder {where} is not "
                            "there: pass --image-dir")
    return folder


def write_moved_keypoints(src: str | os.PathLike, out: str | os.PathLike,
                          keypoints: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """``out``: features file ``src`` with new positions for the keypoints of the entries in
    ``keypoints`` (name -> an array of the stored shape) and file attributes
    ``attrs`` added (as :func:`~d2cli.io.h5store.write_attrs`); atomic, fsynced."""
    src = Path(src)
    with write_atomic(Path(out), fsync=True, need_bytes=2 * src.stat().st_size) as tmp:
        shutil.copyfile(src, tmp)
        with h5_file(tmp, "r+") as f:
            for name, kp in keypoints.items():
                f[name]["keypoints"][...] = np.asarray(kp, dtype=np.float32)
            write_attrs(f, attrs)


def pair_key(name0: str, name1: str, sep: str = "/") -> str:
    """hloc's key of a pair in a matches file."""
    return name0.replace("/", "-") + sep + name1.replace("/", "-")


def colliding_names(names: Iterable[str]) -> dict[str, str]:
    """The names whose pair keys collide (``sub/a.jpg`` and ``sub-a.jpg`` both give
    ``sub-a.jpg``), each mapped to the other name; empty when the keys are unambiguous.

    A matches file cannot tell such images apart: their pairs must fail, naming both,
    rather than be stored or read under the other image's key."""
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for n in names:
        other = first.setdefault(n.replace("/", "-"), n)
        if other != n:
            out.setdefault(n, other)
            out.setdefault(other, n)
    return out


def pair_collision(a: str, b: str, collide: dict[str, str]) -> str | None:
    """Why pair (a, b) cannot be keyed (an image of it in ``colliding_names``), else None."""
    x = a if a in collide else b if b in collide else None
    if x is None:
        return None
    return (f"pair {a} {b}: {x}: its pair key {x.replace('/', '-')!r} is also {collide[x]}'s "
            "(matches files write '/' as '-', as hloc does); rename one of the two images")


class MatchFile:
    """Read-only access to a matches file, accepting reversed pairs and old ``a_b`` keys."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._h5 = open_h5(self.path, what="matches file")
        self.attrs: dict[str, Any] = read_attrs(self._h5)

    def find(self, name0: str, name1: str) -> tuple[str, bool] | None:
        """(key, reversed) of a pair, or None."""
        for sep in ("/", "_"):
            for a, b, rev in ((name0, name1, False), (name1, name0, True)):
                k = pair_key(a, b, sep)
                if k in self._h5 and "matches0" in self._h5[k]:
                    return k, rev
        return None

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return self.find(*pair) is not None

    def get(self, name0: str, name1: str, num_kp1: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(matches (M, 2) int64 [idx0, idx1], scores (M,) float32) for the pair in this order.

        A reversed stored pair needs nothing more: matches0 already lists mutual pairs.
        """
        found = self.find(name0, name1)
        if found is None:
            raise MissingName(f"pair {name0} {name1}: not in matches file {self.path}")
        key, rev = found
        g = self._h5[key]
        m0 = h5safe.require(g, "matches0", kind="iu", ndim=1).astype(np.int64)
        sc = h5safe.read(g, "matching_scores0", ndim=1)
        sc = np.ones(len(m0), np.float32) if sc is None else sc
        where = f"{self.path}: entry {key}"
        if len(sc) != len(m0):
            raise BadFile(f"{where}: {len(sc)} matching scores for {len(m0)} matches")
        if len(m0) and (m0.min() < -1 or (num_kp1 is not None and m0.max() >= num_kp1)):
            raise BadFile(f"{where}/matches0 indexes keypoints {m0.min()}..{m0.max()}"
                          + (f", image 1 has {num_kp1}" if num_kp1 is not None else ""))
        idx0 = np.flatnonzero(m0 >= 0)
        pairs = np.stack([idx0, m0[idx0]], 1)
        scores = sc[idx0].astype(np.float32)
        if rev:
            pairs = pairs[:, ::-1]
            order = np.argsort(pairs[:, 0], kind="stable")
            pairs, scores = pairs[order], scores[order]
        return np.ascontiguousarray(pairs), scores

    def keys(self) -> list[str]:
        return list_entries(self._h5, holding="matches0")

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> MatchFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def matches_to_arrays(matches: np.ndarray, scores: np.ndarray, n0: int, n1: int) -> dict[str, np.ndarray]:
    """(M, 2) matches -> hloc ``matches0`` / ``matching_scores0`` arrays."""
    dtype = np.int16 if n1 <= np.iinfo(np.int16).max else np.int32
    m0 = np.full(n0, -1, dtype=dtype)
    s0 = np.zeros(n0, dtype=np.float32)
    if len(matches):
        m0[matches[:, 0]] = matches[:, 1]
        s0[matches[:, 0]] = scores
    return {"matches0": m0, "matching_scores0": s0}
