"""COLMAP's SIFT (through pycolmap, CPU) as a :class:`~d2cli.extractors.FeatureExtractor`:
the classic baseline of ``d2 eval``, written in the same features-file layout so that the
same matcher and metrics serve it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..colmap.keypoints import from_colmap
from ..images import ImageItem
from ..io.h5store import H5Store
from ..jobs import ProgressFn, Stage, interruptible
from ..settings import SiftSettings
from . import ExtractionReport, Identity, digest


@dataclass(frozen=True)
class ColmapSift:
    settings: SiftSettings = SiftSettings()
    kind: str = "sift"
    label: str = "COLMAP SIFT"

    def identity(self, device: str) -> Identity:
        import pycolmap

        settings = {**self.settings.as_dict(), "pycolmap": pycolmap.__version__}
        return Identity("colmap-sift", f"colmap-sift-{pycolmap.__version__}", settings,
                        f"sift-{digest(settings)}")

    def extract(self, items: Sequence[ImageItem], root: Path, out: Path, identity: Identity,
                device: str, progress: ProgressFn | None = None) -> ExtractionReport:
        import pycolmap

        report = ExtractionReport()
        stage = Stage(progress, "extract", unit="img")
        attrs = {"d2cli_version": __version__, "model": identity.model,
                 "model_sha256": identity.model_sha256, "settings": identity.settings}
        with H5Store(out, attrs=attrs) as store:
            done = store.done()
            todo = [it for it in items if it.name not in done]
            report.reused = len(items) - len(todo)
            stage.start(len(todo))
            extractor = self._extractor() if todo else None
            with interruptible() as stop:
                for it in stop.each(todo):
                    bitmap = pycolmap.Bitmap.read(str(it.path), False)
                    if bitmap is None:
                        report.failed[it.name] = f"{it.path}: COLMAP cannot read this image"
                        stage.advance(it.name, error=report.failed[it.name])
                    else:
                        store.add(it.name, sift_features(bitmap, extractor,
                                                         self.settings.max_image_size))
                        report.extracted += 1
                        stage.advance(it.name)
            report.interrupted = stop.requested
        return report

    def _extractor(self) -> Any:
        import pycolmap

        opts = pycolmap.FeatureExtractionOptions(
            max_image_size=self.settings.max_image_size, num_threads=os.cpu_count() or 1,
            use_gpu=False)
        opts.sift.max_num_features = self.settings.max_num_features
        quiet = max(pycolmap.logging.minloglevel, 1)  # COLMAP's INFO lines would mix
        pycolmap.logging.minloglevel, level = quiet, pycolmap.logging.minloglevel  # into ours
        try:
            return pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
        finally:
            pycolmap.logging.minloglevel = level


def sift_features(bitmap: Any, extractor: Any, max_image_size: int) -> dict[str, np.ndarray]:
    """COLMAP SIFT of a grey pycolmap Bitmap, in the features-file layout.

    The image is resized as COLMAP's extraction does (truncated sizes, bilinear) and the
    keypoints scaled back; COLMAP puts pixel centres at +0.5, our files at integers.
    Descriptors (COLMAP's RootSIFT bytes) become L2-normalised floats so that the same
    dot-product matcher serves SIFT and D2-Net.
    """
    w, h = bitmap.width, bitmap.height
    if max(w, h) > max_image_size:
        scale = max_image_size / max(w, h)
        bitmap.rescale(max(1, int(w * scale)), max(1, int(h * scale)))
    kps, descs = extractor.extract(bitmap)
    sx, sy = w / bitmap.width, h / bitmap.height
    xy = np.array([[k.x, k.y] for k in kps], dtype=np.float64).reshape(-1, 2)
    xy = from_colmap(xy * [sx, sy]).astype(np.float32)
    d = np.asarray(descs.data, dtype=np.float32).reshape(-1, 128)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    n = len(xy)
    return {"keypoints": xy, "descriptors": np.ascontiguousarray(d.T),
            "scores": np.ones(n, np.float32), "scales": np.ones(n, np.float32),
            "image_size": np.array([w, h], dtype=np.int64)}



