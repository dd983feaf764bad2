"""Visual localisation of query images against a reference (``d2 localize``).

For each query (Aachen / hloc ``localize_sfm`` style):

1. its pairs (``query reference`` lines, either order) name the reference images to use;
2. its matches to each reference image (``d2 match``) are turned into 2D-3D
   correspondences: a reference keypoint gives a 3D point when it observes one in the
   reference COLMAP model (the model must have been built from the same features file, so
   that the model image's ``points2D[j]`` is keypoint ``j`` + 0.5; this is checked), or,
   InLoc style, when its cutout's XYZ scan has a point under it (``inloc.py``);
3. pycolmap's LO-RANSAC absolute pose (P3P, ``max_error`` pixels) and a non-linear
   refinement give the camera pose;
4. with ``refine``, the query points of that pose's inliers are refined against their
   reference keypoints (:mod:`d2cli.refine.query`) and step 3 runs again on them.

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
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pycolmap

from .colmap.cameras import ImageInfo, check_camera_model, make_camera, read_exif
from .colmap.database import quiet_colmap
from .colmap.keypoints import to_colmap
from .errors import (
    BadFile,
    BadImage,
    D2Error,
    EmptyInput,
    IncompatibleFeatures,
    InputNotFound,
    OutputError,
    UsageError,
)
from .images import image_under, read_image_size
from .io.atomic import write_text_atomic
from .io.features import FeatureFile, MatchFile, image_folder, require_image_folder
from .io.journal import JsonJournal, fingerprint
from .io.pairs import read_pairs, text_lines
from .jobs import ProgressFn, Stage, interruptible
from .references import ModelReference, Reference, ScanReference
from .refine import RefineConfig
from .refine.query import QueryRefiner
from .settings import MIN_PNP_POINTS, LocalizeSettings, with_overrides


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
    for lineno, line in text_lines(p, "queries file"):
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
    refined: dict[str, int] | None = None  # --refine: inliers moved / undone / unmoved

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
    interrupted: bool = False

    def refined(self) -> dict[str, int] | None:
        """With --refine: the pose inliers moved / undone by a guard / unmoved, in all."""
        rs = [r.refined for r in self.results.values() if r.refined is not None]
        return {k: sum(r[k] for r in rs) for k in ("moved", "undone", "unmoved")} if rs else None

    def summary(self) -> dict[str, Any]:
        inl = [r.inliers for r in self.results.values()]
        return {
            "out": str(self.out), "log": str(self.log), "reference": str(self.reference),
            "mode": self.mode, "queries": self.queries, "localized": len(self.results),
            "failed": self.failed, "resumed": self.resumed, "ignored_pairs": self.ignored_pairs,
            "median_inliers": float(np.median(inl)) if inl else None,
            "refined": self.refined(),
            "results": {n: asdict(r) for n, r in self.results.items()},
            "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
        }


class QueryFailed(D2Error):
    """One query could not be localised (reported, the others go on)."""


# --------------------------------------------------------------------------- one query
def _query_camera(q: Query, ff: FeatureFile, image_dir: Path | None
                  ) -> tuple[pycolmap.Camera, str]:
    w, h = ff.image_size(q.name)
    if q.camera is not None:
        if w > 0 and (w, h) != (q.camera.width, q.camera.height):
            raise QueryFailed(f"the queries file gives a {q.camera.width}x{q.camera.height} "
                              f"camera, the features are for a {w}x{h} image")
        return q.camera, "given"
    path = image_under(image_dir, q.name) if image_dir is not None else None
    if w <= 0 and path is not None and path.is_file():
        w, h = read_image_size(path) or (w, h)
    if w <= 0 or h <= 0:
        raise QueryFailed("no intrinsics in the queries file, and no image size to guess them "
                          "from (features without image_size, no image file)")
    return infer_camera(q.name, w, h, path)


@dataclass
class _Sources:
    """Where each kept correspondence came from: the query's keypoints (N, 2), per reference
    used (name, matches (M, 2), rows of m kept), and ``first`` (K,): each correspondence's
    row in their concatenation."""

    query_keypoints: np.ndarray
    used: list[tuple[str, np.ndarray, np.ndarray]]
    first: np.ndarray


def _correspondences(q: str, refs: Sequence[str], ff: FeatureFile, mf: MatchFile,
                     reference: Reference) -> tuple[np.ndarray, np.ndarray, int, int, _Sources]:
    """(query 2D points (K, 2) in keypoint pixels, 3D points (K, 3), matches used,
    references used, where each correspondence came from)."""
    kq = ff.keypoints(q)[:, :2]
    n_q = len(kq)
    usable = [r for r in refs if reference.usable(r)]
    if not usable:
        where = ("is registered in the reference model" if reference.mode == "model"
                 else f"has a scan (<name>.mat) in {reference.dir}")
        raise QueryFailed(f"none of its {len(refs)} paired reference images {where}")
    present = [r for r in usable if (q, r) in mf]
    if not present:
        raise QueryFailed(f"none of its {len(usable)} pairs with usable reference images is in "
                          f"matches file {mf.path}")
    q_idx, keys, xyzs, used = [], [], [], []
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
        used.append((r, m, np.flatnonzero(ok)))
        # a key per 3D point: the same point seen in two references counts once
        keys.append(ids[m[ok, 1]] if ids is not None else (k << 32) + m[ok, 1])
    if not q_idx:
        raise QueryFailed(f"no 2D-3D correspondence: {n_matches} matches to {len(present)} "
                          "reference images, none on a keypoint with a 3D point")
    qi, key, xyz = np.concatenate(q_idx), np.concatenate(keys), np.concatenate(xyzs)
    _, first = np.unique(np.stack([qi, key], 1), axis=0, return_index=True)
    first.sort()
    return kq[qi[first]], xyz[first], n_matches, n_refs, _Sources(kq, used, first)


def _refine_correspondences(q: str, p2d: np.ndarray, which: np.ndarray, src: _Sources,
                            ff: FeatureFile, refiner: QueryRefiner
                            ) -> tuple[np.ndarray, dict[str, int]]:
    """p2d (K, 2) with the correspondences ``which`` (K,) bool refined, each against the
    reference keypoint it came from; and the outcome counts."""
    kq = src.query_keypoints
    out, counts = p2d.copy(), Counter(moved=0, undone=0, unmoved=0)
    start = np.cumsum([0] + [len(rows) for _, _, rows in src.used])
    for j, (r, m, rows) in enumerate(src.used):
        sel = (src.first >= start[j]) & (src.first < start[j + 1]) & which
        if not sel.any():
            continue
        try:
            out[sel], c = refiner.refine(q, r, kq[m[:, 0]], ff.keypoints(r)[m[:, 1], :2],
                                         rows[src.first[sel] - start[j]])
        except D2Error as e:  # an unreadable image costs this query only
            raise QueryFailed(f"refinement: {e}") from None
        counts.update(c)
    return out, dict(counts)


def _localize_one(q: Query, refs: Sequence[str], ff: FeatureFile, mf: MatchFile,
                  reference: Reference, image_dir: Path | None, s: LocalizeSettings,
                  refiner: QueryRefiner | None = None) -> QueryResult:
    if q.name not in ff:
        raise QueryFailed(f"not in features file {ff.path}")
    if not refs:
        raise QueryFailed("no pairs with a reference image in the pairs file")
    camera, source = _query_camera(q, ff, image_dir)
    kp2d, p3d, n_matches, n_refs, src = _correspondences(q.name, refs, ff, mf, reference)
    n = len(kp2d)
    if n < max(MIN_PNP_POINTS, s.min_inliers):
        raise QueryFailed(f"only {n} 2D-3D correspondences (need {max(MIN_PNP_POINTS, s.min_inliers)})")
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = s.max_error
    est.ransac.random_seed = s.seed
    refine = pycolmap.AbsolutePoseRefinementOptions()
    refine.refine_focal_length = s.refine_focal_length
    given = camera

    def pose(points: np.ndarray) -> tuple[dict[str, Any], pycolmap.Camera]:
        cam = copy.copy(given)  # the refinement changes it in place: keep the query's own
        ret = pycolmap.estimate_and_refine_absolute_pose(to_colmap(points.astype(np.float64)),
                                                         p3d, cam, est, refine)
        if ret is None:
            raise QueryFailed(f"no pose: RANSAC found no consistent pose in {n} correspondences")
        return ret, cam

    ret, camera = pose(kp2d)
    refined = None
    if refiner is not None:  # the inliers only, then the pose again from them
        inl = np.asarray(ret["inlier_mask"], bool).reshape(-1)
        moved, refined = _refine_correspondences(q.name, kp2d, inl, src, ff, refiner)
        ret, camera = pose(moved)
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
                "params": [float(v) for v in camera.params], "source": source},
        refined=refined)


# --------------------------------------------------------------------------- files
def read_poses(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An Aachen poses file -> {name: (R (3, 3), t (3,))}, world-to-camera."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"{p}: poses file not found")
    poses = {}
    for lineno, line in text_lines(p, "poses file"):
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


class Journal(JsonJournal):
    """``poses.txt.partial``: a header (inputs and settings), then one JSON line per query
    (:class:`~d2cli.io.journal.JsonJournal`): a killed or interrupted run loses at most
    the query in flight; the next run with the same header takes the rest from here."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        super().__init__(path, header)
        self.done: dict[str, QueryResult] = {}
        self.failed: dict[str, str] = {}

    def load(self, names: set[str]) -> int:
        """Read what an earlier run with this header finished (of ``names``); how many."""
        for d in self.records():
            try:
                if d["name"] not in names:
                    continue
                if "error" in d:
                    self.failed[d["name"]] = str(d["error"])
                else:
                    self.done[d["name"]] = QueryResult(**d)
            except (TypeError, KeyError):
                continue
        for n in self.done:
            self.failed.pop(n, None)
        return len(self.done) + len(self.failed)

    def __contains__(self, name: str) -> bool:
        return name in self.done or name in self.failed

    def add(self, r: QueryResult) -> None:
        self.done[r.name] = r
        self.append(asdict(r))

    def add_failure(self, name: str, error: str) -> None:
        self.failed[name] = error
        self.append({"name": name, "error": error})


# --------------------------------------------------------------------------- the job
def localize(
    reference_model: str | os.PathLike | None,
    queries: str | os.PathLike,
    pairs: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    matches: str | os.PathLike = "matches.h5",
    out: str | os.PathLike = "poses.txt",
    *,
    settings: LocalizeSettings | None = None,
    inloc_scans: str | os.PathLike | None = None,
    inloc_alignments: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    full_names: bool = False,
    log: str | os.PathLike | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    refine: RefineConfig | None = None,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> LocalizeResult:
    """Localise the queries of ``queries`` against a COLMAP model or InLoc scans.

    ``reference_model``: a COLMAP model made from ``features`` (``d2 sfm``, or ``d2
    colmap-import --reference-model`` + ``d2 reconstruct --reference-model``); or None with
    ``inloc_scans``: the folder where ``<reference name>.mat`` holds each cutout's XYZcut
    (``inloc_alignments``: InLoc's ``database/alignments`` to map the scans to the building
    frame). ``pairs``: query-reference pairs (``d2 pairs exhaustive --query-prefix`` or
    ``from-retrieval``). ``settings``: the RANSAC threshold, minimum inliers, focal length
    refinement and seed (:class:`~d2cli.settings.LocalizeSettings`); keyword
    ``overrides`` replace single fields (``localize(..., max_error=48)`` as hloc for
    InLoc). ``image_dir`` (default: the features' image root) is read
    for EXIF of queries without intrinsics. ``full_names``: write the query names as given
    (default: basenames, as the Aachen and InLoc submissions want). ``log``: default
    ``out`` with the suffix ``.log``. ``refine``: refine the query point of each
    correspondence the pose RANSAC keeps against its reference keypoint, then estimate
    the pose again (:mod:`d2cli.refine.query`; reads the query and reference images from
    ``image_dir``).

    Failed queries are in ``result.failed`` (name -> reason) and the log; they do not stop
    the others. An interrupted run resumes from ``out.partial`` unless ``overwrite``.
    """
    t0 = time.perf_counter()
    if (reference_model is None) == (inloc_scans is None):
        raise UsageError("give a reference model or InLoc scans (--inloc-scans), not both")
    if inloc_alignments is not None and inloc_scans is None:
        raise UsageError("InLoc alignments need InLoc scans (--inloc-scans)")
    settings = with_overrides(settings, LocalizeSettings, overrides)
    out = Path(out)
    log_path = _log_path(out, log)
    query_list = read_queries(queries)
    if not full_names:
        _check_basenames(query_list)
    qnames = {q.name for q in query_list}
    refs, ignored = _references_of(query_list, read_pairs(pairs))

    ref_path = Path(reference_model if reference_model is not None else inloc_scans)
    header = {"d2 localize": 1, "settings": asdict(settings), "inputs": [
        fingerprint(Path(p)) for p in (ref_path, queries, pairs, features, matches)],
        "inloc_alignments": str(inloc_alignments) if inloc_alignments else None,
        "refine": refine.as_dict() if refine is not None else None}

    with FeatureFile(features) as ff, MatchFile(matches) as mf, quiet_colmap(verbose):
        if inloc_scans is not None:
            reference: Reference = ScanReference(
                ff, Path(inloc_scans), Path(inloc_alignments) if inloc_alignments else None)
        else:
            reference = ModelReference(ff, Path(reference_model))
        result = LocalizeResult(out=out, log=log_path, reference=ref_path, mode=reference.mode,
                                queries=len(query_list), ignored_pairs=ignored)
        img_dir = (require_image_folder(ff, image_dir, "refinement") if refine is not None
                   else image_folder(ff, image_dir))
        refiner = QueryRefiner(refine, img_dir) if refine is not None else None

        journal = Journal(Path(str(out) + ".partial"), header)
        result.resumed = 0 if overwrite else journal.load(qnames)
        stage = Stage(progress, "localize", unit="queries")
        stage.start(len(query_list), done=result.resumed)
        with journal, interruptible() as stop:
            for q in stop.each(q for q in query_list if q.name not in journal):
                try:
                    journal.add(_localize_one(q, refs[q.name], ff, mf, reference, img_dir,
                                              settings, refiner))
                    stage.advance(q.name)
                except (QueryFailed, BadFile, BadImage) as e:  # this query's inputs only
                    journal.add_failure(q.name, str(e))
                    stage.advance(q.name, error=f"{q.name}: {e}")
    # query-file order in every output
    result.results = {q.name: journal.done[q.name] for q in query_list if q.name in journal.done}
    result.failed = {q.name: f"{q.name}: {journal.failed[q.name]}" for q in query_list
                     if q.name in journal.failed}
    result.interrupted = stop.requested
    if not result.interrupted:  # else the journal keeps what is done for the next run
        _write_outputs(result, journal, query_list, full_names)
        journal.path.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - t0
    return result


def _log_path(out: Path, log: str | os.PathLike | None) -> Path:
    log_path = Path(log) if log is not None else out.with_suffix(".log")
    if log_path == out:
        log_path = Path(str(out) + ".log")
    for p in (out, log_path):
        if p.is_dir():
            raise OutputError(f"{p}: is a directory, expected a file path")
    return log_path


def _check_basenames(query_list: Sequence[Query]) -> None:
    """Poses are written by basename (the Aachen/InLoc form): those must be unique."""
    seen: dict[str, str] = {}
    for q in query_list:
        base = PurePosixPath(q.name).name
        if base in seen:
            raise UsageError(f"queries {seen[base]} and {q.name} have the same file name; "
                             "pass --full-names to write whole names")
        seen[base] = q.name


def _references_of(query_list: Sequence[Query], pair_list: Sequence[tuple[str, str]]
                   ) -> tuple[dict[str, list[str]], int]:
    """Each query's reference images from the pairs (either order); pairs without exactly
    one query are counted and ignored."""
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
    return refs, ignored


def _write_outputs(result: LocalizeResult, journal: Journal, query_list: Sequence[Query],
                   full_names: bool) -> None:
    """poses.txt (submission format) and the per-query log, atomically."""
    write_text_atomic(result.out, "".join(r.pose_line(full_names) + "\n"
                                          for r in result.results.values()))
    write_text_atomic(result.log, f"# d2 localize: {len(result.results)} of {len(query_list)} "
                                  f"queries localised against {result.reference}\n" + "".join(
                                      _log_line(q.name, journal.done.get(q.name),
                                                journal.failed.get(q.name)) + "\n"
                                      for q in query_list))
