"""Every step's settings and their defaults: the one place a default lives.

One frozen dataclass per step, validated when made (a bad value is a
:class:`~d2cli.errors.UsageError`, exit 2). The CLI's options read their defaults from
these classes, and the job functions take them (``settings=``), so a default is written
once. This module imports neither torch nor pycolmap: ``d2 --help`` stays instant.

=======================  ===============================  ==============================
settings                 step                             also importable from
=======================  ===============================  ==============================
:class:`ExtractSettings` ``d2 extract`` (features)        ``d2cli.extract``
:class:`MatchSettings`   ``d2 match``                     ``d2cli.match``
:class:`ImportSettings`  ``d2 colmap-import``             ``d2cli.colmap``
:class:`MapSettings`     ``d2 reconstruct``               ``d2cli.reconstruct``
:class:`LocalizeSettings` ``d2 localize``                 ``d2cli.localize``
:class:`SiftSettings`    the COLMAP SIFT baseline (eval)   ``d2cli.eval.methods``
=======================  ===============================  ==============================

(How pairs are chosen is :class:`d2cli.pairs.PairStrategy`; refinement is
:class:`d2cli.refine.RefineConfig`; ``d2 sfm`` bundles them all in
:class:`d2cli.sfm.SfmSettings`.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UsageError
from .precision import check_precision, resolve_precision

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------- extraction
SINGLE_SCALE = (1.0,)
MULTI_SCALE = (0.5, 1.0, 2.0)  # the paper's D2-Net MS
PREPROCESSING = ("caffe", "torch", "none")
DECODE_MODES = ("full", "reduced")
# images larger than this are refused (a safety limit, not a feature setting: aerial and
# panorama users raise it); twice Pillow's decompression-bomb warning
DEFAULT_MAX_PIXELS = 2 * 89_478_485


@dataclass(frozen=True)
class ExtractSettings:
    """Everything that changes the features of an image (recorded in the file)."""

    scales: tuple[float, ...] = SINGLE_SCALE
    # the reference's resize policy: the longer side, then width + height, at most these
    max_edge: int = 1600
    max_sum_edges: int = 2800
    preprocessing: str = "caffe"
    use_relu: bool = True
    max_keypoints: int | None = None
    descriptor_dtype: str = "float16"
    # of the trunk: auto = bf16 where the device runs it fast, else fp32 (see precision.py);
    # detection and refinement do their arithmetic in fp32. Files record the resolved one.
    precision: str = "auto"
    # "full": decode every pixel, then the reference resize (reference-exact); "reduced":
    # JPEGs decoded at 1/2-1/8 scale when the network input is that much smaller (bounded
    # memory for huge images; pixels differ from the reference's)
    decode: str = "full"

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise UsageError(f"decode must be one of {', '.join(DECODE_MODES)}")
        check_precision(self.precision)
        if not self.scales or any(s <= 0 for s in self.scales):
            raise UsageError("scales must be a non-empty list of positive numbers")
        if self.preprocessing not in PREPROCESSING:
            raise UsageError(f"preprocessing must be one of {', '.join(PREPROCESSING)}")
        if self.descriptor_dtype not in ("float16", "float32"):
            raise UsageError("descriptor dtype must be float16 or float32")
        if self.max_edge < 8 or self.max_sum_edges < 16:
            raise UsageError("max-edge must be >= 8 and max-sum-edges >= 16")
        if self.max_keypoints is not None and self.max_keypoints < 1:
            raise UsageError("max-keypoints must be positive")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    def resolved(self, device: torch.device) -> ExtractSettings:
        """These settings with ``auto`` precision decided for ``device``."""
        return replace(self, precision=resolve_precision(self.precision, device))


# --------------------------------------------------------------------------- baseline
@dataclass(frozen=True)
class SiftSettings:
    """COLMAP SIFT through pycolmap (CPU), its defaults except the image size."""

    max_image_size: int = ExtractSettings.max_edge  # D2-Net's: both see the same pixels
    max_num_features: int = 8192

    def __post_init__(self) -> None:
        if self.max_image_size < 16 or self.max_num_features < 1:
            raise UsageError("SIFT max image size must be >= 16 and max features >= 1")

    def as_dict(self) -> dict[str, Any]:
        return {"extractor": "colmap-sift", "max_image_size": self.max_image_size,
                "max_num_features": self.max_num_features}


# --------------------------------------------------------------------------- pairs
# the defaults of d2cli.pairs.PairStrategy and of d2 pairs (here: that module loads h5py)
SEQUENTIAL_OVERLAP = 5  # sequential: each image with the next 5 in name order
NUM_MATCHED = 20  # retrieval / covisibility / poses: pairs per image (hloc's usual 20)

# --------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class MatchSettings:
    """Everything that changes the matches of a pair (recorded in the matches file)."""

    matcher: str = "mnn"  # a name of d2cli.matchers.MATCHERS (mutual nearest neighbours)
    ratio: float | None = None  # Lowe's ratio test on top of the matcher's matches
    max_distance: float | None = None  # between unit descriptors

    def __post_init__(self) -> None:
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise UsageError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.max_distance is not None and not 0 < self.max_distance <= 2:
            raise UsageError(f"max-distance must be in (0, 2] (unit vectors), "
                             f"got {self.max_distance}")

    def as_dict(self) -> dict[str, Any]:
        return {"matcher": self.matcher, "ratio": self.ratio, "max_distance": self.max_distance}


# --------------------------------------------------------------------------- database
CAMERA_MODES = ("auto", "single", "per-folder", "per-image")


@dataclass(frozen=True)
class ImportSettings:
    """How features and matches become a COLMAP database (cameras, verification)."""

    # auto: one camera per image size and EXIF camera; single: one for all; per-folder;
    # per-image
    camera_mode: str = "auto"
    camera_model: str = "SIMPLE_RADIAL"  # any COLMAP camera model (checked on import)
    camera_params: tuple[float, ...] | None = None  # known intrinsics, in the model's order
    verify: bool = True  # pycolmap's RANSAC; False: the raw matches stored as the geometry
    prune: bool = False  # delete database pairs not imported now (an earlier pairs list)

    def __post_init__(self) -> None:
        if self.camera_mode not in CAMERA_MODES:
            raise UsageError(f"unknown camera mode {self.camera_mode!r} "
                             f"(one of {', '.join(CAMERA_MODES)})")
        if self.camera_params is not None:  # any sequence in, a hashable tuple kept
            object.__setattr__(self, "camera_params", tuple(map(float, self.camera_params)))


# --------------------------------------------------------------------------- mapping
MAPPERS = ("incremental", "global")
INTRINSICS = ("auto", "refine", "fixed")


def default_threads() -> int:
    """The cores this process may use (pycolmap's -1 would take every core of the host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class MapSettings:
    """How a COLMAP database becomes a model (``d2 reconstruct``)."""

    mapper: str = "incremental"  # or "global" (GLOMAP inside COLMAP 4)
    # refine focal lengths and distortion in bundle adjustment, keep them "fixed" as
    # imported, or "auto": refine only when most images share a camera
    intrinsics: str = "auto"
    num_threads: int | None = None  # None: the cores this process may use
    seed: int = 0  # repeatable runs
    min_num_matches: int = 15  # inlier matches for a pair to count
    options: Mapping[str, Any] | None = None  # nested pycolmap pipeline options, for the rest

    def __post_init__(self) -> None:
        if self.mapper not in MAPPERS:
            raise UsageError(f"unknown mapper {self.mapper!r} (one of {', '.join(MAPPERS)})")
        if self.intrinsics not in INTRINSICS:
            raise UsageError(f"unknown intrinsics mode {self.intrinsics!r} "
                             f"(one of {', '.join(INTRINSICS)})")
        if self.num_threads is not None and self.num_threads < 1:
            raise UsageError("threads must be >= 1")
        if self.min_num_matches < 1:
            raise UsageError("min-num-matches must be >= 1")

    @property
    def threads(self) -> int:
        return self.num_threads or default_threads()


# --------------------------------------------------------------------------- localisation
MIN_PNP_POINTS = 4  # P3P needs 3 correspondences, and RANSAC one more to tell poses apart


@dataclass(frozen=True)
class LocalizeSettings:
    """How a query's pose is estimated from its 2D-3D correspondences (recorded in the
    journal of an interrupted run: a resumed run must use the same)."""

    max_error: float = 12.0  # RANSAC threshold in pixels (hloc: 12 for Aachen, 48 for InLoc)
    min_inliers: int = 12  # a query with fewer PnP inliers fails
    refine_focal_length: bool = False  # with the pose (for cameras guessed from the size)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.max_error > 0:
            raise UsageError("max-error must be > 0 pixels")
        if self.min_inliers < MIN_PNP_POINTS:
            raise UsageError(f"min-inliers must be >= {MIN_PNP_POINTS}")


# --------------------------------------------------------------------------- helpers
S = TypeVar("S")


def with_overrides(settings: S | None, cls: type[S], overrides: Mapping[str, Any]) -> S:
    """``settings`` (default ``cls()``) with the fields named in ``overrides`` replaced:
    the job functions' ``**overrides`` (``reconstruct(db, out, seed=1)``). An unknown name
    is a usage error naming the known ones."""
    base = settings if settings is not None else cls()
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown {cls.__name__} field(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return replace(base, **overrides) if overrides else base  # type: ignore[type-var]
