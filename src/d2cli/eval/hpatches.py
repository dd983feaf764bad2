"""``d2 eval hpatches``: the HPatches-sequences mean matching accuracy of the D2-Net paper.

Protocol (the reference notebook, reproduced exactly): every sequence ``<seq>/1..6.ppm``
gives 5 pairs (image 1 with image k = 2..6); matches are mutual nearest neighbours of the
descriptors; a match's error is the distance between its keypoint in image k and the
image-1 keypoint mapped by ``H_1_k`` (image-1 pixels -> image-k pixels); a pair's accuracy
at t pixels is the fraction of its matches with error <= t (0 without matches); MMA(t) is
the sum of pair accuracies over the number of pairs: overall, illumination (``i_*``) and
viewpoint (``v_*``) sequences. The 8 high-resolution sequences the reference removes are
left out unless asked for; incomplete sequences are skipped and reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmptyInput, InputNotFound
from ..images import IMAGE_EXTENSIONS, ImageItem
from ..jobs import ProgressFn
from .methods import (
    Method,
    MethodRun,
    PairReader,
    default_work_dir,
    prepare_work_dir,
    run_methods,
)

# removed by the reference's download.sh (larger than 1600x1200)
EXCLUDED = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
            "v_artisans", "v_astronautis", "v_talent")
THRESHOLDS = tuple(range(1, 16))  # computed for 1..15 px, plotted for 1..10
KINDS = {"i": "illumination", "v": "viewpoint"}


@dataclass
class HSequence:
    name: str
    kind: str  # "i", "v" or "other" (counted in "overall" only)
    images: list[ImageItem]  # 1..6, names relative to the root
    homographies: list[np.ndarray]  # H_1_2 .. H_1_6


def find_sequences(root: str | Path, all_sequences: bool = False
                   ) -> tuple[Path, list[HSequence], dict[str, str], list[str]]:
    """(root, complete sequences, {broken sequence: why}, [excluded by the protocol])."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFound(f"{root}: no such folder")
    root = root.resolve()
    seqs, skipped, excluded = [], {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = [_image(d, k) for k in range(1, 7)]
        hfiles = [d / f"H_1_{k}" for k in range(2, 7)]
        if not any(imgs) and not any(h.exists() for h in hfiles):
            continue  # not a sequence folder at all
        if d.name in EXCLUDED and not all_sequences:
            excluded.append(d.name)  # the reference removes them (images over 1600x1200)
            continue
        missing = [f"{k}.ppm" for k, p in enumerate(imgs, 1) if p is None]
        missing += [h.name for h in hfiles if not h.is_file()]
        if missing:
            skipped[d.name] = f"incomplete sequence, missing {', '.join(missing)}"
            continue
        try:
            hs = [_read_h(h) for h in hfiles]
        except ValueError as e:
            skipped[d.name] = str(e)
            continue
        kind = d.name[0] if d.name[:2] in ("i_", "v_") else "other"
        items = [ImageItem(p.relative_to(root).as_posix(), p) for p in imgs if p is not None]
        seqs.append(HSequence(d.name, kind, items, hs))
    if not seqs:
        raise EmptyInput(f"{root}: no HPatches sequences (folders with 1.ppm .. 6.ppm and "
                         f"H_1_2 .. H_1_6){'; skipped: ' + ', '.join(skipped) if skipped else ''}")
    return root, seqs, skipped, excluded


def _image(d: Path, k: int) -> Path | None:
    for ext in (".ppm", *IMAGE_EXTENSIONS):
        p = d / f"{k}{ext}"
        if p.is_file():
            return p
    return None


def _read_h(path: Path) -> np.ndarray:
    try:
        h = np.loadtxt(path, dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path.name} is not a matrix of numbers") from None
    if h.shape != (3, 3) or not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-12:
        raise ValueError(f"{path.name} is not an invertible 3x3 matrix")
    return h


# --------------------------------------------------------------------------- the metric
def match_errors(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray,
                 H: np.ndarray) -> np.ndarray:
    """Reprojection error (px) of every match; ``[inf]`` when there is none (the protocol)."""
    if len(matches) == 0:
        return np.array([np.inf])
    p0 = kp0[matches[:, 0], :2].astype(np.float64)
    p1 = kp1[matches[:, 1], :2].astype(np.float64)
    q = np.concatenate([p0, np.ones((len(p0), 1))], 1) @ H.T
    q = q[:, :2] / q[:, 2:]
    return np.linalg.norm(p1 - q, axis=1)


def pair_accuracy(errors: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Fraction of matches with error <= t (inclusive), for every t."""
    return np.array([np.mean(errors <= t) for t in thresholds])


@dataclass
class PairScore:
    seq: str
    kind: str
    k: int
    matches: int
    accuracy: np.ndarray  # per threshold


@dataclass
class MethodScore:
    run: MethodRun
    features: dict[str, int] = field(default_factory=dict)  # image name -> keypoints
    pairs: list[PairScore] = field(default_factory=list)

    def mma(self, kind: str | None = None) -> np.ndarray | None:
        """Mean of the pair accuracies (all pairs, or one sequence kind); None without pairs."""
        sel = [p.accuracy for p in self.pairs if kind is None or p.kind == kind]
        return np.sum(sel, 0) / len(sel) if sel else None

    def matches_per_pair(self, kind: str | None = None) -> float | None:
        sel = [p.matches for p in self.pairs if kind is None or p.kind == kind]
        return float(np.sum(sel) / len(sel)) if sel else None

    def summary(self) -> dict[str, Any]:
        n = list(self.features.values())
        mma = {"overall": self.mma()}
        mma.update({k: self.mma(k) for k in KINDS})
        per_seq: dict[str, dict[str, Any]] = {}
        for p in self.pairs:
            s = per_seq.setdefault(p.seq, {"matches": [], "mma3": []})
            s["matches"].append(p.matches)
            s["mma3"].append(float(p.accuracy[2]))
        return {
            **self.run.info(),
            "features_per_image": {"mean": float(np.mean(n)) if n else 0.0,
                                   "min": int(min(n)) if n else 0,
                                   "max": int(max(n)) if n else 0},
            "matches_per_pair": {"overall": self.matches_per_pair(),
                                 **{k: self.matches_per_pair(k) for k in KINDS}},
            "mma": {k: None if v is None else [float(x) for x in v] for k, v in mma.items()},
            "per_sequence": {s: {"matches": v["matches"], "mma3": v["mma3"]}
                             for s, v in per_seq.items()},
        }


@dataclass
class HPatchesResult:
    root: Path
    work_dir: Path
    sequences: list[HSequence]
    skipped: dict[str, str]
    excluded: list[str]
    methods: list[MethodScore]
    failed: dict[str, str] = field(default_factory=dict)  # "seq k" -> why the pair was dropped
    cache_dropped: bool = False
    seconds: float = 0.0
    thresholds: tuple[int, ...] = THRESHOLDS
    interrupted: bool = False

    def num_pairs(self, kind: str | None = None) -> int:
        ms = self.methods[0] if self.methods else None
        return 0 if ms is None else sum(1 for p in ms.pairs if kind is None or p.kind == kind)

    def summary(self) -> dict[str, Any]:
        kinds = [s.kind for s in self.sequences]
        return {
            "benchmark": "hpatches", "root": str(self.root), "work_dir": str(self.work_dir),
            "sequences": {"total": len(kinds), "i": kinds.count("i"), "v": kinds.count("v"),
                          "other": kinds.count("other")},
            "pairs": {"overall": self.num_pairs(), "i": self.num_pairs("i"),
                      "v": self.num_pairs("v")},
            "skipped_sequences": self.skipped, "excluded_sequences": self.excluded,
            "failed_pairs": self.failed,
            "cache_dropped": self.cache_dropped, "thresholds": list(self.thresholds),
            "methods": [m.summary() for m in self.methods],
            "seconds": round(self.seconds, 3),
        }


def evaluate_hpatches(
    root: str | Path,
    methods: Sequence[Method],
    *,
    work_dir: str | Path | None = None,
    all_sequences: bool = False,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> HPatchesResult:
    """MMA of every method on the HPatches-layout folder ``root`` (see module docstring).

    Features and matches are cached under ``work_dir`` (default: in the d2cli cache).
    A pair that some method could not process (an unreadable image) is dropped for all
    methods, so that they are compared on the same pairs; ``result.failed`` says which.
    """
    t0 = time.perf_counter()
    root, seqs, skipped, excluded = find_sequences(root, all_sequences)
    work = Path(work_dir) if work_dir is not None else default_work_dir(root, "hpatches")
    items = [it for s in seqs for it in s.images]
    dropped = prepare_work_dir(work, items)
    pairs = [(s.images[0].name, s.images[k].name) for s in seqs for k in range(1, 6)]
    runs = run_methods(methods, root, items, pairs, work, device=device, progress=progress)
    if any(r.interrupted for r in runs):  # the caches keep what is done
        return HPatchesResult(root, work, seqs, skipped, excluded, [], {}, dropped,
                              time.perf_counter() - t0, interrupted=True)

    paths = {it.name: it.path for it in items}
    readers = [PairReader(r, paths, progress, len(pairs)) for r in runs]
    try:
        failed: dict[str, str] = {}
        for s in seqs:
            for k in range(2, 7):
                a, b = s.images[0].name, s.images[k - 1].name
                for r, rd in zip(runs, readers, strict=True):
                    if not rd.has(a, b):
                        why = r.failed.get(a) or r.failed.get(b) or "not matched"
                        failed.setdefault(f"{s.name} {k}", f"{r.method.label}: {why}")
        scores = []
        for r, rd in zip(runs, readers, strict=True):
            ms = MethodScore(r)
            for s in seqs:
                for it in s.images:
                    if it.name in rd.names:
                        ms.features[it.name] = rd.num_keypoints(it.name)
                for k in range(2, 7):
                    if f"{s.name} {k}" in failed:
                        continue
                    pd = rd.get(s.images[0].name, s.images[k - 1].name)
                    err = match_errors(pd.kp0, pd.kp1, pd.matches, s.homographies[k - 2])
                    ms.pairs.append(PairScore(s.name, s.kind, k, len(pd.matches),
                                              pair_accuracy(err)))
            scores.append(ms)
    finally:
        for rd in readers:
            rd.close()
    return HPatchesResult(root, work, seqs, skipped, excluded, scores, failed, dropped,
                          time.perf_counter() - t0)
