"""Features + matches files -> a COLMAP database (``d2 colmap-import``).

What goes into the database (pycolmap 4.2.1, see docs/ecosystem notes):

* one image per name of the features file (sorted, so ids are reproducible), with a
  camera chosen by ``ImportSettings.camera_mode`` and, in a fresh database, a trivial rig and frame
  per image (COLMAP's own importer does the same; a database where only *some*
  images have frames crashes the mapper, so an older database without frames gets
  none);
* keypoints in COLMAP's pixel convention (+0.5: the centre of the top-left pixel is
  (0.5, 0.5) there and (0, 0) in hloc/D2-Net files), float32 (N, 2);
* raw matches, uint32, unmatched entries removed, self pairs and duplicate
  unordered pairs dropped;
* two-view geometries: pycolmap's verification of the imported pairs, or with
  ``verify=False`` the raw matches with a defined ``config`` (pycolmap silently
  ignores geometries whose config is UNDEFINED).

Importing into an existing database reuses images by name and skips keypoints,
matches and geometries that are already there, so importing the same files twice
gives the same database as importing them once. Inputs that cannot be imported
(other keypoints than the database holds, a reference model of other image sizes)
are refused before anything is written; an interrupted import or verification is
completed by running it again. Writes are grouped in one transaction for speed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..errors import BadFile, BadImage, IncompatibleFeatures, OutputError, UsageError
from ..images import image_under, read_image_size
from ..io.colmap_model import read_model
from ..io.features import (
    FeatureFile,
    MatchFile,
    colliding_names,
    image_folder,
    pair_collision,
)
from ..io.lock import exclusive_lock
from ..io.pairs import normalize_pairs, read_pair_lines
from ..io.provenance import differences
from ..jobs import ProgressFn, Stage
from ..settings import ImportSettings, with_overrides
from .cameras import (
    ImageInfo,
    camera_key,
    check_camera_model,
    make_camera,
    read_exif,
)
from .database import check_mirrors_model, database_stats, open_database, quiet_colmap
from .keypoints import from_colmap, write_keypoints
from .verification import CONFIG, verify_pairs

__all__ = ["ImportResult", "ImportSettings", "colmap_import"]

# ----------------------------------------------------------------------------- result
@dataclass
class ImportResult:
    database: Path
    features: Path
    matches: Path | None
    images: int = 0  # images of this import in the database
    new_images: list[str] = field(default_factory=list)
    new_cameras: int = 0
    keypoints_written: int = 0  # images whose keypoints were written now
    pairs: int = 0  # pairs considered (after dropping self pairs and duplicates)
    dropped_pairs: int = 0  # self pairs and duplicate unordered pairs
    new_pairs: int = 0  # match lists written now
    replaced_pairs: int = 0  # match lists that differed from the database and were replaced
    removed_pairs: int = 0  # pairs of an earlier pairs list deleted (prune)
    verified_now: int = 0  # pairs given a two-view geometry now
    inlier_pairs_now: int = 0  # ... of which usable by the mapper
    restored_raw_matches: int = 0  # pairs whose raw matches pycolmap emptied, written back
    outside_model: int = 0  # images of the features file that the reference model lacks
    outside_model_pairs: int = 0  # pairs ignored for the same reason
    failed: dict[str, str] = field(default_factory=dict)  # name or pair -> reason
    no_image_file: list[str] = field(default_factory=list)
    image_dir: Path | None = None
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False  # stopped between verification batches; re-run verifies the rest

    @property
    def changed(self) -> bool:
        return bool(self.new_images or self.keypoints_written or self.new_pairs
                    or self.replaced_pairs or self.removed_pairs or self.verified_now)

    def summary(self) -> dict[str, Any]:
        return {
            "database": str(self.database), "features": str(self.features),
            "matches": str(self.matches) if self.matches else None,
            "image_dir": str(self.image_dir) if self.image_dir else None,
            "images": self.images, "new_images": len(self.new_images),
            "new_cameras": self.new_cameras, "keypoints_written": self.keypoints_written,
            "pairs": self.pairs, "dropped_pairs": self.dropped_pairs,
            "new_pairs": self.new_pairs, "replaced_pairs": self.replaced_pairs,
            "removed_pairs": self.removed_pairs,
            "verified_now": self.verified_now, "inlier_pairs_now": self.inlier_pairs_now,
            "restored_raw_matches": self.restored_raw_matches,
            "outside_model": self.outside_model,
            "outside_model_pairs": self.outside_model_pairs, "failed": self.failed,
            "no_image_file": len(self.no_image_file), "database_stats": self.stats,
            "changed": self.changed, "seconds": round(self.seconds, 3),
        }


# ----------------------------------------------------------------------------- helpers
def _pairs_from_match_file(
    mf: MatchFile, names: Iterable[str],
) -> tuple[list[tuple[str, str]], list[str]]:
    """Pairs of a matches file as image names, plus the keys naming unknown images.

    Keys hold names with '/' replaced by '-' (hloc), so they are mapped back through
    the known names; old ``a_b`` keys are split at the first '_' that gives two names.
    """
    flat = {n.replace("/", "-"): n for n in names}  # colliding names fail their pairs later
    pairs, unknown = [], []
    for key in mf.keys():
        parts = key.split("/")
        if len(parts) == 2:
            a, b = parts
        else:
            a = b = ""
            for i, c in enumerate(key):
                if c == "_" and key[:i] in flat and key[i + 1:] in flat:
                    a, b = key[:i], key[i + 1:]
                    break
            if not a:
                unknown.append(key)
                continue
        missing = [x for x in (a, b) if x not in flat]
        if missing:
            unknown.extend(missing)
            continue
        pairs.append((flat[a], flat[b]))
    return pairs, unknown


def _check_match_provenance(ff: FeatureFile, mf: MatchFile) -> None:
    """Matches index keypoints: refuse matches made from other features."""
    recorded = mf.attrs.get("features")
    if not recorded:
        return
    entries = recorded if isinstance(recorded, list) else [recorded]
    entries = [e for e in entries if isinstance(e, dict) and "model_sha256" in e]
    if not entries:
        return
    if all(differences(e, ff.attrs) for e in entries):
        raise IncompatibleFeatures(
            f"{mf.path} was matched from features made with another model or settings "
            f"than {ff.path}; re-run d2 match on these features")


def _image_info(ff: FeatureFile, name: str, image_dir: Path | None) -> tuple[ImageInfo, bool]:
    """(info, image file found)."""
    w, h = ff.image_size(name)
    try:
        path = image_under(image_dir, name) if image_dir is not None else None
    except BadImage:  # a name leaving the image folder: its file is never read
        path = None
    found = path is not None and path.is_file()
    if (w <= 0 or h <= 0) and found:
        w, h = read_image_size(path) or (w, h)
    if w <= 0 or h <= 0:
        raise BadFile(f"{name}: no image_size in {ff.path} and no readable image file")
    return ImageInfo(name, w, h, path if found else None, read_exif(path) if found else None), found


def _same_matches(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    return bool(np.array_equal(np.unique(a, axis=0), np.unique(b, axis=0)))


def _add_frame(db: pycolmap.Database, camera_id: int, image_id: int) -> None:
    sensor = pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id)
    rig = db.read_rig_with_sensor(sensor)
    if rig is None:
        rig = pycolmap.Rig()
        rig.add_ref_sensor(sensor)
        rig_id = db.write_rig(rig)
    else:
        rig_id = rig.rig_id
    frame = pycolmap.Frame()
    frame.rig_id = rig_id
    frame.add_data_id(pycolmap.data_t(sensor, image_id))
    db.write_frame(frame)


def _read_reference_model(model_dir: Path) -> pycolmap.Reconstruction:
    rec = read_model(model_dir, "reference model")
    if rec.num_images() == 0:
        raise BadFile(f"{model_dir}: the reference model has no images")
    return rec


def _mirror_reference_model(result: ImportResult, ff: FeatureFile, db: pycolmap.Database,
                            rec: pycolmap.Reconstruction, model_dir: Path) -> dict[str, int]:
    """Write the model's cameras, rigs, frames and images with their ids (checked first)."""
    ids: dict[str, int] = {}
    fresh = db.num_images() == 0
    if not fresh:  # a second import: the ids must already agree
        check_mirrors_model(db, rec, result.database, model_dir,
                            "use a new database or --overwrite")
    for im in rec.images.values():
        if im.name not in ff:
            result.failed[im.name] = (
                f"{im.name}: in the reference model but not in features file {ff.path}")
            continue
        if im.name in result.failed:  # a malformed entry (_readable_entries)
            continue
        cam = rec.cameras[im.camera_id]
        w, h = ff.image_size(im.name)
        if w > 0 and (w, h) != (cam.width, cam.height):
            raise IncompatibleFeatures(
                f"{im.name}: features are for a {w}x{h} image, the reference model's camera "
                f"is {cam.width}x{cam.height}")
        ids[im.name] = im.image_id
    if fresh:
        for cam in rec.cameras.values():
            db.write_camera(cam, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for im in rec.images.values():  # without points2D: keypoints come from the features
            db.write_image(pycolmap.Image(name=im.name, camera_id=im.camera_id,
                                          image_id=im.image_id), use_image_id=True)
        result.new_images = sorted(im.name for im in rec.images.values())
        result.new_cameras = rec.num_cameras()
    result.outside_model = sum(n not in ids for n in ff.names)
    result.images = len(ids)
    return ids


# ----------------------------------------------------------------------------- import
def colmap_import(
    database: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    matches: str | os.PathLike | None = "matches.h5",
    *,
    settings: ImportSettings | None = None,
    pairs: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    reference_model: str | os.PathLike | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> ImportResult:
    """Write features and matches into a COLMAP database (created if missing).

    ``settings``: cameras, verification and pruning (:class:`~d2cli.settings.ImportSettings`);
    keyword ``overrides`` replace single fields (``colmap_import(db, verify=False)``).
    ``pairs`` restricts the import to the listed pairs (default: every pair of the
    matches file); ``matches=None`` imports images and keypoints only.
    ``image_dir`` (default: the image root recorded in the features file) is read for
    EXIF only: image files are optional. ``reference_model`` mirrors an existing COLMAP
    model with its ids and imports only its images, for ``reconstruct(...,
    reference_model=...)``. ``overwrite`` starts from an empty database.

    Names that are not in the features file, and listed pairs missing from the matches
    file, are reported in ``result.failed``; the rest is imported.
    """
    t0 = time.perf_counter()
    s = with_overrides(settings, ImportSettings, overrides)
    s = replace(s, camera_model=check_camera_model(s.camera_model, s.camera_params))
    database = Path(database)
    features = Path(features)
    if pairs is not None and matches is None:
        raise UsageError("a pairs list needs a matches file")
    with ExitStack() as inputs:  # opened before anything is written: a bad input changes nothing
        ff = inputs.enter_context(FeatureFile(features))
        mf = inputs.enter_context(MatchFile(matches)) if matches is not None else None
        images = image_folder(ff, image_dir)
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{database}: cannot write here ({e.strerror})") from None
        with exclusive_lock(Path(str(database) + ".lock"),  # one writer at a time
                            busy=f"{database} is being written by another d2 process; wait for it",
                            unwritable=f"{database}: cannot write here"):
            if overwrite:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    p = Path(str(database) + suffix)
                    if p.is_file():
                        p.unlink()
            result = ImportResult(database=database, features=features,
                                  matches=Path(matches) if matches is not None else None)
            result.image_dir = images
            with quiet_colmap(verbose):
                to_verify = _write_database(result, ff, mf, pairs, s, reference_model, progress)
                if to_verify and mf is not None:
                    verify_pairs(result, to_verify, mf, progress)
            result.stats = database_stats(database)
            result.seconds = time.perf_counter() - t0
            return result


def _write_database(result: ImportResult, ff: FeatureFile, mf: MatchFile | None,
                    pairs_path: str | os.PathLike | None, s: ImportSettings,
                    reference_model: str | os.PathLike | None,
                    progress: ProgressFn | None) -> list[tuple[str, str]]:
    """Everything but the verification, in one transaction; returns the pairs to verify."""
    names = _readable_entries(result, ff)
    pair_list = _pairs_to_import(result, ff, mf, pairs_path)
    rec = _read_reference_model(Path(reference_model)) if reference_model is not None else None
    with open_database(result.database) as db, pycolmap.DatabaseTransaction(db):
        if rec is not None:
            ids = _mirror_reference_model(result, ff, db, rec, Path(reference_model))
        else:
            ids = _write_images(result, ff, db, names, s, progress)
        num_kp = _write_keypoints(result, ff, db, ids, progress)
        if mf is None:
            return []
        to_verify = _write_matches(result, ff, mf, db, ids, num_kp, pair_list, progress)
        if s.prune:
            _prune_pairs(result, db, {pycolmap.image_pair_to_pair_id(ids[a], ids[b])
                                      for a, b in pair_list if a in ids and b in ids})
        if not s.verify:
            _store_unverified(result, db, ids, to_verify)
            return []
    return to_verify


def _pairs_to_import(result: ImportResult, ff: FeatureFile, mf: MatchFile | None,
                     pairs_path: str | os.PathLike | None) -> list[tuple[str, str]]:
    """The pairs list (or every pair of the matches file), self pairs and duplicate
    unordered pairs dropped."""
    if mf is None:
        return []
    _check_match_provenance(ff, mf)
    if pairs_path is not None:
        wanted = read_pair_lines(pairs_path)
    else:
        wanted, unknown_keys = _pairs_from_match_file(mf, ff.names)
        for k in unknown_keys:
            result.failed[k] = f"{k}: in {mf.path} but not in features file {ff.path}"
    pair_list = normalize_pairs(wanted)
    result.dropped_pairs = len(wanted) - len(pair_list)
    return pair_list


def _write_keypoints(result: ImportResult, ff: FeatureFile, db: pycolmap.Database,
                     ids: dict[str, int], progress: ProgressFn | None) -> dict[str, int]:
    """The keypoints of the images the database lacks them for; name -> keypoint count."""
    num_kp: dict[str, int] = {}
    stage = Stage(progress, "keypoints", len(ids), unit="img")
    for n in sorted(ids):
        kp = ff.keypoints(n)
        num_kp[n] = len(kp)
        if not db.exists_keypoints(ids[n]):
            write_keypoints(db, ids[n], kp)
            result.keypoints_written += 1
        stage.advance(n)
    return num_kp


def _write_matches(result: ImportResult, ff: FeatureFile, mf: MatchFile, db: pycolmap.Database,
                   ids: dict[str, int], num_kp: dict[str, int], pair_list: list[tuple[str, str]],
                   progress: ProgressFn | None) -> list[tuple[str, str]]:
    """The raw matches of the new or changed pairs; returns the pairs to verify (those,
    and those whose geometry is missing)."""
    to_verify: list[tuple[str, str]] = []
    stage = Stage(progress, "matches", len(pair_list), unit="pairs")
    collide = colliding_names(ff.names)
    for a, b in pair_list:
        stage.advance(f"{a} {b}")
        bad = [x for x in (a, b) if x not in ff]
        if bad:
            for x in bad:
                result.failed[x] = f"{x}: in the pairs but not in features file {ff.path}"
            continue
        if a in result.failed or b in result.failed:  # a malformed entry, reported once
            continue
        if (why := pair_collision(a, b, collide)) is not None:
            result.failed[f"{a} {b}"] = why
            continue
        if a not in ids or b not in ids:  # a reference model without this image
            result.outside_model_pairs += 1
            continue
        if (a, b) not in mf:
            result.failed[f"{a} {b}"] = f"pair {a} {b}: not in matches file {mf.path}"
            continue
        try:
            m, _ = mf.get(a, b, num_kp1=num_kp[b])
        except BadFile as e:
            result.failed[f"{a} {b}"] = str(e)
            continue
        if len(m) and (m[:, 0].max() >= num_kp[a] or m[:, 1].max() >= num_kp[b]):
            raise IncompatibleFeatures(
                f"pair {a} {b} in {mf.path} indexes keypoints that {ff.path} does not "
                "have: the matches were made from other features")
        m = m.astype(np.uint32)
        result.pairs += 1
        ia, ib = ids[a], ids[b]
        if db.exists_matches(ia, ib):
            if _same_matches(db.read_matches(ia, ib), m):
                if not db.exists_two_view_geometry(ia, ib):
                    to_verify.append((a, b))
                continue
            db.delete_matches(ia, ib)  # other matches: replace, and verify them again
            if db.exists_two_view_geometry(ia, ib):
                db.delete_two_view_geometry(ia, ib)
            result.replaced_pairs += 1
        else:
            result.new_pairs += 1
        db.write_matches(ia, ib, m)
        to_verify.append((a, b))
    return to_verify


def _store_unverified(result: ImportResult, db: pycolmap.Database, ids: dict[str, int],
                      pairs: list[tuple[str, str]]) -> None:
    """``verify=False``: the raw matches as the inlier geometry, with a defined config
    (pycolmap ignores geometries whose config is UNDEFINED)."""
    for a, b in pairs:
        ia, ib = ids[a], ids[b]
        if db.exists_two_view_geometry(ia, ib):
            continue
        m = db.read_matches(ia, ib)
        calibrated = all(db.read_camera(db.read_image(i).camera_id).has_prior_focal_length
                         for i in (ia, ib))
        config = CONFIG.CALIBRATED if calibrated else CONFIG.UNCALIBRATED
        db.write_two_view_geometry(ia, ib, pycolmap.TwoViewGeometry(
            config=config, inlier_matches=m))
        result.verified_now += 1
        result.inlier_pairs_now += int(len(m) > 0)


def _prune_pairs(result: ImportResult, db: pycolmap.Database, keep: set[int]) -> None:
    """Delete the matches and two-view geometries of every pair not in ``keep`` (pair ids)."""
    pair_ids, _ = db.read_all_matches()
    geo_ids, _ = db.read_two_view_geometries()
    for pid in sorted(set(map(int, pair_ids)) | set(map(int, geo_ids))):
        if pid in keep:
            continue
        ia, ib = pycolmap.pair_id_to_image_pair(pid)
        if db.exists_matches(ia, ib):
            db.delete_matches(ia, ib)
        if db.exists_two_view_geometry(ia, ib):
            db.delete_two_view_geometry(ia, ib)
        result.removed_pairs += 1


def _readable_entries(result: ImportResult, ff: FeatureFile) -> list[str]:
    """The images whose entries pass the input checks (io/h5safe), sorted; the others are
    reported in ``result.failed`` and cost only themselves."""
    names = []
    for n in sorted(ff.names):
        try:
            ff.keypoints(n)  # checks the entry's image_size too
        except BadFile as e:
            result.failed[n] = str(e)
            continue
        names.append(n)
    return names


def _write_images(result: ImportResult, ff: FeatureFile, db: pycolmap.Database, names: list[str],
                  s: ImportSettings, progress: ProgressFn | None) -> dict[str, int]:
    """Image name -> id, writing the new images (and their cameras, rigs, frames)."""
    ids: dict[str, int] = {}
    existing: dict[str, pycolmap.Image] = {}
    for n in names:  # refuse before writing anything: other keypoints for a known image
        have = db.read_image_with_name(n)
        if have is None:
            continue
        existing[n] = have
        if db.exists_keypoints(have.image_id):
            kp = from_colmap(db.read_keypoints(have.image_id)[:, :2])
            new = ff.keypoints(n)[:, :2]
            if kp.shape != new.shape or not np.allclose(kp, new, atol=1e-3):
                raise IncompatibleFeatures(
                    f"{result.database}: image {n} already has other keypoints than "
                    f"{ff.path}; import into a new database or pass --overwrite")
    infos: dict[str, ImageInfo] = {}
    for n in names:
        info, found = _image_info(ff, n, result.image_dir)
        infos[n] = info
        if result.image_dir is not None and not found:
            result.no_image_file.append(n)
    if s.camera_mode == "single":
        sizes = sorted({(i.width, i.height) for i in infos.values()})
        if len(sizes) > 1:
            raise UsageError(
                f"--camera-mode single needs images of one size, found {len(sizes)} sizes "
                f"({', '.join(f'{w}x{h}' for w, h in sizes[:4])}); use auto or per-folder")
    # images already in the database keep their camera, which new images of the same key share
    cameras: dict[tuple[Any, ...], int] = {}
    for n, have in existing.items():
        ids[n] = have.image_id
        cameras.setdefault(camera_key(infos[n], s.camera_mode), have.camera_id)
    with_frames = db.num_images() == 0 or db.num_frames() >= db.num_images()
    todo = [n for n in names if n not in existing]
    stage = Stage(progress, "images", len(todo), unit="img")
    for n in todo:
        key = camera_key(infos[n], s.camera_mode)
        if key not in cameras:
            cameras[key] = db.write_camera(make_camera(infos[n], s.camera_model, s.camera_params))
            result.new_cameras += 1
        ids[n] = db.write_image(pycolmap.Image(name=n, camera_id=cameras[key]))
        if with_frames:
            _add_frame(db, cameras[key], ids[n])
        result.new_images.append(n)
        stage.advance(n)
    result.images = len(ids)
    return ids
