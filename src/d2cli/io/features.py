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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadFile, MissingName
from .h5store import list_entries, open_h5, read_attrs

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
        self._h5 = open_h5(self.path)
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
        try:
            n = g["keypoints"].shape[0]
            return Features(
                keypoints=g["keypoints"][()],
                descriptors=g["descriptors"][()],
                scores=g["scores"][()] if "scores" in g else np.ones(n, np.float32),
                scales=g["scales"][()] if "scales" in g else np.ones(n, np.float32),
                image_size=g["image_size"][()] if "image_size" in g else np.zeros(2, np.int64),
                global_descriptor=(g["global_descriptor"][()] if "global_descriptor" in g
                                   else None),
            )
        except (KeyError, OSError) as e:
            raise BadFile(f"{self.path}: entry {name} is malformed ({e})") from None

    def descriptors(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        """(D, N) descriptors of one image, as ``dtype`` (None: as stored, float16 for d2cli)."""
        g = self._group(name)
        if not isinstance(g.get("descriptors"), h5py.Dataset):
            raise BadFile(f"{self.path}: entry {name} has no descriptors dataset")
        d = g["descriptors"][()]
        return d if dtype is None else d.astype(dtype, copy=False)

    def keypoints(self, name: str) -> np.ndarray:
        return self._group(name)["keypoints"][()]

    def image_size(self, name: str) -> tuple[int, int]:
        """(W, H) of an image, without reading its descriptors; (0, 0) if not recorded."""
        g = self._group(name)
        return (int(g["image_size"][0]), int(g["image_size"][1])) if "image_size" in g else (0, 0)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pair_key(name0: str, name1: str, sep: str = "/") -> str:
    """hloc's key of a pair in a matches file."""
    return name0.replace("/", "-") + sep + name1.replace("/", "-")


class MatchFile:
    """Read-only access to a matches file, accepting reversed pairs and old ``a_b`` keys."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._h5 = open_h5(self.path)
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
        m0 = g["matches0"][()].astype(np.int64)
        sc = g["matching_scores0"][()] if "matching_scores0" in g else np.ones(len(m0), np.float32)
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
