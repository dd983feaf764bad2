"""The whole pipeline (``d2 sfm images/ --out work/``): extract -> pairs -> match ->
colmap-import -> reconstruct, every output kept in ``work/``::

    work/feats.h5      D2-Net features             (d2 extract: resumes image by image)
    work/pairs.txt     exhaustive pairs            (rewritten only when the images change)
    work/matches.h5    mutual nearest neighbours   (d2 match: resumes pair by pair)
    work/database.db   COLMAP database, verified   (d2 colmap-import: adds only what is new)
    work/sparse/       COLMAP model(s)             (d2 reconstruct; layout in reconstruct.py)
    work/sfm.json      what the model was made from: the step is skipped when nothing changed

Re-running after an interruption, or after adding images, redoes only what is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .colmap.database import database_stats
from .colmap.importer import ImportSettings, colmap_import
from .errors import D2Error, IncompatibleFeatures, OutputError, UsageError
from .extract import ExtractSettings, extract
from .images import DEFAULT_MAX_PIXELS
from .io.atomic import write_json_atomic
from .io.features import FeatureFile, image_folder
from .io.pairs import pairs_file_equals
from .jobs import ProgressFn, Stage, relabel
from .match import MatchSettings, match
from .pairs import AUTO_RETRIEVAL_ABOVE, PairStrategy, save_pairs
from .reconstruct import MODEL_FILES, MapSettings, reconstruct
from .refine import RefineConfig
from .refine.job import refine_database

STEPS = ("extract", "pairs", "match", "import", "reconstruct")


@dataclass(frozen=True)
class SfmSettings:
    """What every step of ``d2 sfm`` does: each step's own settings, defaults theirs."""

    extract: ExtractSettings = field(default_factory=ExtractSettings)
    pairs: PairStrategy = field(default_factory=PairStrategy)  # default: auto
    match: MatchSettings = field(default_factory=MatchSettings)
    database: ImportSettings = field(default_factory=ImportSettings)  # sfm always prunes
    mapping: MapSettings = field(default_factory=MapSettings)
    # move the keypoints along the verified tracks before mapping (None: do not)
    refine: RefineConfig | None = None


@dataclass
class SfmResult:
    work: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> its summary
    skipped: list[str] = field(default_factory=list)  # steps that found nothing to do
    failed: dict[str, str] = field(default_factory=dict)  # images / pairs that failed
    seconds: float = 0.0
    interrupted: bool = False  # a step was interrupted: what it finished is kept in work/

    @property
    def model(self) -> dict[str, Any]:
        return self.steps.get("reconstruct", {})

    def record(self, name: str, run: Any, did_work: bool) -> bool:
        """Keep a step's summary and failures, note it if it had nothing to do; False if the
        step was interrupted (the run stops there)."""
        self.steps[name] = run.summary()
        self.failed.update(run.failed)
        self.interrupted = run.interrupted
        if not did_work:
            self.skipped.append(name)
        return not self.interrupted

    def summary(self) -> dict[str, Any]:
        return {"work": str(self.work), "steps": self.steps, "skipped": self.skipped,
                "failed": self.failed, "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted}


def _stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sfm(
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    work: str | os.PathLike = "sfm",
    settings: SfmSettings | None = None,
    *,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_list: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    verbose: bool = False,
    progress: ProgressFn | None = None,
) -> SfmResult:
    """Images -> COLMAP model in ``work/`` (layout: module doc); every step resumes.

    ``settings`` holds each step's settings (:class:`SfmSettings`: those of
    :func:`~d2cli.extract.extract`, :class:`~d2cli.pairs.PairStrategy` (exhaustive up to
    100 images, retrieval above), :func:`~d2cli.match.match`,
    :func:`~d2cli.colmap.colmap_import`, :func:`~d2cli.reconstruct.reconstruct`); with
    camera parameters given, the intrinsics stay fixed unless the mapping's intrinsics
    say ``refine``. Its ``refine`` moves the keypoints along the verified tracks before
    mapping (:func:`~d2cli.refine.job.refine_database`; the unrefined files are
    kept). ``image_list`` (with ``images`` empty) names the images, relative to
    ``image_root`` or the list's folder.

    ``progress`` gets the events of every step (stage ``extract``, ``match``,
    ``import <stage>``, ``mapping``) and a status line (stage ``sfm``) as each step ends.
    Failed images and pairs are listed in ``result.failed`` and do not stop the run;
    Ctrl-C stops the step in flight (``result.interrupted``) and leaves every finished
    step, and the finished part of the current one, in ``work/`` for the next run.
    """
    t0 = time.perf_counter()
    settings = settings or SfmSettings()
    mapping = settings.mapping
    if settings.database.camera_params is not None and mapping.intrinsics == "auto":
        mapping = replace(mapping, intrinsics="fixed")  # known calibration: keep it
    # prune: pairs of an earlier strategy must not reach the mapper
    database_settings = replace(settings.database, prune=True)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    work = Path(work)
    if work.exists() and not work.is_dir():
        raise OutputError(f"{work}: exists and is not a folder")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{work}: cannot create ({e.strerror})") from None
    feats, pairs_path, matches = work / "feats.h5", work / "pairs.txt", work / "matches.h5"
    database, sparse, stamp_path = work / "database.db", work / "sparse", work / "sfm.json"
    result = SfmResult(work=work)

    status = Stage(progress, "sfm")

    def done() -> SfmResult:
        result.seconds = time.perf_counter() - t0
        return result

    # 1. features
    ex = extract(images, feats, model=model, settings=settings.extract, device=device,
                 image_list=image_list, image_root=image_root, max_pixels=max_pixels,
                 progress=progress)
    if not result.record("extract", ex, bool(ex.extracted)):
        return done()
    status.say(f"extract: {ex.total - len(ex.failed)} images, {len(ex.extracted)} extracted now "
               f"({ex.precision} trunk, {ex.precision_note})")

    # 2. pairs: every pair of the images that have features
    p = _pairs_step(result, feats, pairs_path, settings.pairs)
    status.say(f"pairs: {p['pairs']} pairs of {p['images']} images ({p['method']}"
               f"{', ' + p['chosen'] if 'chosen' in p else ''})")

    # 3. matches
    try:
        mt = match(pairs_path, feats, matches, settings=settings.match, device=device,
                   progress=progress)
    except IncompatibleFeatures as e:
        raise IncompatibleFeatures(f"{e}; or delete {matches} to rematch") from None
    if not result.record("match", mt, bool(mt.matched)):
        return done()
    status.say(f"match: {len(mt.matched)} pairs matched now, {len(mt.skipped)} already done")

    # 4. database
    im = colmap_import(database, feats, matches, settings=database_settings, pairs=pairs_path,
                       verbose=verbose, progress=relabel(progress, "import {}"))
    if not result.record("import", im, bool(im.changed)):
        return done()
    status.say(f"import: {im.stats.get('verified_pairs', 0)} verified pairs, "
               f"{im.verified_now} verified now")

    # 4b. featuremetric track refinement: feats-refined.h5 and database-refined.db
    if settings.refine is not None:
        refined = _refine_step(result, database, feats, work, p["image_root"], settings.refine,
                               progress)
        if refined is None:
            return done()
        database, r = refined, result.steps["refine"]
        status.say(f"refine: {r['keypoints_moved']} keypoints moved (median "
                   f"{r['median_shift']:.2f} px, {r.get('keypoints_undone', 0)} moves undone) in "
                   f"{r['tracks']} tracks")

    # 5. model: skipped when made from this very database with these settings
    s = _reconstruct_step(result, database, sparse, stamp_path, p["image_root"], mapping,
                          verbose, progress)
    status.say(f"reconstruct: {s['registered']}/{result.steps['extract']['images']} images registered")
    return done()


def _pairs_step(result: SfmResult, feats: Path, pairs_path: Path,
                strategy: PairStrategy) -> dict[str, Any]:
    """The pairs of the images that have features; the file is rewritten only if it differs."""
    with FeatureFile(feats) as ff:
        names = sorted(ff.names)
        folder = image_folder(ff)
        image_root = str(folder) if folder is not None else None
    if len(names) < 2:
        raise UsageError(f"{len(names)} image(s) with features: a reconstruction needs at least 2")
    chosen = strategy.resolved(len(names))
    why = ""
    if strategy.method == "auto":
        why = (f"auto: {len(names)} images "
               f"{'>' if chosen.method == 'retrieval' else '<='} {AUTO_RETRIEVAL_ABOVE}")
    # streamed: exhaustive pairs of thousands of images are never all in memory
    pairs = chosen.source(names, feats)
    count = pairs_file_equals(pairs_path, pairs) if pairs_path.is_file() else None
    if count is not None:
        result.skipped.append("pairs")
    else:
        count = save_pairs(pairs(), pairs_path, method=chosen.method, unique=True).pairs
    result.steps["pairs"] = {"out": str(pairs_path), "pairs": count,
                             "images": len(names), **chosen.as_dict(),
                             **({"chosen": why} if why else {})}
    return {**result.steps["pairs"], "image_root": image_root}


def _refine_step(result: SfmResult, database: Path, feats: Path, work: Path,
                 image_root: str | None, config: RefineConfig,
                 progress: ProgressFn | None) -> Path | None:
    """Refined features and database, redone only when the database or settings changed;
    None when interrupted (its journal resumes it)."""
    out_feats, out_db = work / "feats-refined.h5", work / "database-refined.db"
    stamp = work / "refine.json"
    made_from = {"database": database_stats(database), "refine": config.as_dict()}
    old = _stamp(stamp)
    if out_feats.is_file() and out_db.is_file() and old and old.get("made_from") == made_from:
        result.steps["refine"] = old["summary"]
        result.skipped.append("refine")
        return out_db
    stamp.unlink(missing_ok=True)
    r = refine_database(database, feats, out_feats, out_db, image_dir=image_root,
                        config=config, progress=progress)
    if not result.record("refine", r, did_work=True):
        return None
    write_json_atomic(stamp, {"made_from": made_from, "summary": r.summary()})
    return out_db


def _reconstruct_step(result: SfmResult, database: Path, sparse: Path, stamp_path: Path,
                      image_root: str | None, mapping: MapSettings, verbose: bool,
                      progress: ProgressFn | None) -> dict[str, Any]:
    """Map unless ``sparse`` already holds a model made from this very database with these
    settings (``sfm.json`` records what it was made from)."""
    settings = {k: getattr(mapping, k) for k in ("mapper", "seed", "intrinsics")}
    made_from = {"database": database_stats(database), "settings": settings}
    if "refine" in result.steps:  # same counts as the unrefined database: say which it is
        made_from["refined"] = result.steps["refine"]
    old = _stamp(stamp_path)
    have_model = all((sparse / f).is_file() for f in MODEL_FILES)
    if have_model and old is not None and old.get("made_from") == made_from:
        result.steps["reconstruct"] = old["summary"]
        result.skipped.append("reconstruct")
    else:
        stamp_path.unlink(missing_ok=True)  # the old model no longer matches the database
        try:
            rc = reconstruct(database, sparse, settings=mapping, image_dir=image_root,
                             verbose=verbose, progress=progress)
        except D2Error as e:  # name the inputs that failed earlier: they may be why
            if not result.failed:
                raise
            shown = "; ".join(list(result.failed.values())[:3])
            raise type(e)(f"{e} ({len(result.failed)} inputs had failed before: {shown})") from None
        result.steps["reconstruct"] = rc.summary()
        write_json_atomic(stamp_path, {"made_from": made_from, "summary": rc.summary()})
    return result.steps["reconstruct"]
