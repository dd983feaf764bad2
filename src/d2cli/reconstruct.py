"""A COLMAP database -> a sparse model (``d2 reconstruct``), with pycolmap 4.2.1.

Three ways: incremental mapping (COLMAP's default), global mapping (GLOMAP inside
COLMAP 4) and, given a reference model with known poses, point triangulation.

Output layout of ``out/`` (COLMAP binary format, readable by ``pycolmap.Reconstruction``
and ``colmap gui``)::

    out/cameras.bin images.bin points3D.bin frames.bin rigs.bin   the largest model
    out/models/1/ ...                                              the other models, if the
    out/models/2/ ...                                              images split into several,
                                                                   by decreasing size

Every model is first written to a scratch folder next to ``out/`` and moved in file
by file, so an interrupted run leaves the previous model (or none), never a mix of
half-written files; stale ``out/models/`` of an earlier run are removed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pycolmap

from .colmap.database import check_mirrors_model, open_database, quiet_colmap
from .colmap.verification import UNUSABLE_CONFIGS
from .errors import EmptyInput, InputNotFound, OutputError, PartialFailure, UsageError
from .io.atomic import move_into, new_temporary_dir
from .io.colmap_model import read_model
from .isolated import run_isolated
from .jobs import ProgressFn, Stage
from .settings import MapSettings, default_threads, with_overrides

__all__ = ["MapSettings", "ReconstructResult", "default_threads", "reconstruct"]

SHARED_CAMERA_MIN_IMAGES = 3  # a camera seen by this many images is worth self-calibrating
ABS_POSE_MIN_NUM_INLIERS = 15  # COLMAP: 30 (see incremental_options)
MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin", "frames.bin", "rigs.bin")



@dataclass
class ModelStats:
    path: Path
    registered: int
    points3D: int
    observations: int
    mean_track_length: float
    mean_reprojection_error: float
    registered_names: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, rec: pycolmap.Reconstruction, path: Path) -> ModelStats:
        n = rec.num_points3D()
        return cls(
            path=path, registered=rec.num_reg_images(), points3D=n,
            observations=rec.compute_num_observations(),
            mean_track_length=float(rec.compute_mean_track_length()) if n else 0.0,
            mean_reprojection_error=float(rec.compute_mean_reprojection_error()) if n else 0.0,
            registered_names=sorted(im.name for im in rec.images.values() if im.has_pose),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "registered": self.registered, "points3D": self.points3D,
            "observations": self.observations,
            "mean_track_length": round(self.mean_track_length, 4),
            "mean_reprojection_error": round(self.mean_reprojection_error, 4),
        }


@dataclass
class ReconstructResult:
    database: Path
    out: Path
    mapper: str  # incremental, global or triangulation
    intrinsics: str = ""  # refined or fixed, and why
    total_images: int = 0  # images in the database
    connected_images: int = 0  # images with at least one usable verified pair
    models: list[ModelStats] = field(default_factory=list)  # largest first
    unregistered: list[str] = field(default_factory=list)  # database images not in the model
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # the run protocol's; mapping fails whole
    interrupted: bool = False

    @property
    def best(self) -> ModelStats | None:
        return self.models[0] if self.models else None

    def summary(self) -> dict[str, Any]:
        b = self.best
        return {
            "database": str(self.database), "out": str(self.out), "mapper": self.mapper,
            "intrinsics": self.intrinsics,
            "images": self.total_images, "connected_images": self.connected_images,
            "registered": b.registered if b else 0, "points3D": b.points3D if b else 0,
            "observations": b.observations if b else 0,
            "mean_track_length": round(b.mean_track_length, 4) if b else 0.0,
            "mean_reprojection_error": round(b.mean_reprojection_error, 4) if b else 0.0,
            "num_models": len(self.models), "models": [m.as_dict() for m in self.models],
            "unregistered": self.unregistered, "seconds": round(self.seconds, 3),
        }


def _openable(database: Path, scratch: Path) -> Path:
    """The database itself, or a copy in ``scratch`` when it is read-only: pycolmap opens
    databases for writing, and mapping only reads them."""
    if os.access(database, os.W_OK):
        return database
    copy = scratch / "database.db"
    try:
        shutil.copyfile(database, copy)
    except OSError as e:
        raise OutputError(f"{scratch}: cannot copy the read-only {database} ({e.strerror})") from None
    return copy


def _database_overview(database: Path, min_num_matches: int) -> tuple[dict[int, str], int, int]:
    """(image id -> name, images in a usable pair, UNDEFINED geometries)."""
    with open_database(database) as db:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geoms = db.read_two_view_geometries()
    connected: set[int] = set()
    undefined = 0
    for pid, g in zip(pair_ids, geoms, strict=True):
        if int(g.config) == int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED):
            undefined += 1
        if int(g.config) in UNUSABLE_CONFIGS or len(g.inlier_matches) < min_num_matches:
            continue
        connected.update(pycolmap.pair_id_to_image_pair(int(pid)))
    return names, len(connected), undefined


def _merge_options(base: Any, extra: dict[str, Any] | None, what: str) -> Any:
    """Apply a nested dict of pycolmap option overrides; typos are a usage error."""
    if not extra:
        return base

    def apply(obj: Any, d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if not hasattr(obj, k):
                raise UsageError(f"{what} has no option {prefix}{k}")
            if isinstance(v, dict):
                apply(getattr(obj, k), v, f"{prefix}{k}.")
            else:
                try:
                    setattr(obj, k, v)
                except (TypeError, ValueError) as e:
                    raise UsageError(f"{what} option {prefix}{k}={v!r}: {e}") from None

    apply(base, extra, "")
    return base


def choose_intrinsics(database: Path) -> tuple[bool, str]:
    """(refine, why) for ``intrinsics="auto"``.

    Self-calibration needs several views per camera. With one camera per Internet photo
    and no EXIF, bundle adjustment let focal lengths drift to absurd values (10x the
    image size, or negative) on the sample photos with the built-in model: on a 6-photo
    subset 1 of 6 seeds kept every focal length within 0.3-3x the image size, while the
    same runs with COLMAP's 1.2 * max(W, H) guess kept fixed registered 6 of 6 each time.
    So: refine (COLMAP's behaviour) when most images share a camera with others, else
    keep every camera as imported.
    """
    with open_database(database) as db:
        per_camera = Counter(im.camera_id for im in db.read_all_images())
    total = sum(per_camera.values())
    shared = sum(n for n in per_camera.values() if n >= SHARED_CAMERA_MIN_IMAGES)
    if total and 2 * shared >= total:
        return True, f"refined: {shared} of {total} images share a camera"
    return False, (f"fixed: {total - shared} of {total} images have a camera shared by fewer "
                   f"than {SHARED_CAMERA_MIN_IMAGES} images (--intrinsics refine to refine)")


def incremental_options(s: MapSettings, refine: bool, extract_colors: bool
                        ) -> pycolmap.IncrementalPipelineOptions:
    num_threads, seed = s.threads, s.seed
    o = pycolmap.IncrementalPipelineOptions(
        num_threads=num_threads, random_seed=seed, min_num_matches=s.min_num_matches,
        extract_colors=extract_colors, ba_refine_focal_length=refine,
        ba_refine_extra_params=refine)
    o.mapper.num_threads = num_threads
    o.mapper.random_seed = seed
    o.mapper.abs_pose_refine_focal_length = refine
    o.mapper.abs_pose_refine_extra_params = refine
    # COLMAP asks 30 PnP inliers to register an image, a number made for SIFT's thousands
    # of matches. With the built-in D2-Net model the first models often have fewer points:
    # on the sample photos (12 verification x mapping seeds) all 10 registered 12 times
    # with 15 against 6 of 8 with 30; on a 6-photo subset 10 of 12 against 4 of 8.
    o.mapper.abs_pose_min_num_inliers = ABS_POSE_MIN_NUM_INLIERS
    o.triangulation.random_seed = seed
    return o


def global_options(s: MapSettings, refine: bool) -> pycolmap.GlobalPipelineOptions:
    num_threads, seed = s.threads, s.seed
    o = pycolmap.GlobalPipelineOptions(num_threads=num_threads, random_seed=seed,
                                       min_num_matches=s.min_num_matches)
    m = o.mapper
    m.num_threads = num_threads
    m.random_seed = seed
    # GLOMAP defaults to the GPU; the PyPI wheel has no CUDA, so say CPU explicitly
    m.global_positioning.use_gpu = False
    m.bundle_adjustment.ceres.use_gpu = False
    m.bundle_adjustment.ceres.solver_options.num_threads = num_threads
    m.bundle_adjustment.refine_focal_length = refine
    m.bundle_adjustment.refine_extra_params = refine
    return o


def _write_models(recs: list[pycolmap.Reconstruction], out: Path, scratch: Path) -> list[Path]:
    """Largest model into ``out/``, the others into ``out/models/<k>/`` (see module doc)."""
    staged = scratch / "final"
    paths = []
    for k, rec in enumerate(recs):
        d = staged if k == 0 else staged / "models" / str(k)
        d.mkdir(parents=True, exist_ok=True)
        rec.write(d)
        paths.append(out if k == 0 else out / "models" / str(k))
    try:  # the model files and models/ replaced; other files in out stay
        move_into(staged, out, [*MODEL_FILES, "models"])
    except OSError as e:
        raise OutputError(f"{out}: cannot write the model ({e.strerror or e})") from None
    return paths


def reconstruct(
    database: str | os.PathLike,
    out: str | os.PathLike = "sparse",
    *,
    settings: MapSettings | None = None,
    image_dir: str | os.PathLike | None = None,
    reference_model: str | os.PathLike | None = None,
    verbose: bool = False,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> ReconstructResult:
    """Reconstruct a sparse model from a COLMAP database into ``out`` (layout: module doc).

    ``settings``: mapper, intrinsics, threads, seed, pycolmap options
    (:class:`~d2cli.settings.MapSettings`); keyword ``overrides`` replace single fields
    (``reconstruct(db, out, mapper="global", seed=1)``). With ``intrinsics="auto"``
    focal lengths and distortion are refined only when most images share a camera (see
    :func:`choose_intrinsics`). ``reference_model``: a COLMAP model whose poses are
    kept; only 3D points are triangulated (the database must have been made by
    ``colmap_import(..., reference_model=...)`` so that ids agree); triangulation never
    changes its intrinsics. ``image_dir``: only read to colour the points (image files
    are optional). ``progress`` gets an event as images are registered (stage
    ``mapping``; global mapping and triangulation report their start and end only).
    """
    t0 = time.perf_counter()
    s = with_overrides(settings, MapSettings, overrides)
    s = replace(s, num_threads=s.threads)  # decided here: the child process maps with it
    database, out = Path(database), Path(out)
    if not database.is_file():
        raise InputNotFound(f"{database}: database not found")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise InputNotFound(f"{image_dir}: image folder not found")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    mapper, min_num_matches = s.mapper, s.min_num_matches
    result = ReconstructResult(database=database, out=out,
                               mapper="triangulation" if reference_model else mapper)

    with quiet_colmap(verbose):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            scratch = new_temporary_dir(out)
        except OSError as e:
            raise OutputError(f"{out}: cannot write here ({e.strerror})") from None
        try:
            database = _openable(database, scratch)
            names, result.connected_images, undefined = _database_overview(database,
                                                                           min_num_matches)
            result.total_images = len(names)
            if not names:
                raise EmptyInput(f"{result.database}: no images; run d2 colmap-import first")
            if result.connected_images == 0 and reference_model is None:
                hint = (f"; {undefined} geometries have an UNDEFINED configuration and are "
                        "ignored" if undefined else "")
                raise EmptyInput(f"{result.database}: no verified image pair with >= "
                                 f"{min_num_matches} inlier matches{hint}")
            images = Path(image_dir) if image_dir is not None else scratch / "no-images"
            images.mkdir(exist_ok=True)
            if s.intrinsics == "auto":
                refine, result.intrinsics = choose_intrinsics(database)
            else:
                refine, result.intrinsics = s.intrinsics == "refine", s.intrinsics
            if reference_model is not None:
                result.intrinsics = "fixed: the reference model's"
            # in a child process: Ctrl-C and SIGTERM stop it at once (d2cli.isolated)
            count = run_isolated(_map_to_disk, verbose, database, images, scratch / "work",
                                 scratch / "mapped", result.total_images, s,
                                 reference_model, refine, image_dir is not None,
                                 progress=progress)
            recs = [pycolmap.Reconstruction(scratch / "mapped" / str(k)) for k in range(count)]
            recs = sorted((r for r in recs if r.num_reg_images() > 0),
                          key=lambda r: (r.num_reg_images(), r.num_points3D()), reverse=True)
            if not recs:
                raise PartialFailure(
                    f"no model could be reconstructed from {result.database} "
                    f"({result.connected_images} of {result.total_images} images have verified "
                    "matches); try more images or overlap, or --mapper global")
            paths = _write_models(recs, out, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    result.models = [ModelStats.of(r, p) for r, p in zip(recs, paths, strict=True)]
    registered = set(result.models[0].registered_names)
    result.unregistered = sorted(n for n in names.values() if n not in registered)
    result.seconds = time.perf_counter() - t0
    return result


def _map_to_disk(verbose: bool, database: Path, images: Path, work: Path, mapped: Path,
                 total: int, *args: Any, progress: ProgressFn | None = None) -> int:
    """:func:`_run` (in the mapping child process), each model written to ``mapped/<k>``;
    returns the number of models."""
    with quiet_colmap(verbose):
        recs = _run(database, images, work, total, *args, progress)
    for k, rec in enumerate(recs):
        (mapped / str(k)).mkdir(parents=True)
        rec.write(mapped / str(k))
    return len(recs)


def _run(database: Path, images: Path, work: Path, total: int, s: MapSettings,
         reference_model: str | os.PathLike | None, refine: bool, colors: bool,
         progress: ProgressFn | None) -> list[pycolmap.Reconstruction]:
    """Map (or triangulate against ``reference_model``); ``refine``: the intrinsics in
    bundle adjustment, ``colors``: read the images to colour the points."""
    options = dict(s.options) if s.options else None

    def best(recs: Any) -> int:
        return max((r.num_reg_images() for r in recs), default=0)

    work.mkdir(parents=True, exist_ok=True)
    if reference_model is not None:
        ref = _load_reference(Path(reference_model), database)
        opts = _merge_options(incremental_options(s, False, colors),
                              options, "IncrementalPipelineOptions")
        stage = Stage(progress, "triangulating", total, unit="img")
        stage.start(total)
        rec = pycolmap.triangulate_points(ref, database, images, work, clear_points=True,
                                          options=opts, refine_intrinsics=False)
        stage.update(rec.num_reg_images())
        return [rec]
    if s.mapper == "global":
        gopts = _merge_options(global_options(s, refine), options,
                               "GlobalPipelineOptions")
        stage = Stage(progress, "global mapping", total, unit="img")
        stage.start(total)
        recs = pycolmap.global_mapping(database, images, work, options=gopts)
        stage.update(best(recs.values()))
        return list(recs.values())
    iopts = _merge_options(incremental_options(s, refine, colors),
                           options, "IncrementalPipelineOptions")
    stage = Stage(progress, "mapping", total, unit="img")
    recs = pycolmap.incremental_mapping(
        database, images, work, options=iopts,
        # the initial pair of a (new) model, then one image at a time
        initial_image_pair_callback=lambda: stage.update(2), next_image_callback=stage.advance)
    stage.update(best(recs.values()))
    return list(recs.values())


def _load_reference(model_dir: Path, database: Path) -> pycolmap.Reconstruction:
    """The reference model, checked against the database it is triangulated with."""
    ref = read_model(model_dir, "reference model")
    with open_database(database) as db:
        check_mirrors_model(db, ref, database, model_dir,
                            "run d2 colmap-import --reference-model first")
        for im in ref.images.values():
            if im.has_pose and not db.exists_keypoints(im.image_id):
                raise UsageError(f"{database}: image {im.name} of the reference model has no "
                                 "keypoints; import its features first")
    # Observations of the reference model index its own keypoints, not the database's.
    ref.delete_all_points2D_and_points3D()
    return ref
