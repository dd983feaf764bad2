"""Feature extractors: images -> a features file, behind one small interface.

An extractor is an object with a ``kind``, a default ``label`` and two methods (see
:class:`FeatureExtractor`); everything after extraction (matching, verification,
evaluation, COLMAP import) reads only the features file, in the one layout of
:mod:`d2cli.io.features`: per image ``keypoints`` (N, 2) float32 x y in the file's pixel
convention (centre of the top-left pixel at 0, 0), ``descriptors`` (D, N) unit vectors,
``scores`` (N,), ``scales`` (N,) and ``image_size`` (2,) W H.

So a new extractor is one file in this package: ``d2net`` (the package's own network,
through :func:`d2cli.extract.extract`) and ``colmap_sift`` (COLMAP's SIFT through
pycolmap, the baseline of ``d2 eval``) are the two there are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..images import ImageItem
from ..jobs import ProgressFn


@dataclass(frozen=True)
class Identity:
    """What makes an extractor's features what they are, as run on a device: files made
    with another identity are other files (``cache_stem``) and say so (``attrs``)."""

    model: str  # e.g. "d2cli-v1", "colmap-sift"
    model_sha256: str  # the weights' hash, or the library version for classic features
    settings: dict[str, Any]  # everything else that changes the features, "auto" resolved
    cache_stem: str  # file-name stem under a cache folder, e.g. "d2-d2cli-v1-3fa2c1d0"


@dataclass
class ExtractionReport:
    extracted: int = 0  # images extracted now
    reused: int = 0  # images already in the file
    failed: dict[str, str] = field(default_factory=dict)  # image name -> reason
    interrupted: bool = False  # Ctrl-C: what was finished is in the file


class FeatureExtractor(Protocol):
    """Images -> a features file (layout: module doc); resumable image by image."""

    kind: str  # short tag, e.g. "d2", "sift"
    label: str  # how tables and plots name it by default

    def identity(self, device: str) -> Identity:
        """This extractor's :class:`Identity` when run on ``device``."""
        ...

    def extract(self, items: Sequence[ImageItem], root: Path, out: Path, identity: Identity,
                device: str, progress: ProgressFn | None = None) -> ExtractionReport:
        """Add the features of ``items`` (names relative to ``root``) that ``out`` lacks;
        one unreadable image fails alone (``report.failed``)."""
        ...


def digest(data: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``data`` as sorted JSON: names a cached file."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def safe_name(name: str) -> str:
    """``name`` usable in a file name."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


__all__ = ["ExtractionReport", "FeatureExtractor", "Identity", "digest", "safe_name"]
