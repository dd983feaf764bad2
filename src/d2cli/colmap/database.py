"""Opening COLMAP databases and reading their numbers; pycolmap is imported on first use.

Every module that opens a database goes through :func:`open_database`, so a missing
folder, a directory in the way or a corrupt file is one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BadFile, IncompatibleFeatures, InputNotFound, OutputError


@contextmanager
def quiet_colmap(verbose: bool = False) -> Iterator[None]:
    """pycolmap logs every step at INFO, and failures we report ourselves as errors: mute it
    unless asked (3 = FATAL only)."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = old if verbose else max(old, 3)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


@contextmanager
def open_database(path: str | os.PathLike, *, create: bool = True) -> Iterator[Any]:
    """A ``pycolmap.Database`` (created if missing, unless ``create`` is False), closed after."""
    import pycolmap

    p = Path(path)
    if not create and not p.is_file():
        raise InputNotFound(f"{p}: database not found")
    if p.is_dir():
        raise OutputError(f"{p}: is a directory, expected a database file path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{p}: cannot write here ({e.strerror})") from None
    try:
        with quiet_colmap():  # its WARNING about the failed open would precede our error line
            db = pycolmap.Database.open(p)
    except Exception as e:  # pycolmap raises RuntimeError/ValueError with SQLite's text
        if p.is_file() and not os.access(p, os.W_OK):  # pycolmap opens for writing only
            raise OutputError(f"{p}: is read-only, and this step writes into it (fix its "
                              "permissions or work on a copy)") from None
        raise BadFile(f"{p}: not a usable COLMAP database ({str(e).splitlines()[0]})") from None
    try:
        yield db
    finally:
        db.close()


def check_mirrors_model(db: Any, rec: Any, database: str | os.PathLike,
                        model_dir: str | os.PathLike, remedy: str) -> None:
    """``db`` holds every image of the reference model ``rec`` under the model's image id
    (as ``colmap-import --reference-model`` writes them); else IncompatibleFeatures naming
    the first image that differs, and ``remedy``."""
    for im in rec.images.values():
        have = db.read_image_with_name(im.name)
        if have is None or have.image_id != im.image_id:
            raise IncompatibleFeatures(f"{database} was not made from the reference model "
                                       f"{model_dir} (image {im.name}); {remedy}")


def database_stats(database: str | os.PathLike) -> dict[str, int]:
    """The numbers ``colmap database`` summaries show."""
    with quiet_colmap(), open_database(database) as db:
        return {
            "cameras": db.num_cameras(), "images": db.num_images(), "frames": db.num_frames(),
            "keypoints": db.num_keypoints(), "matched_pairs": db.num_matched_image_pairs(),
            "matches": db.num_matches(), "verified_pairs": db.num_verified_image_pairs(),
            "inlier_matches": db.num_inlier_matches(),
        }
