"""Track-level refinement of a COLMAP database made by ``d2 colmap-import`` (``d2 sfm --refine``).

The verified inlier matches of the database define the tracks; :func:`refine_tracks`
gives one refined position per keypoint; the result is a new features file (the
original kept) and a copy of the database with the refined keypoints, its matches and
two-view geometries unchanged, ready for mapping. Both are written atomically.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..colmap.database import open_database, quiet_colmap
from ..colmap.keypoints import write_keypoints
from ..errors import InputNotFound
from ..images import image_under, load_rgb
from ..io.atomic import write_atomic
from ..io.features import FeatureFile, require_image_folder, write_moved_keypoints
from ..io.journal import JsonJournal
from ..jobs import ProgressFn, Stage, interruptible
from .config import RefineConfig
from .tracks import PairMoves, apply_moves, build_tracks, track_moves


@dataclass
class RefineResult:
    features: Path
    database: Path
    images: int = 0
    keypoints_moved: int = 0
    keypoints_undone: int = 0  # moves the guards undid (RefineConfig: max_shift, min_score...)
    tracks: int = 0
    median_shift: float = 0.0  # px, of the keypoints that moved
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)
    resumed: int = 0  # pairs taken from an interrupted run's journal
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        return {"features": str(self.features), "database": str(self.database),
                "images": self.images, "keypoints_moved": self.keypoints_moved,
                "keypoints_undone": self.keypoints_undone,
                "tracks": self.tracks, "median_shift": round(self.median_shift, 3),
                "resumed_pairs": self.resumed,
                "seconds": round(self.seconds, 3)}


def verified_matches(database: str | os.PathLike) -> tuple[dict[str, int], dict[tuple[str, str],
                                                                          np.ndarray]]:
    """(image name -> id, (name0, name1) -> inlier matches (M, 2)) of a database."""
    import pycolmap

    with quiet_colmap(), open_database(database, create=False) as db:
        images = {im.name: im.image_id for im in db.read_all_images()}
        names = {v: k for k, v in images.items()}
        pair_ids, geometries = db.read_two_view_geometries()
        out: dict[tuple[str, str], np.ndarray] = {}
        for pid, g in zip(pair_ids, geometries, strict=True):
            i0, i1 = pycolmap.pair_id_to_image_pair(pid)
            m = np.asarray(g.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if len(m):
                out[(names[i0], names[i1])] = m
    return images, out


def refine_database(database: str | os.PathLike, features: str | os.PathLike,
                    out_features: str | os.PathLike, out_database: str | os.PathLike, *,
                    image_dir: str | os.PathLike | None = None,
                    config: RefineConfig | None = None,
                    progress: ProgressFn | None = None) -> RefineResult:
    """Refine the keypoints of ``features`` along the verified tracks of ``database``.

    Images are read from ``image_dir`` (default: the root recorded in the features file).
    Finished pairs go to ``<out_features>.partial`` as they are done: an interrupted
    (``result.interrupted``, nothing else written) or killed run resumes from there.
    """
    t0 = time.perf_counter()
    config = config or RefineConfig()
    result = RefineResult(Path(out_features), Path(out_database))
    ids, matches = verified_matches(database)
    with FeatureFile(features) as ff:
        root = require_image_folder(ff, image_dir, "refinement")
        names = [n for n in ff.names if n in ids]
        kps = {n: ff.keypoints(n) for n in names}
    for n in names:
        if not image_under(root, n).is_file():
            raise InputNotFound(f"{root / n}: image not found (refinement reads the images; "
                                "pass the image folder)")
    # pairs done by an interrupted run come from the journal; the others are computed
    journal = JsonJournal(Path(str(out_features) + ".partial"), {
        "d2 refine": 1, "inputs": _digest(kps, matches), "refine": config.as_dict()})
    done = [pm for d in journal.records() if (pm := _moves_from_json(d)) is not None]
    result.resumed = len(done)
    stage = Stage(progress, "refine", unit="pairs")
    stage.start(len(matches), done=len(done))
    images = {n: (lambda n=n: load_rgb(image_under(root, n))) for n in names}
    tracks = build_tracks({n: len(k) for n, k in kps.items()}, matches, config.max_track)
    result.tracks = tracks.count
    with journal, interruptible() as stop:
        for pm in stop.each(track_moves(images, kps, matches, config, tracks=tracks,
                                        skip={pm.pair for pm in done})):
            journal.append(_moves_to_json(pm))
            done.append(pm)
            stage.advance(" ".join(pm.pair))
    if stop.requested:  # the journal keeps the finished pairs for the next run
        result.interrupted = True
        result.seconds = time.perf_counter() - t0
        return result
    refined = apply_moves(kps, done)
    shifts = np.concatenate([np.linalg.norm(refined[n] - kps[n], axis=1) for n in names]
                            or [np.zeros(0)])
    moved = shifts[shifts > 0]
    result.images, result.keypoints_moved = len(names), int(len(moved))
    result.median_shift = float(np.median(moved)) if len(moved) else 0.0
    result.keypoints_undone = sum(pm.undone for pm in done)
    write_moved_keypoints(features, result.features, refined, {"refine": config.as_dict()})
    _write_database(Path(database), result.database, ids, refined)
    journal.remove()
    result.seconds = time.perf_counter() - t0
    return result


def _digest(kps: dict[str, np.ndarray], matches: dict[tuple[str, str], np.ndarray]) -> str:
    """What the moves are computed from (keypoints, verified matches), by content: the
    files' times change on every run that merely opens them."""
    h = hashlib.sha256()
    for n in sorted(kps):
        h.update(n.encode() + b"\0" + np.ascontiguousarray(kps[n], "<f4").tobytes())
    for a, b in sorted(matches):
        h.update(f"{a}\0{b}\0".encode() + np.ascontiguousarray(matches[(a, b)], "<i8").tobytes())
    return h.hexdigest()


def _moves_to_json(pm: PairMoves) -> dict[str, Any]:
    """Exact and compact: indices and float32 positions as base64 of their bytes."""
    enc = lambda a, t: base64.b64encode(np.ascontiguousarray(a, t).tobytes()).decode()  # noqa: E731
    return {"pair": list(pm.pair), "undone": pm.undone,
            "moves": [[n, enc(i, "<i8"), enc(p, "<f4")] for n, i, p in pm.moves]}


def _moves_from_json(d: dict[str, Any]) -> PairMoves | None:
    dec = lambda s, t: np.frombuffer(base64.b64decode(s), dtype=t)  # noqa: E731
    try:
        return PairMoves((d["pair"][0], d["pair"][1]),
                         [(n, dec(i, "<i8"), dec(p, "<f4").reshape(-1, 2))
                          for n, i, p in d["moves"]], int(d.get("undone", 0)))
    except (KeyError, TypeError, ValueError):  # not a record of ours: redo that pair
        return None


def _write_database(src: Path, out: Path, ids: dict[str, int],
                    refined: dict[str, np.ndarray]) -> None:
    with write_atomic(out, need_bytes=2 * src.stat().st_size) as tmp:
        shutil.copyfile(src, tmp)
        with quiet_colmap(), open_database(tmp, create=False) as db:
            for n, kp in refined.items():
                write_keypoints(db, ids[n], kp, replace=True)
