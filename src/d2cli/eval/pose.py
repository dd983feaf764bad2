"""``d2 eval pose``: relative-pose accuracy on image pairs with known cameras.

For every pair: match, estimate the essential matrix with RANSAC (pycolmap, pixel threshold
``max_error``, at most ``max_trials`` iterations (pycolmap's 100000 spend ~10 s on a pair
without a solution), fixed seed), take its relative pose, and compare with the ground truth:
rotation error = angle of R_est^T R_gt, translation error = angle between the directions
(the sign of an essential matrix's t is not observable: min(e, 180 - e), as SuperGlue),
pose error = the larger of the two; a pair without an estimate has an infinite error.
AUC@t = area under the recall-vs-error curve up to t degrees, divided by t (SuperGlue's
``pose_auc``).

Ground truth comes from a Strecha-format folder (``images/`` + ``gt_dense_cameras/NAME.camera``,
or ``.camera`` files next to the images) or from a pairs file with intrinsics and relative
pose per line: ``name0 name1 K0(9) K1(9) T_0to1(16)`` (row-major; T_0to1 maps camera-0
coordinates to camera-1 coordinates), optionally with two EXIF-rotation columns after the
names as in SuperGlue's files (only 0 is accepted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadFile, EmptyInput, InputNotFound, UsageError
from ..images import ImageItem, find_images
from ..jobs import ProgressFn, Stage
from .methods import (
    Method,
    MethodRun,
    PairReader,
    default_work_dir,
    prepare_work_dir,
    run_methods,
)

AUC_THRESHOLDS = (5, 10, 20)


@dataclass
class PosePair:
    name0: str
    name1: str
    K0: np.ndarray  # 3x3, pixel centres at integer coordinates
    K1: np.ndarray
    T_0to1: np.ndarray  # 4x4


@dataclass
class StrechaCamera:
    K: np.ndarray
    R: np.ndarray  # world-to-camera
    t: np.ndarray  # world-to-camera


# --------------------------------------------------------------------------- ground truth
def read_strecha_camera(path: Path, image_size: tuple[int, int] | None = None) -> StrechaCamera:
    """A Strecha ``.camera`` file: K, distortion, R (camera-to-world), centre C, size.

    Returns the world-to-camera pose (R^T, -R^T C). When the image is stored at another
    size than the camera file says, K is scaled to it.
    """
    try:
        v = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError):
        raise BadFile(f"{path}: not a Strecha .camera file (numbers expected)") from None
    if v.size != 26 or not np.isfinite(v).all():
        raise BadFile(f"{path}: not a Strecha .camera file (expected 26 numbers: K(9), "
                      f"distortion(3), R(9), centre(3), width height; got {v.size})")
    K, dist, R, C, (w, h) = v[:9].reshape(3, 3), v[9:12], v[12:21].reshape(3, 3), v[21:24], v[24:]
    if np.any(dist != 0):
        raise BadFile(f"{path}: non-zero distortion; undistort the images first")
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
        raise BadFile(f"{path}: R is not a rotation matrix")
    if abs(K[0, 1]) > 1e-9 or np.any(K[2] != [0, 0, 1]):
        raise BadFile(f"{path}: K must be [fx 0 cx; 0 fy cy; 0 0 1]")
    if image_size is not None and (image_size[0] != w or image_size[1] != h):
        K = scale_intrinsics(K, image_size[0] / w, image_size[1] / h)
    return StrechaCamera(K, R.T, -R.T @ C)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of the same camera for an image resized by (sx, sy); pixel centres at integers."""
    K = K.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def read_strecha(root: str | Path, max_gap: int | None = None
                 ) -> tuple[Path, list[ImageItem], list[PosePair]]:
    """Images with cameras under a Strecha-format folder and their pairs.

    Pairs: every two images, or those at most ``max_gap`` apart in name order.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise InputNotFound(f"{root}: no such folder")
    img_dir = (root / "images" if (root / "images").is_dir() else root).resolve()
    cam_dirs = [root / "gt_dense_cameras", img_dir]
    items, cams = [], {}
    for p in find_images(img_dir):
        name = p.relative_to(img_dir).as_posix()
        cam = next((d / f"{name}.camera" for d in cam_dirs if (d / f"{name}.camera").is_file()),
                   None)
        if cam is None:
            continue
        try:
            with Image.open(p) as im:
                size = im.size
        except OSError:
            size = None  # unreadable: the extraction reports it
        items.append(ImageItem(name, p))
        cams[name] = read_strecha_camera(cam, size)
    if len(items) < 2:
        raise EmptyInput(f"{root}: fewer than 2 images with a Strecha .camera file "
                         "(images/NAME + gt_dense_cameras/NAME.camera, or NAME.camera "
                         "next to the image)")
    if max_gap is not None and max_gap < 1:
        raise UsageError("max-gap must be >= 1")
    pairs = []
    for i, a in enumerate(items):
        for b in items[i + 1:i + 1 + (max_gap or len(items))]:
            ca, cb = cams[a.name], cams[b.name]
            R = cb.R @ ca.R.T
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R, cb.t - R @ ca.t
            pairs.append(PosePair(a.name, b.name, ca.K, cb.K, T))
    return img_dir, items, pairs


def read_pose_pairs(path: str | Path, image_root: str | Path
                    ) -> tuple[Path, list[ImageItem], list[PosePair]]:
    """A pairs file with intrinsics and relative poses (see module docstring)."""
    path, root = Path(path), Path(image_root)
    if not path.is_file():
        raise InputNotFound(f"{path}: pairs file not found")
    if not root.is_dir():
        raise InputNotFound(f"{root}: no such folder")
    root = root.resolve()
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if len(tok) not in (36, 38):
            raise BadFile(f"{path}:{lineno}: expected 'name0 name1 K0(9) K1(9) T_0to1(16)', "
                          f"got {len(tok)} fields")
        try:
            v = np.array(tok[2:], dtype=np.float64)
        except ValueError:
            raise BadFile(f"{path}:{lineno}: non-numeric intrinsics or pose") from None
        if len(tok) == 38:
            if np.any(v[:2] != 0):
                raise BadFile(f"{path}:{lineno}: EXIF rotations are not supported (must be 0)")
            v = v[2:]
        T = v[18:].reshape(4, 4)
        R = T[:3, :3]
        if not np.isfinite(v).all() or np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
            raise BadFile(f"{path}:{lineno}: T_0to1 does not hold a rotation")
        pairs.append(PosePair(tok[0], tok[1], v[:9].reshape(3, 3), v[9:18].reshape(3, 3), T))
    if not pairs:
        raise EmptyInput(f"{path}: no pairs")
    names = dict.fromkeys(n for p in pairs for n in (p.name0, p.name1))
    return root, [ImageItem(n, root / n) for n in names], pairs


# --------------------------------------------------------------------------- the metric
def estimate_relative_pose(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray,
                           K0: np.ndarray, K1: np.ndarray, size0: Sequence[int],
                           size1: Sequence[int], max_error: float, max_trials: int = 10000,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(R, t, inliers) of camera 1 from camera 0 by essential-matrix RANSAC, or None.

    Keypoints and K share the convention (pixel centres at integers); pycolmap's +0.5
    offset would shift both alike, so it is not applied.
    """
    import pycolmap

    if len(matches) < 5:
        return None
    p0 = kp0[matches[:, 0], :2].astype(np.float64)
    p1 = kp1[matches[:, 1], :2].astype(np.float64)

    def cam(K: np.ndarray, size: Sequence[int]) -> Any:
        return pycolmap.Camera(model="PINHOLE", width=int(size[0]), height=int(size[1]),
                               params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])

    opts = pycolmap.RANSACOptions(max_error=max_error, max_num_trials=max_trials,
                                  min_num_trials=min(1000, max_trials), random_seed=seed)
    res = pycolmap.estimate_essential_matrix(p0, p1, cam(K0, size0), cam(K1, size1), opts)
    if res is None:
        return None
    rig = res["cam2_from_cam1"]
    return rig.rotation.matrix(), np.asarray(rig.translation), int(res["num_inliers"])


def pose_errors(R: np.ndarray, t: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees."""
    R_gt, t_gt = T_gt[:3, :3], T_gt[:3, 3]
    cos = np.clip((np.trace(R.T @ R_gt) - 1) / 2, -1.0, 1.0)
    r_err = float(np.degrees(np.arccos(cos)))
    n = np.linalg.norm(t) * np.linalg.norm(t_gt)
    if n < 1e-12:
        return r_err, 0.0  # no baseline: the direction is undefined, only R counts
    t_err = float(np.degrees(np.arccos(np.clip(t @ t_gt / n, -1.0, 1.0))))
    return r_err, min(t_err, 180.0 - t_err)


def pose_auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS
             ) -> list[float]:
    """Area under the recall(error) curve up to each threshold, normalised to [0, 1]."""
    e = np.sort(np.asarray(errors, dtype=np.float64))
    if e.size == 0:
        return [0.0 for _ in thresholds]
    recall = np.arange(1, e.size + 1) / e.size
    e = np.concatenate([[0.0], e])
    recall = np.concatenate([[0.0], recall])
    out = []
    for t in thresholds:
        last = int(np.searchsorted(e, t))
        x = np.concatenate([e[:last], [t]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        out.append(float(np.trapezoid(y, x) / t))
    return out


@dataclass
class PairPose:
    name0: str
    name1: str
    matches: int
    inliers: int
    r_err: float  # degrees; inf without an estimate
    t_err: float

    @property
    def error(self) -> float:
        return max(self.r_err, self.t_err)


@dataclass
class PoseMethodScore:
    run: MethodRun
    pairs: list[PairPose] = field(default_factory=list)

    def auc(self) -> list[float]:
        return pose_auc([p.error for p in self.pairs])

    def summary(self) -> dict[str, Any]:
        errs = [p.error for p in self.pairs]
        m = [p.matches for p in self.pairs]
        inl = [p.inliers for p in self.pairs]
        return {
            **self.run.info(),
            "auc": dict(zip((f"@{t}" for t in AUC_THRESHOLDS), self.auc(), strict=True)),
            "matches_per_pair": float(np.mean(m)) if m else 0.0,
            "inliers_per_pair": float(np.mean(inl)) if inl else 0.0,
            "median_error": float(np.median(errs)) if errs else None,
            "failed_estimates": int(sum(1 for e in errs if not np.isfinite(e))),
            "pairs": [{"name0": p.name0, "name1": p.name1, "matches": p.matches,
                       "inliers": p.inliers,
                       "r_err": p.r_err if np.isfinite(p.r_err) else None,
                       "t_err": p.t_err if np.isfinite(p.t_err) else None}
                      for p in self.pairs],
        }


@dataclass
class PoseResult:
    root: Path
    work_dir: Path
    source: str  # "strecha" | pairs file path
    num_pairs: int
    max_error: float
    max_trials: int
    methods: list[PoseMethodScore]
    failed: dict[str, str] = field(default_factory=dict)  # "name0 name1" -> why dropped
    cache_dropped: bool = False
    seconds: float = 0.0
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": "pose", "root": str(self.root), "work_dir": str(self.work_dir),
            "source": self.source, "pairs": self.num_pairs,
            "evaluated_pairs": len(self.methods[0].pairs) if self.methods else 0,
            "ransac_max_error_px": self.max_error, "ransac_max_trials": self.max_trials,
            "auc_thresholds_deg": list(AUC_THRESHOLDS),
            "failed_pairs": self.failed, "cache_dropped": self.cache_dropped,
            "methods": [m.summary() for m in self.methods], "seconds": round(self.seconds, 3),
        }


def evaluate_pose(
    root: str | Path,
    methods: Sequence[Method],
    *,
    pairs_file: str | Path | None = None,
    max_gap: int | None = None,
    max_error: float = 2.0,
    max_trials: int = 10000,
    work_dir: str | Path | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> PoseResult:
    """Relative-pose AUC of every method on a Strecha folder or a pairs file (module doc).

    A pair that some method could not process (unreadable or missing image) is dropped
    for all methods and listed in ``result.failed``.
    """
    t0 = time.perf_counter()
    if max_error <= 0 or max_trials < 1:
        raise UsageError("the RANSAC threshold and number of trials must be positive")
    if pairs_file is not None:
        root, items, pairs = read_pose_pairs(pairs_file, root)
        source = str(pairs_file)
    else:
        root, items, pairs = read_strecha(root, max_gap)
        source = "strecha"
    work = Path(work_dir) if work_dir is not None else default_work_dir(root, "pose")
    missing = {it.name for it in items if not it.path.is_file()}
    failed = {f"{p.name0} {p.name1}": f"{n}: no such image in {root}"
              for p in pairs for n in (p.name0, p.name1) if n in missing}
    present = [it for it in items if it.name not in missing]
    if not present:
        raise EmptyInput(f"none of the images of the pairs are in {root}")
    dropped = prepare_work_dir(work, present)
    todo = [p for p in pairs if f"{p.name0} {p.name1}" not in failed]
    names = [(p.name0, p.name1) for p in todo]
    runs = run_methods(methods, root, present, names, work, device=device, progress=progress)
    if any(r.interrupted for r in runs):  # the caches keep what is done
        return PoseResult(root, work, source, len(pairs), max_error, max_trials, [], failed,
                          dropped, time.perf_counter() - t0, interrupted=True)
    paths = {it.name: it.path for it in present}
    readers = [PairReader(r, paths, progress, len(todo)) for r in runs]
    try:
        for p in todo:
            for r, rd in zip(runs, readers, strict=True):
                if not rd.has(p.name0, p.name1):
                    why = r.failed.get(p.name0) or r.failed.get(p.name1) or "not matched"
                    failed.setdefault(f"{p.name0} {p.name1}", f"{r.method.label}: {why}")
        scores = []
        for r, rd in zip(runs, readers, strict=True):
            ms = PoseMethodScore(r)
            kept = [p for p in todo if f"{p.name0} {p.name1}" not in failed]
            stage = Stage(progress, f"pose {r.method.label}", unit="pairs")
            stage.start(len(kept))
            for p in kept:
                pd = rd.get(p.name0, p.name1)
                est = estimate_relative_pose(pd.kp0, pd.kp1, pd.matches, p.K0, p.K1,
                                             pd.size0, pd.size1, max_error, max_trials)
                if est is None:
                    ms.pairs.append(PairPose(p.name0, p.name1, len(pd.matches), 0,
                                             np.inf, np.inf))
                else:
                    r_err, t_err = pose_errors(est[0], est[1], p.T_0to1)
                    ms.pairs.append(PairPose(p.name0, p.name1, len(pd.matches), est[2],
                                             r_err, t_err))
                stage.advance(f"{p.name0} {p.name1}")
            scores.append(ms)
    finally:
        for rd in readers:
            rd.close()
    return PoseResult(root, work, source, len(pairs), max_error, max_trials, scores, failed,
                      dropped, time.perf_counter() - t0)
