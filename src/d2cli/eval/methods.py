"""What the evaluations compare: D2-Net models and COLMAP SIFT, features and matches cached.

Every method writes the features of the evaluated images into one features file of the
usual format under the work directory (``d2 extract``'s job for D2-Net models, the same
crash-safe writer for SIFT), named after what changes them (model sha256 + settings), and
matches every pair with the one matcher of the package (``d2 match``'s job: mutual nearest
neighbours, no ratio test, as in the D2-Net protocol) into a matches file next to it. A
re-run reuses both; other settings get other files. ``manifest.json`` records the size and
mtime of every image seen: when an image changes, the cached files are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..colmap.keypoints import from_colmap
from ..device import pick_device
from ..errors import OutputError, UsageError
from ..extract import ExtractSettings, extract
from ..images import ImageItem, load_rgb
from ..io.atomic import write_json_atomic
from ..io.features import FeatureFile, MatchFile
from ..io.h5store import H5Store
from ..jobs import ProgressFn, Stage, interruptible, relabel
from ..match import match
from ..refine import PatchFeatures, RefineConfig, refine_pair
from ..settings import MULTI_SCALE, SINGLE_SCALE, SiftSettings
from ..weights import ModelInfo, cache_dir, resolve_model

Pair = tuple[str, str]
# (stage description, done, total): the CLI draws one bar per description


@dataclass(frozen=True)
class Method:
    """One curve of a plot: a D2-Net model with extraction settings, or COLMAP SIFT."""

    label: str
    kind: str  # "d2" | "sift"
    model: str | None = None  # d2: registry name or .pth path
    settings: ExtractSettings | None = None
    sift: SiftSettings | None = None
    refine: RefineConfig | None = None  # d2: two-view featuremetric refinement of each pair


def refined_method(m: Method, config: RefineConfig | None = None) -> Method:
    """The same features and matches, each pair's keypoints refined (:func:`refine_pair`)."""
    return dataclasses.replace(m, label=f"{m.label} + refine", refine=config or RefineConfig())

def d2_method(model: str | None, settings: ExtractSettings, label: str | None = None) -> Method:
    if label is None:
        label = resolve_model(model).name
        if tuple(settings.scales) == MULTI_SCALE:
            label += " MS"
        elif tuple(settings.scales) != SINGLE_SCALE:
            label += " scales " + ",".join(f"{s:g}" for s in settings.scales)
        if settings.precision != "fp32":
            label += f" {settings.precision}"
    return Method(label, "d2", model, settings)


def sift_method(settings: SiftSettings | None = None) -> Method:
    return Method("COLMAP SIFT", "sift", sift=settings or SiftSettings())


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


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


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
    if method.kind == "d2":
        info: ModelInfo = resolve_model(method.model)
        # auto decided first: the cache holds what ran, whoever asked for it
        settings = (method.settings or ExtractSettings()).resolved(pick_device(device))
        sdict = settings.as_dict()
        key = _digest({"model_sha256": info.sha256, "settings": sdict})
        run = MethodRun(method, work / f"feats-d2-{_safe(info.name)}-{key}.h5",
                        work / f"matches-d2-{_safe(info.name)}-{key}.h5",
                        model=info.name, model_sha256=info.sha256, settings=sdict)
        _extract_d2(run, root, items, info, settings, device, progress)
        if run.interrupted:
            return run
    elif method.kind == "sift":
        import pycolmap

        sift = method.sift or SiftSettings()
        sdict = {**sift.as_dict(), "pycolmap": pycolmap.__version__}
        key = _digest(sdict)
        run = MethodRun(method, work / f"feats-sift-{key}.h5", work / f"matches-sift-{key}.h5",
                        model="colmap-sift", model_sha256=f"colmap-sift-{pycolmap.__version__}",
                        settings=sdict)
        _extract_sift(run, items, sift, progress)
        if run.interrupted:
            return run
    else:
        raise UsageError(f"unknown method kind {method.kind!r}")
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


def _extract_d2(run: MethodRun, root: Path, items: Sequence[ImageItem], info: ModelInfo,
                settings: ExtractSettings, device: str,
                progress: ProgressFn | None) -> None:
    t0 = time.perf_counter()
    res = extract([it.path for it in items], run.features, model=run.method.model,
                  settings=settings, image_root=root, device=device,
                  progress=relabel(progress, f"extract {run.method.label}"))
    run.interrupted = res.interrupted
    run.extracted, run.reused_features = len(res.extracted), len(res.skipped)
    run.failed.update(res.failed)
    run.seconds_extract = time.perf_counter() - t0


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


def _extract_sift(run: MethodRun, items: Sequence[ImageItem], sift: SiftSettings,
                  progress: ProgressFn | None) -> None:
    import pycolmap

    t0 = time.perf_counter()
    stage = Stage(progress, f"extract {run.method.label}", unit="img")
    attrs = {"d2cli_version": __version__, "model": run.model,
             "model_sha256": run.model_sha256, "settings": run.settings}
    with H5Store(run.features, attrs=attrs) as store:
        done = store.done()
        todo = [it for it in items if it.name not in done]
        run.reused_features = len(items) - len(todo)
        stage.start(len(todo))
        if todo:
            opts = pycolmap.FeatureExtractionOptions(
                max_image_size=sift.max_image_size, num_threads=os.cpu_count() or 1,
                use_gpu=False)
            opts.sift.max_num_features = sift.max_num_features
            quiet = max(pycolmap.logging.minloglevel, 1)  # COLMAP's INFO lines would mix
            pycolmap.logging.minloglevel, level = quiet, pycolmap.logging.minloglevel  # into ours
            try:
                extractor = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
            finally:
                pycolmap.logging.minloglevel = level
        with interruptible() as stop:
            for it in stop.each(todo):
                bitmap = pycolmap.Bitmap.read(str(it.path), False)
                if bitmap is None:
                    run.failed[it.name] = f"{it.path}: COLMAP cannot read this image"
                    stage.advance(it.name, error=run.failed[it.name])
                else:
                    store.add(it.name, sift_features(bitmap, extractor, sift.max_image_size))
                    run.extracted += 1
                    stage.advance(it.name)
        run.interrupted = stop.requested
    run.seconds_extract = time.perf_counter() - t0


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
            kp0, kp1 = refine_pair(self._image(a), self._image(b), kp0, kp1, m, cfg,
                                   self._patches)
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
