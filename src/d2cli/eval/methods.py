"""What the evaluations compare: extractors (D2-Net models, COLMAP SIFT: :mod:`d2cli.extractors`),
features and matches cached.

Every method writes the features of the evaluated images into one features file of the
usual format under the work directory (its extractor's job: ``d2 extract``'s for D2-Net
models, the same crash-safe writer for SIFT), named after what changes them (the
extractor's :class:`~d2cli.extractors.Identity`: model sha256 + settings), and
matches every pair with the one matcher of the package (``d2 match``'s job: mutual nearest
neighbours, no ratio test, as in the D2-Net protocol) into a matches file next to it. A
re-run reuses both; other settings get other files. ``manifest.json`` records the size and
mtime of every image seen: when an image changes, the cached files are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..device import pick_device
from ..errors import OutputError
from ..extract import ExtractSettings
from ..extractors import FeatureExtractor
from ..extractors.colmap_sift import ColmapSift
from ..extractors.d2net import D2Net
from ..images import ImageItem, load_rgb
from ..io.atomic import write_json_atomic
from ..io.features import FeatureFile, MatchFile
from ..jobs import ProgressFn, Stage, relabel
from ..match import match
from ..refine import PatchFeatures, RefineConfig
from ..refine.pair import refine_verified
from ..settings import SiftSettings
from ..weights import cache_dir

Pair = tuple[str, str]
# (stage description, done, total): the CLI draws one bar per description


@dataclass(frozen=True)
class Method:
    """One curve of a plot: an extractor (:mod:`d2cli.extractors`: a D2-Net model with
    its settings, COLMAP SIFT, ...), matched with the package's matcher, optionally with
    each pair's keypoints refined."""

    label: str
    extractor: FeatureExtractor
    refine: RefineConfig | None = None  # two-view featuremetric refinement of each pair

    @property
    def kind(self) -> str:
        return self.extractor.kind


def refined_method(m: Method, config: RefineConfig | None = None) -> Method:
    """The same features and matches, each pair's keypoints refined: those of the matches
    a LO-RANSAC fundamental matrix verifies, moves that leave it or their neighbours' local
    motion undone (:func:`~d2cli.refine.pair.refine_verified`)."""
    return dataclasses.replace(m, label=f"{m.label} + refine", refine=config or RefineConfig())


def d2_method(model: str | None, settings: ExtractSettings, label: str | None = None) -> Method:
    extractor = D2Net(model, settings)
    return Method(label or extractor.label, extractor)


def sift_method(settings: SiftSettings | None = None) -> Method:
    extractor = ColmapSift(settings or SiftSettings())
    return Method(extractor.label, extractor)


def unique_labels(methods: Sequence[Method]) -> list[Method]:
    """Make labels unique (two paths with the same stem, the same model twice)."""
    out, seen = [], {}
    for m in methods:
        n = seen.get(m.label, 0)
        seen[m.label] = n + 1
        out.append(m if n == 0 else dataclasses.replace(m, label=f"{m.label} ({n + 1})"))
    return out


@dataclass
class MethodRun:
    """The cached files of a method and what this run had to do to fill them."""

    method: Method
    features: Path
    matches: Path
    model: str = ""
    model_sha256: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    extracted: int = 0
    reused_features: int = 0
    matched: int = 0
    reused_matches: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image name -> reason
    seconds_extract: float = 0.0
    seconds_match: float = 0.0
    seconds_refine: float = 0.0
    refined: Counter[str] = field(default_factory=Counter)  # outcome -> matches (moved, undone)
    interrupted: bool = False

    def info(self) -> dict[str, Any]:
        return {
            "label": self.method.label, "kind": self.method.kind, "model": self.model,
            "model_sha256": self.model_sha256, "settings": self.settings,
            "features_file": str(self.features), "matches_file": str(self.matches),
            "extracted": self.extracted, "reused_features": self.reused_features,
            "matched": self.matched, "reused_matches": self.reused_matches,
            "failed_images": self.failed, "seconds_extract": round(self.seconds_extract, 3),
            "seconds_match": round(self.seconds_match, 3),
            "seconds_refine": round(self.seconds_refine, 3),
            "refine": self.method.refine.as_dict() if self.method.refine else None,
            "refined_matches": dict(self.refined),
        }


# --------------------------------------------------------------------------- work directory
def default_work_dir(root: Path, benchmark: str) -> Path:
    """$D2CLI_HOME/eval/<benchmark>-<folder name>-<hash of its absolute path>."""
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return cache_dir().parent / "eval" / f"{benchmark}-{root.resolve().name}-{key}"


def prepare_work_dir(work: Path, items: Sequence[ImageItem]) -> bool:
    """Create ``work``; drop cached features and matches if an image changed since.

    Returns True when cached files were dropped.
    """
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{work}: cannot create the work directory ({e.strerror})") from None
    manifest = work / "manifest.json"
    try:
        seen = json.loads(manifest.read_text()).get("images", {})
    except (OSError, ValueError, AttributeError):
        seen = {}
    now = {}
    for it in items:
        st = it.path.stat()
        now[it.name] = [st.st_size, st.st_mtime_ns]
    changed = any(seen.get(n) not in (None, v) for n, v in now.items())
    if changed:
        for p in list(work.glob("feats-*.h5*")) + list(work.glob("matches-*.h5*")):
            if p.is_dir():
                for q in p.iterdir():
                    q.unlink()
                p.rmdir()
            else:
                p.unlink()
        seen = {}
    seen.update(now)
    write_json_atomic(manifest, {"d2cli_version": __version__, "images": seen})
    return changed


# --------------------------------------------------------------------------- running a method
def run_method(
    method: Method,
    root: Path,
    items: Sequence[ImageItem],
    pairs: Sequence[Pair],
    work: Path,
    *,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> MethodRun:
    """Features of ``items`` and matches of ``pairs`` for one method, from cache or computed."""
    ident = method.extractor.identity(device)
    run = MethodRun(method, work / f"feats-{ident.cache_stem}.h5",
                    work / f"matches-{ident.cache_stem}.h5", model=ident.model,
                    model_sha256=ident.model_sha256, settings=ident.settings)
    t0 = time.perf_counter()
    rep = method.extractor.extract(items, root, run.features, ident, device,
                                   relabel(progress, f"extract {method.label}"))
    run.seconds_extract = time.perf_counter() - t0
    run.extracted, run.reused_features, run.interrupted = rep.extracted, rep.reused, rep.interrupted
    run.failed.update(rep.failed)
    if not run.interrupted:
        _match(run, pairs, device, progress)
    return run


def run_methods(methods: Sequence[Method], root: Path, items: Sequence[ImageItem],
                pairs: Sequence[Pair], work: Path, *, device: str = "auto",
                progress: ProgressFn | None = None) -> list[MethodRun]:
    """:func:`run_method` for each method (unique labels), until one is interrupted."""
    runs: list[MethodRun] = []
    for m in unique_labels(methods):
        runs.append(run_method(m, root, items, pairs, work, device=device, progress=progress))
        if runs[-1].interrupted:
            break
    return runs


def _match(run: MethodRun, pairs: Sequence[Pair], device: str,
           progress: ProgressFn | None) -> None:
    t0 = time.perf_counter()
    stage = f"match {run.method.label}"
    with FeatureFile(run.features) as ff:
        have = set(ff.names)
    todo = [(a, b) for a, b in pairs if a in have and b in have]
    if todo:
        res = match(todo, run.features, run.matches, device=device,
                    progress=relabel(progress, stage))
        run.interrupted = res.interrupted
        run.matched, run.reused_matches = len(res.matched), len(res.skipped)
    run.seconds_match = time.perf_counter() - t0


@dataclass
class PairData:
    """What the metrics need of one pair: keypoints (x, y) and matches (M, 2)."""

    kp0: np.ndarray
    kp1: np.ndarray
    matches: np.ndarray
    size0: np.ndarray  # (W, H)
    size1: np.ndarray


class PairReader:
    """Keypoints and matches of a method's pairs, keypoints read once per image.

    For a method with ``refine``, each pair's keypoints come refined (two-view, image 0
    fixed), which needs ``images`` (name -> path); ``progress`` then gets one event per
    refined pair (stage ``refine <label>``, ``total`` pairs).
    """

    def __init__(self, run: MethodRun, images: Mapping[str, Path] | None = None,
                 progress: ProgressFn | None = None, total: int | None = None) -> None:
        self.run = run
        self.ff = FeatureFile(run.features)
        self.names = set(self.ff.names)
        self.mf = MatchFile(run.matches) if run.matches.exists() else None
        self._kp: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.images = images or {}
        self._rgb: dict[str, np.ndarray] = {}  # the last two images (HPatches reuses image 1)
        self._patches: PatchFeatures | None = None
        if run.method.refine is not None:
            self.stage = Stage(progress, f"refine {run.method.label}", unit="pairs")
            self.stage.start(total)

    def num_keypoints(self, name: str) -> int:
        return len(self._keypoints(name)[0])

    def _keypoints(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._kp:
            f = self.ff[name]
            self._kp[name] = (f.keypoints, f.image_size)
        return self._kp[name]

    def has(self, a: str, b: str) -> bool:
        return a in self.names and b in self.names and self.mf is not None and (a, b) in self.mf

    def get(self, a: str, b: str) -> PairData:
        kp0, s0 = self._keypoints(a)
        kp1, s1 = self._keypoints(b)
        m, _ = self.mf.get(a, b)  # type: ignore[union-attr]
        cfg = self.run.method.refine
        if cfg is not None:
            t0 = time.perf_counter()
            self._patches = self._patches or PatchFeatures(cfg, pick_device(cfg.device))
            # verify, refine, re-verify: a wrong match is not moved onto a plausible feature
            kp0, kp1 = refine_verified(self._image(a), self._image(b), kp0, kp1, m, cfg,
                                       self._patches, counts=self.run.refined)
            self.run.seconds_refine += time.perf_counter() - t0
            self.stage.advance(f"{a} {b}")
        return PairData(kp0, kp1, m, s0, s1)

    def _image(self, name: str) -> np.ndarray:
        if name not in self._rgb:
            if len(self._rgb) >= 2:
                self._rgb.pop(next(iter(self._rgb)))
            self._rgb[name] = load_rgb(self.images[name])
        return self._rgb[name]

    def close(self) -> None:
        self.ff.close()
        if self.mf is not None:
            self.mf.close()

    def __enter__(self) -> PairReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
