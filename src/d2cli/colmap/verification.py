"""Two-view verification of imported pairs with pycolmap (the slow step of
``d2 colmap-import``): in growing batches, so that progress and Ctrl-C come every few
seconds, and with the raw matches pycolmap empties written back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pycolmap

from ..io.atomic import new_temporary
from ..io.features import MatchFile
from ..io.pairs import write_pairs
from ..jobs import ProgressFn, Stage, interruptible
from .database import open_database

if TYPE_CHECKING:
    from .importer import ImportResult

# Pairs per verify_matches call. Each call sets up COLMAP's matcher anew and re-reads the
# database's images (~0.6 s at 5,000 images, measured): with fixed 64-pair calls that
# overhead doubled the verification time at 5,000 images (docs/benchmarks.md, "Scale").
# So the first call takes VERIFY_FIRST_BATCH pairs and each next one as many as the last
# rate fills in VERIFY_SECONDS (at most VERIFY_MAX_BATCH): progress and Ctrl-C still come
# between calls, every few seconds.
VERIFY_FIRST_BATCH = 64
VERIFY_MAX_BATCH = 8192
VERIFY_SECONDS = 15.0
# hloc's verification settings: more trials and a lower inlier ratio than COLMAP's
# defaults, which suit learned features with many outliers; a fixed seed makes the same
# import give the same database (COLMAP's default seed is random).
VERIFY_OPTIONS = {"ransac": {"max_num_trials": 20000, "min_inlier_ratio": 0.1, "random_seed": 0}}
CONFIG = pycolmap.TwoViewGeometryConfiguration
UNUSABLE_CONFIGS = (int(CONFIG.UNDEFINED), int(CONFIG.DEGENERATE))


# two-view uses (d2 eval --refine): the threshold of COLMAP's two-view geometry (px)
EPIPOLAR_MAX_ERROR = 4.0


def epipolar_geometry(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray,
                      max_error: float = EPIPOLAR_MAX_ERROR) -> tuple[np.ndarray | None, np.ndarray]:
    """The LO-RANSAC fundamental matrix (3, 3) of the matches (M, 2) of keypoints kp0
    (N0, 2), kp1 (N1, 2) at ``max_error`` px (pycolmap, VERIFY_OPTIONS' RANSAC) and its
    (M,) bool inliers; (None, none) with fewer than 8 matches or no estimate."""
    m = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(m) < 8:
        return None, np.zeros(len(m), bool)
    opts = pycolmap.RANSACOptions(max_error=max_error, **VERIFY_OPTIONS["ransac"])
    r = pycolmap.estimate_fundamental_matrix(kp0[m[:, 0], :2].astype(np.float64),
                                             kp1[m[:, 1], :2].astype(np.float64), opts)
    if r is None:
        return None, np.zeros(len(m), bool)
    return np.asarray(r["F"]), np.asarray(r["inlier_mask"], bool).reshape(-1)


def epipolar_inliers(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray,
                     max_error: float = EPIPOLAR_MAX_ERROR) -> np.ndarray:
    """(M,) bool: the matches that :func:`epipolar_geometry` keeps."""
    return epipolar_geometry(kp0, kp1, matches, max_error)[1]


def sampson_error(F: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """(M,) first-order geometric error (px) of point pairs x0, x1 (M, 2) under F (the
    error COLMAP's fundamental-matrix RANSAC thresholds)."""
    h0 = np.concatenate([x0, np.ones((len(x0), 1))], 1)
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    f0, f1 = h0 @ F.T, h1 @ F  # F x0 and F^T x1, (M, 3)
    num = np.einsum("ij,ij->i", h1, f0) ** 2
    den = f0[:, 0] ** 2 + f0[:, 1] ** 2 + f1[:, 0] ** 2 + f1[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-12))


def verify_pairs(result: ImportResult, pairs: list[tuple[str, str]], mf: MatchFile,
                 progress: ProgressFn | None) -> None:
    """pycolmap verification of the given pairs, in batches (progress, Ctrl-C between them).

    pycolmap empties the raw matches of a pair it cannot verify (fewer matches than its
    minimum of inliers): they are written back from ``mf``, so that the database keeps
    every raw match and a second identical import finds nothing to redo."""
    db_path = result.database
    tmp = new_temporary(db_path.with_name(db_path.name + ".verify"), ".txt")
    options = pycolmap.TwoViewGeometryOptions(**VERIFY_OPTIONS)
    stage = Stage(progress, "verify", unit="pairs")
    stage.start(len(pairs))
    try:
        with interruptible() as stop:
            start, size = 0, VERIFY_FIRST_BATCH
            while start < len(pairs) and not stop.requested:
                batch = pairs[start:start + size]
                t = time.perf_counter()
                write_pairs(tmp, batch)
                pycolmap.verify_matches(db_path, tmp, options=options)
                seconds = max(time.perf_counter() - t, 1e-3)
                stage.advance(n=len(batch))
                start += len(batch)
                size = min(VERIFY_MAX_BATCH,
                           max(VERIFY_FIRST_BATCH, int(len(batch) * VERIFY_SECONDS / seconds)))
        result.interrupted = stop.requested
    finally:
        tmp.unlink(missing_ok=True)
    min_inliers = options.min_num_inliers
    with open_database(db_path) as db, pycolmap.DatabaseTransaction(db):
        for a, b in pairs:
            ia = db.read_image_with_name(a).image_id
            ib = db.read_image_with_name(b).image_id
            if not db.exists_two_view_geometry(ia, ib):
                continue  # not reached (interrupted): the next run verifies it
            result.verified_now += 1
            g = db.read_two_view_geometry(ia, ib)
            result.inlier_pairs_now += int(int(g.config) not in UNUSABLE_CONFIGS
                                           and len(g.inlier_matches) > 0)
            if len(g.inlier_matches) < min_inliers:
                m = mf.get(a, b)[0].astype(np.uint32)
                if len(m) and len(db.read_matches(ia, ib)) != len(m):
                    if db.exists_matches(ia, ib):
                        db.delete_matches(ia, ib)
                    db.write_matches(ia, ib, m)
                    result.restored_raw_matches += 1
