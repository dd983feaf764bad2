"""``d2 refine``: featuremetric track refinement of a COLMAP database (step by step)."""

from __future__ import annotations

from pathlib import Path

import click

from . import main
from .common import (
    command,
    device_option,
    finish,
    json_option,
    print_json,
    progress,
    quiet_option,
    summary_table,
)


@main.command("refine")
@click.argument("database", type=click.Path())
@click.option("--features", "-f", default="feats.h5", show_default=True,
              help="The features the database was imported from (d2 colmap-import).")
@click.option("--out-features", type=click.Path(),
              help="Refined features [default: FEATURES with -refined before the suffix].")
@click.option("--out-database", type=click.Path(),
              help="Refined copy of the database [default: DATABASE with -refined].")
@click.option("--image-dir", type=click.Path(),
              help="The images [default: the root recorded in the features].")
@device_option
@quiet_option
@json_option
@command
def refine_cmd(database, features, out_features, out_database, image_dir, device, quiet,
               as_json) -> int:
    """Refine the keypoints of DATABASE's verified tracks (between colmap-import and
    reconstruct): a new features file and a copy of the database with the refined
    keypoints, the originals kept. Map the copy with d2 reconstruct; localise against it
    with its features and d2 localize --refine. An interrupted run resumes.
    """
    from ..refine import RefineConfig
    from ..refine.job import refine_database

    db, ff = Path(database), Path(features)
    out_features = out_features or ff.with_name(f"{ff.stem}-refined{ff.suffix or '.h5'}")
    out_database = out_database or db.with_name(f"{db.stem}-refined{db.suffix or '.db'}")
    with progress(quiet or as_json) as show:
        result = refine_database(db, ff, out_features, out_database, image_dir=image_dir,
                                 config=RefineConfig(device=device), progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    elif not result.interrupted:
        summary_table(f"d2 refine -> {out_database}", [
            ("images", s["images"]), ("tracks", s["tracks"]),
            ("keypoints moved", f"{s['keypoints_moved']} (median {s['median_shift']:.2f} px)"),
            ("moves undone", f"{s['keypoints_undone']} (by the guards: too far, weak, "
                             "inconsistent, at the border)"),
            ("resumed pairs", s["resumed_pairs"]), ("features", s["features"]),
            ("time", f"{s['seconds']:.1f} s")])
    return finish(result)
