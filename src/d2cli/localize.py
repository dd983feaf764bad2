"""Visual localisation of query images against a reference (``d2 localize``).

For each query (Aachen / hloc ``localize_sfm`` style):

1. its pairs (``query reference`` lines, either order) name the reference images to use;
2. its matches to each reference image (``d2 match``) are turned into 2D-3D
   correspondences: a reference keypoint gives a 3D point when it observes one in the
   reference COLMAP model (the model must have been built from the same features file, so
   that the model image's ``points2D[j]`` is keypoint ``j`` + 0.5; this is checked), or,
   InLoc style, when its cutout's XYZ scan has a point under it (``inloc.py``);
3. pycolmap's LO-RANSAC absolute pose (P3P, ``max_error`` pixels) and a non-linear
   refinement give the camera pose.

Outputs (written atomically when every query is done)::

    poses.txt            name qw qx qy qz tx ty tz  (Aachen submission format: world-to-camera,
                         COLMAP convention, quaternion w first; name = basename by default)
    poses.log            one line per query: ok with inlier counts, or failed with the reason
    poses.txt.partial    while running: one JSON line per finished query; an interrupted run
                         resumes from it (and removes it at the end)

Query cameras come from the queries file (``name MODEL W H params...``, the Aachen
``*_queries_with_intrinsics.txt`` format); a line with only a name gets COLMAP's guess:
SIMPLE_RADIAL with the focal length from EXIF when the image file has one, else
f = 1.2 * max(W, H), W x H from the features file.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pycolmap

from .colmap import ImageInfo, check_camera_model, make_camera, quiet_colmap, read_exif
from .errors import (
    BadFile,
    D2Error,
    EmptyInput,
    IncompatibleFeatures,
    InputNotFound,
    OutputError,
    UsageError,
)
from .images import read_image_size
from .inloc import alignment_path, read_alignment, read_xyzcut, sample_xyz
from .io.colmap_model import read_model
from .io.features import FeatureFile, MatchFile
from .io.pairs import read_pairs

ProgressFn = Callable[[str, int, int], None]  # (query name, done, total)
MIN_POINTS = 4  # P3P needs 3 correspondences, and RANSAC one more to tell poses apart
CACHE_IMAGES = 256  # reference images whose 3D lookups stay in memory


# --------------------------------------------------------------------------- queries
@dataclass
class Query:
    name: str
    camera: pycolmap.Camera | None  # None: inferred from the image (EXIF / size)


def read_queries(path: str | os.PathLike) -> list[Query]:
    """A queries file: ``name [MODEL W H params...]`` per line; ``#`` comments, blank lines.

    The camera line format is COLMAP's ``cameras.txt`` tail, as in Aachen's
    ``*_queries_with_intrinsics.txt``; a line with only a name leaves the camera to infer.
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: queries file not found")
    queries: dict[str, Query] = {}
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        name, camera = parts[0], None
        if len(parts) > 1:
            if len(parts) < 5:
                raise BadFile(f"{p}:{lineno}: expected 'name MODEL W H params...', got {line!r}")
            try:
                w, h, params = int(parts[2]), int(parts[3]), [float(v) for v in parts[4:]]
                model = check_camera_model(parts[1], params)
            except ValueError:
                raise BadFile(f"{p}:{lineno}: width, height and params must be numbers") from None
            except UsageError as e:
                raise BadFile(f"{p}:{lineno}: {e}") from None
            if w <= 0 or h <= 0 or not np.isfinite(params).all():
                raise BadFile(f"{p}:{lineno}: bad image size or parameters")
            camera = pycolmap.Camera.create_from_model_name(0, model, 1.0, w, h)
            camera.params = np.asarray(params, dtype=np.float64)
            camera.has_prior_focal_length = True
        if name in queries:
            raise BadFile(f"{p}:{lineno}: query {name} is listed twice")
        queries[name] = Query(name, camera)
    if not queries:
        raise EmptyInput(f"{p}: no queries")
    return list(queries.values())


def infer_camera(name: str, width: int, height: int, image_path: Path | None
                 ) -> tuple[pycolmap.Camera, str]:
    """(camera, how it was chosen) for a query without intrinsics, as COLMAP's importer."""
    exif = read_exif(image_path) if image_path is not None and image_path.is_file() else None
    cam = make_camera(ImageInfo(name, width, height, image_path if exif else None, exif),
                      "SIMPLE_RADIAL", None)
    return cam, "exif" if cam.has_prior_focal_length else "default"


# --------------------------------------------------------------------------- results
@dataclass
class QueryResult:
    name: str
    qvec: list[float]  # w, x, y, z of cam_from_world
    tvec: list[float]  # cam_from_world translation
    inliers: int
    correspondences: int  # 2D-3D correspondences given to RANSAC
    matches: int  # matches of the query to usable reference images
    references: int  # reference images that gave correspondences
    camera: dict[str, Any]  # model, width, height, params, source (given / exif / default)

    def pose_line(self, full_name: bool) -> str:
        name = self.name if full_name else PurePosixPath(self.name).name
        q = " ".join(f"{v:.10g}" for v in self.qvec)
        t = " ".join(f"{v:.10g}" for v in self.tvec)
        return f"{name} {q} {t}"


@dataclass
class LocalizeResult:
    out: Path
    log: Path
    reference: Path
    mode: str  # "model" (COLMAP model) or "inloc" (XYZ scans)
    queries: int = 0
    results: dict[str, QueryResult] = field(default_factory=dict)  # localised queries
    failed: dict[str, str] = field(default_factory=dict)  # query -> one-line reason
    resumed: int = 0  # queries taken from an interrupted run
    ignored_pairs: int = 0  # pairs without a query, or between two queries
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        inl = [r.inliers for r in self.results.values()]
        return {
            "out": str(self.out), "log": str(self.log), "reference": str(self.reference),
            "mode": self.mode, "queries": self.queries, "localized": len(self.results),
            "failed": self.failed, "resumed": self.resumed, "ignored_pairs": self.ignored_pairs,
            "median_inliers": float(np.median(inl)) if inl else None,
            "results": {n: asdict(r) for n, r in self.results.items()},
            "seconds": round(self.seconds, 3),
        }


class QueryFailed(D2Error):
    """One query could not be localised (reported, the others go on)."""


# --------------------------------------------------------------------------- references
class _Reference:
    """Per reference image, the 3D point under each of its keypoints (NaN where none)."""

    mode = ""

    def __init__(self, ff: FeatureFile) -> None:
        self.ff = ff
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()

    def usable(self, name: str) -> bool:
        raise NotImplementedError

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def points(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(xyz (N, 3) with NaN rows, point ids (N,) or None) for the N keypoints of ``name``."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        got = self._load(name)
        self._cache[name] = got
        if len(self._cache) > CACHE_IMAGES:
            self._cache.popitem(last=False)
        return got


class _ModelReference(_Reference):
    """A COLMAP model built from the features file (checked image by image)."""

    mode = "model"

    def __init__(self, ff: FeatureFile, model_dir: Path) -> None:
        super().__init__(ff)
        self.rec = read_model(model_dir, "reference model")
        self.dir = model_dir
        self.images = {im.name: im for im in self.rec.images.values() if im.has_pose}
        if not self.images:
            raise EmptyInput(f"{model_dir}: the reference model has no registered image")
        if self.rec.num_points3D() == 0:
            raise EmptyInput(f"{model_dir}: the reference model has no 3D points; triangulate "
                             "it first (d2 reconstruct --reference-model)")

    def usable(self, name: str) -> bool:
        return name in self.images

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        im = self.images[name]
        if name not in self.ff:
            raise IncompatibleFeatures(f"{name}: in the reference model {self.dir} but not in "
                                       f"features file {self.ff.path}")
        kp = self.ff.keypoints(name)[:, :2].astype(np.float64)
        pts = im.points2D
        if len(pts) != len(kp):
            raise IncompatibleFeatures(
                f"{name}: the reference model {self.dir} has {len(pts)} keypoints for this image, "
                f"features file {self.ff.path} has {len(kp)}: the model was not built from these "
                "features (use d2 sfm, or d2 colmap-import --reference-model + d2 reconstruct)")
        if len(kp):
            xy = np.array([p.xy for p in pts], dtype=np.float64)
            # the model stores COLMAP's convention (+0.5): point j must be keypoint j
            err = float(np.abs(xy - 0.5 - kp).max())
            if err > 0.01:
                raise IncompatibleFeatures(
                    f"{name}: keypoints of the reference model {self.dir} differ from features "
                    f"file {self.ff.path} by up to {err:.2f} px: the model was not built from "
                    "these features")
        invalid = pycolmap.INVALID_POINT3D_ID
        ids = np.array([p.point3D_id if p.point3D_id != invalid else -1 for p in pts],
                       dtype=np.int64)
        xyz = np.full((len(pts), 3), np.nan)
        for j in np.flatnonzero(ids >= 0):
            xyz[j] = self.rec.points3D[int(ids[j])].xyz
        return xyz, ids


class _ScanReference(_Reference):
    """InLoc cutouts: ``<scans>/<name>.mat`` holds XYZcut, optionally aligned to the building."""

    mode = "inloc"

    def __init__(self, ff: FeatureFile, scans: Path, alignments: Path | None) -> None:
        super().__init__(ff)
        if not scans.is_dir():
            raise InputNotFound(f"{scans}: InLoc scans folder not found")
        if alignments is not None and not alignments.is_dir():
            raise InputNotFound(f"{alignments}: InLoc alignments folder not found")
        self.dir, self.alignments = scans, alignments
        self._poses: dict[Path, np.ndarray] = {}

    def scan_path(self, name: str) -> Path:
        return self.dir / f"{name}.mat"

    def usable(self, name: str) -> bool:
        return self.scan_path(name).is_file()

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if name not in self.ff:
            raise IncompatibleFeatures(f"{name}: has a scan in {self.dir} but is not in features "
                                       f"file {self.ff.path}")
        xyz_map = read_xyzcut(self.scan_path(name))
        w, h = self.ff.image_size(name)
        if w > 0 and (w, h) != (xyz_map.shape[1], xyz_map.shape[0]):
            raise IncompatibleFeatures(
                f"{name}: XYZcut is {xyz_map.shape[1]}x{xyz_map.shape[0]} but the features are "
                f"for a {w}x{h} image")
        xyz = sample_xyz(xyz_map, self.ff.keypoints(name)[:, :2])
        if self.alignments is not None:
            path = alignment_path(self.alignments, name)
            if path is None or not path.is_file():
                raise InputNotFound(f"{name}: no InLoc transformations file "
                                    f"{path or '(not a cutout name)'}")
            if path not in self._poses:
                self._poses[path] = read_alignment(path)
            P = self._poses[path]
            xyz = xyz @ P[:3, :3].T + P[:3, 3]
        return xyz, None


# --------------------------------------------------------------------------- one query
@dataclass
class _Settings:
    max_error: float
    min_inliers: int
    refine_focal_length: bool
    seed: int


def _query_camera(q: Query, ff: FeatureFile, image_dir: Path | None
                  ) -> tuple[pycolmap.Camera, str]:
    w, h = ff.image_size(q.name)
    if q.camera is not None:
        if w > 0 and (w, h) != (q.camera.width, q.camera.height):
            raise QueryFailed(f"the queries file gives a {q.camera.width}x{q.camera.height} "
                              f"camera, the features are for a {w}x{h} image")
        return q.camera, "given"
    path = image_dir / q.name if image_dir is not None else None
    if w <= 0 and path is not None and path.is_file():
        w, h = read_image_size(path) or (w, h)
    if w <= 0 or h <= 0:
        raise QueryFailed("no intrinsics in the queries file, and no image size to guess them "
                          "from (features without image_size, no image file)")
    return infer_camera(q.name, w, h, path)


def _correspondences(q: str, refs: Sequence[str], ff: FeatureFile, mf: MatchFile,
                     reference: _Reference) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(query keypoint indices (K,), 3D points (K, 3), matches used, references used)."""
    n_q = len(ff.keypoints(q))
    usable = [r for r in refs if reference.usable(r)]
    if not usable:
        where = ("is registered in the reference model" if reference.mode == "model"
                 else f"has a scan (<name>.mat) in {reference.dir}")
        raise QueryFailed(f"none of its {len(refs)} paired reference images {where}")
    present = [r for r in usable if (q, r) in mf]
    if not present:
        raise QueryFailed(f"none of its {len(usable)} pairs with usable reference images is in "
                          f"matches file {mf.path}")
    q_idx, keys, xyzs = [], [], []
    n_matches = n_refs = 0
    for k, r in enumerate(present):
        m, _ = mf.get(q, r)
        xyz, ids = reference.points(r)
        if len(m) and (m[:, 0].max() >= n_q or m[:, 1].max() >= len(xyz)):
            raise IncompatibleFeatures(
                f"pair {q} {r} in {mf.path} indexes keypoints that {ff.path} does not have: "
                "the matches were made from other features")
        n_matches += len(m)
        ok = np.isfinite(xyz[m[:, 1]]).all(axis=1)
        if not ok.any():
            continue
        n_refs += 1
        q_idx.append(m[ok, 0])
        xyzs.append(xyz[m[ok, 1]])
        # a key per 3D point: the same point seen in two references counts once
        keys.append(ids[m[ok, 1]] if ids is not None else (k << 32) + m[ok, 1])
    if not q_idx:
        raise QueryFailed(f"no 2D-3D correspondence: {n_matches} matches to {len(present)} "
                          "reference images, none on a keypoint with a 3D point")
    qi, key, xyz = np.concatenate(q_idx), np.concatenate(keys), np.concatenate(xyzs)
    _, first = np.unique(np.stack([qi, key], 1), axis=0, return_index=True)
    first.sort()
    return qi[first], xyz[first], n_matches, n_refs


def _localize_one(q: Query, refs: Sequence[str], ff: FeatureFile, mf: MatchFile,
                  reference: _Reference, image_dir: Path | None, s: _Settings) -> QueryResult:
    if q.name not in ff:
        raise QueryFailed(f"not in features file {ff.path}")
    if not refs:
        raise QueryFailed("no pairs with a reference image in the pairs file")
    camera, source = _query_camera(q, ff, image_dir)
    qi, p3d, n_matches, n_refs = _correspondences(q.name, refs, ff, mf, reference)
    n = len(qi)
    if n < max(MIN_POINTS, s.min_inliers):
        raise QueryFailed(f"only {n} 2D-3D correspondences (need {max(MIN_POINTS, s.min_inliers)})")
    # keypoints have pixel centres at integers, COLMAP at +0.5
    p2d = ff.keypoints(q.name)[qi, :2].astype(np.float64) + 0.5
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = s.max_error
    est.ransac.random_seed = s.seed
    refine = pycolmap.AbsolutePoseRefinementOptions()
    refine.refine_focal_length = s.refine_focal_length
    camera = copy.copy(camera)  # the refinement changes it in place: keep the query's own
    ret = pycolmap.estimate_and_refine_absolute_pose(p2d, p3d, camera, est, refine)
    if ret is None:
        raise QueryFailed(f"no pose: RANSAC found no consistent pose in {n} correspondences")
    inliers = int(ret["num_inliers"])
    if inliers < s.min_inliers:
        raise QueryFailed(f"only {inliers} inliers of {n} correspondences "
                          f"(need {s.min_inliers})")
    pose = ret["cam_from_world"]
    qx, qy, qz, qw = (float(v) for v in pose.rotation.quat)  # pycolmap: x, y, z, w
    return QueryResult(
        name=q.name, qvec=[qw, qx, qy, qz], tvec=[float(v) for v in pose.translation],
        inliers=inliers, correspondences=n, matches=n_matches, references=n_refs,
        camera={"model": camera.model.name, "width": camera.width, "height": camera.height,
                "params": [float(v) for v in camera.params], "source": source})


# --------------------------------------------------------------------------- files
def _fingerprint(path: Path) -> list[Any]:
    """What identifies an input's content cheaply: path, size and mtime of its files."""
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    out: list[Any] = [str(path.resolve())]
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None


def read_poses(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An Aachen poses file -> {name: (R (3, 3), t (3,))}, world-to-camera."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: poses file not found")
    poses = {}
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            qw, qx, qy, qz, tx, ty, tz = (float(v) for v in parts[1:8])
        except ValueError:
            raise BadFile(f"{p}:{lineno}: expected 'name qw qx qy qz tx ty tz'") from None
        if len(parts) != 8:
            raise BadFile(f"{p}:{lineno}: expected 'name qw qx qy qz tx ty tz'")
        q = np.array([qx, qy, qz, qw])
        R = pycolmap.Rotation3d(q / np.linalg.norm(q)).matrix()
        poses[parts[0]] = (R, np.array([tx, ty, tz]))
    return poses


def _log_line(name: str, r: QueryResult | None, reason: str | None) -> str:
    if r is not None:
        cam = r.camera
        return (f"ok      {name}  inliers {r.inliers}/{r.correspondences}  matches {r.matches}  "
                f"references {r.references}  camera {cam['source']} {cam['model']} "
                f"{' '.join(f'{v:.6g}' for v in cam['params'])}")
    return f"failed  {name}  {reason}"


def _read_partial(path: Path, header: dict[str, Any]
                  ) -> tuple[dict[str, QueryResult], dict[str, str]]:
    """Queries finished by an interrupted run with the same inputs and settings."""
    done: dict[str, QueryResult] = {}
    failed: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return done, failed
    try:
        if not lines or json.loads(lines[0]) != header:
            return done, failed
    except ValueError:
        return done, failed
    for line in lines[1:]:
        try:
            d = json.loads(line)
            if "error" in d:
                failed[d["name"]] = str(d["error"])
            else:
                done[d["name"]] = QueryResult(**d)
        except (ValueError, TypeError, KeyError):  # the line a kill cut short: redo that query
            continue
    return done, failed


# --------------------------------------------------------------------------- the job
def localize(
    reference_model: str | os.PathLike | None,
    queries: str | os.PathLike,
    pairs: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    matches: str | os.PathLike = "matches.h5",
    out: str | os.PathLike = "poses.txt",
    *,
    max_error: float = 12.0,
    min_inliers: int = 12,
    refine_focal_length: bool = False,
    inloc_scans: str | os.PathLike | None = None,
    inloc_alignments: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    full_names: bool = False,
    log: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = False,
    progress: ProgressFn | None = None,
) -> LocalizeResult:
    """Localise the queries of ``queries`` against a COLMAP model or InLoc scans.

    ``reference_model``: a COLMAP model made from ``features`` (``d2 sfm``, or ``d2
    colmap-import --reference-model`` + ``d2 reconstruct --reference-model``); or None with
    ``inloc_scans``: the folder where ``<reference name>.mat`` holds each cutout's XYZcut
    (``inloc_alignments``: InLoc's ``database/alignments`` to map the scans to the building
    frame). ``pairs``: query-reference pairs (``d2 pairs exhaustive --query-prefix`` or
    ``from-retrieval``). ``max_error``: RANSAC threshold in pixels (12 as hloc for Aachen,
    hloc uses 48 for InLoc). A query with fewer than ``min_inliers`` inliers fails.
    ``refine_focal_length``: refine the query's focal length with the pose (for cameras
    guessed from the image size). ``image_dir`` (default: the features' image root) is read
    for EXIF of queries without intrinsics. ``full_names``: write the query names as given
    (default: basenames, as the Aachen and InLoc submissions want). ``log``: default
    ``out`` with the suffix ``.log``.

    Failed queries are in ``result.failed`` (name -> reason) and the log; they do not stop
    the others. An interrupted run resumes from ``out.partial`` unless ``overwrite``.
    """
    t0 = time.perf_counter()
    if (reference_model is None) == (inloc_scans is None):
        raise UsageError("give a reference model or InLoc scans (--inloc-scans), not both")
    if inloc_alignments is not None and inloc_scans is None:
        raise UsageError("InLoc alignments need InLoc scans (--inloc-scans)")
    if not max_error > 0:
        raise UsageError("max-error must be > 0 pixels")
    if min_inliers < MIN_POINTS:
        raise UsageError(f"min-inliers must be >= {MIN_POINTS}")
    out = Path(out)
    log_path = Path(log) if log is not None else out.with_suffix(".log")
    if log_path == out:
        log_path = Path(str(out) + ".log")
    for p in (out, log_path):
        if p.is_dir():
            raise OutputError(f"{p}: is a directory, expected a file path")
    for p, what in ((features, "features"), (matches, "matches")):
        if not Path(p).is_file():
            raise InputNotFound(f"{p}: {what} file not found")
    query_list = read_queries(queries)
    pair_list = read_pairs(pairs)
    if not full_names:
        seen: dict[str, str] = {}
        for q in query_list:
            base = PurePosixPath(q.name).name
            if base in seen:
                raise UsageError(f"queries {seen[base]} and {q.name} have the same file name; "
                                 "pass --full-names to write whole names")
            seen[base] = q.name

    qnames = {q.name for q in query_list}
    refs: dict[str, list[str]] = {q.name: [] for q in query_list}
    ignored = 0
    for a, b in pair_list:
        if a in qnames and b not in qnames:
            refs[a].append(b)
        elif b in qnames and a not in qnames:
            refs[b].append(a)
        else:
            ignored += 1

    ref_path = Path(reference_model if reference_model is not None else inloc_scans)
    settings = _Settings(max_error=float(max_error), min_inliers=int(min_inliers),
                         refine_focal_length=bool(refine_focal_length), seed=int(seed))
    header = {"d2 localize": 1, "settings": asdict(settings), "inputs": [
        _fingerprint(Path(p)) for p in (ref_path, queries, pairs, features, matches)],
        "inloc_alignments": str(inloc_alignments) if inloc_alignments else None}
    partial = Path(str(out) + ".partial")

    with FeatureFile(features) as ff, MatchFile(matches) as mf, quiet_colmap(verbose):
        if inloc_scans is not None:
            reference: _Reference = _ScanReference(
                ff, Path(inloc_scans), Path(inloc_alignments) if inloc_alignments else None)
        else:
            reference = _ModelReference(ff, Path(reference_model))
        result = LocalizeResult(out=out, log=log_path, reference=ref_path, mode=reference.mode,
                                queries=len(query_list), ignored_pairs=ignored)
        root = image_dir if image_dir is not None else ff.attrs.get("image_root")
        if image_dir is not None and not Path(image_dir).is_dir():
            raise InputNotFound(f"{image_dir}: image folder not found")
        img_dir = Path(root) if root and Path(root).is_dir() else None

        done, failed = ({}, {}) if overwrite else _read_partial(partial, header)
        done = {k: v for k, v in done.items() if k in qnames}
        failed = {k: v for k, v in failed.items() if k in qnames and k not in done}
        result.resumed = len(done) + len(failed)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fresh = not (done or failed)
            fh = open(partial, "w" if fresh else "a")
        except OSError as e:
            raise OutputError(f"{partial}: cannot write ({e.strerror})") from None
        with fh:
            if fresh:
                fh.write(json.dumps(header) + "\n")
            for i, q in enumerate(query_list):
                if q.name not in done and q.name not in failed:
                    try:
                        r = _localize_one(q, refs[q.name], ff, mf, reference, img_dir, settings)
                        done[q.name] = r
                        fh.write(json.dumps(asdict(r)) + "\n")
                    except QueryFailed as e:
                        failed[q.name] = str(e)
                        fh.write(json.dumps({"name": q.name, "error": str(e)}) + "\n")
                    fh.flush()
                if progress:
                    progress(q.name, i + 1, len(query_list))

    # query-file order in every output
    result.results = {q.name: done[q.name] for q in query_list if q.name in done}
    result.failed = {q.name: f"{q.name}: {failed[q.name]}" for q in query_list
                     if q.name in failed}
    _write_atomic(out, "".join(r.pose_line(full_names) + "\n" for r in result.results.values()))
    _write_atomic(log_path, f"# d2 localize: {len(result.results)} of {len(query_list)} queries "
                            f"localised against {ref_path}\n" + "".join(
                                _log_line(q.name, done.get(q.name), failed.get(q.name)) + "\n"
                                for q in query_list))
    partial.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - t0
    return result
