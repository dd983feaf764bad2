"""The extractor seam (d2cli.extractors): a new extractor is one class, and the evaluation,
matcher and metrics take it with no change anywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from test_eval import make_hpatches

from d2cli.eval.hpatches import evaluate_hpatches
from d2cli.eval.methods import Method, d2_method, sift_method
from d2cli.extractors import ExtractionReport, Identity, digest
from d2cli.images import ImageItem, load_rgb
from d2cli.io.features import FeatureFile
from d2cli.io.h5store import H5Store
from d2cli.jobs import ProgressFn, Stage
from d2cli.settings import ExtractSettings

STEP, R = 12, 5  # grid step and patch radius in pixels


@dataclass(frozen=True)
class GridPatches:
    """A deliberately plain extractor, written only against the interface: keypoints on a
    grid, descriptors the mean-subtracted unit grey patch around each (gain-invariant)."""

    kind: str = "grid"
    label: str = "grid patches"

    def identity(self, device: str) -> Identity:
        settings = {"step": STEP, "radius": R}
        return Identity("grid-patches", "none", settings, f"grid-{digest(settings)}")

    def extract(self, items: Sequence[ImageItem], root: Path, out: Path, identity: Identity,
                device: str, progress: ProgressFn | None = None) -> ExtractionReport:
        report = ExtractionReport()
        stage = Stage(progress, "extract", len(items), unit="img")
        with H5Store(out, attrs={"model": identity.model, "settings": identity.settings}) as store:
            for it in items:
                grey = load_rgb(it.path).astype(np.float32).mean(axis=2)
                h, w = grey.shape
                ys, xs = np.mgrid[R:h - R:STEP, R:w - R:STEP]
                xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
                patches = np.stack([grey[y - R:y + R + 1, x - R:x + R + 1].ravel()
                                    for x, y in xy.astype(int)])
                patches -= patches.mean(axis=1, keepdims=True)
                patches /= np.maximum(np.linalg.norm(patches, axis=1, keepdims=True), 1e-6)
                n = len(xy)
                store.add(it.name, {"keypoints": xy, "descriptors": patches.T.copy(),
                                    "scores": np.ones(n, np.float32),
                                    "scales": np.ones(n, np.float32),
                                    "image_size": np.array([w, h], dtype=np.int64)})
                report.extracted += 1
                stage.advance(it.name)
        return report


def test_a_new_extractor_is_one_class_and_runs_through_the_evaluation(tmp_path):
    root = make_hpatches(tmp_path / "hp")
    res = evaluate_hpatches(root, [Method("grid", GridPatches())], work_dir=tmp_path / "work",
                            device="cpu")
    s = res.summary()
    (ms,) = s["methods"]
    assert ms["label"] == "grid" and ms["features_per_image"]["mean"] > 100
    # identity homographies under gain and gamma: normalised patches match almost exactly
    mma_i = ms["mma"]["i"]
    assert mma_i[0] > 0.8, mma_i
    feats = sorted((tmp_path / "work").glob("feats-grid-*.h5"))
    assert len(feats) == 1
    with FeatureFile(feats[0]) as ff:
        assert ff.attrs["model"] == "grid-patches"  # the extractor's identity, in the file
    again = evaluate_hpatches(root, [Method("grid", GridPatches())], work_dir=tmp_path / "work",
                              device="cpu")
    assert again.summary()["methods"][0]["mma"] == ms["mma"]  # the cache serves it too


def test_the_built_in_methods_are_extractors_with_their_own_identity():
    d2 = d2_method(None, ExtractSettings(precision="fp32"))
    sift = sift_method()
    assert (d2.kind, sift.kind) == ("d2", "sift")
    a, b = d2.extractor.identity("cpu"), sift.extractor.identity("cpu")
    assert a.cache_stem.startswith("d2-") and b.cache_stem.startswith("sift-")
    assert a.settings["precision"] == "fp32" and b.model == "colmap-sift"
    ms = d2_method(None, ExtractSettings(scales=(0.5, 1.0, 2.0), precision="fp32"))
    assert ms.label.endswith(" MS") and ms.extractor.identity("cpu").cache_stem != a.cache_stem
