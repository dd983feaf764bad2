"""``d2 localize``."""

from __future__ import annotations

import click

from ..settings import LocalizeSettings
from . import main
from .common import (
    command,
    finish,
    json_option,
    print_json,
    progress,
    quiet_option,
    summary_table,
    verbose_option,
)


@main.command("localize")
@click.option("--reference", "reference", type=click.Path(),
              help="COLMAP model built from --features (d2 sfm, or colmap-import "
                   "--reference-model + reconstruct --reference-model).")
@click.option("--inloc-scans", type=click.Path(),
              help="InLoc instead of a model: folder with <reference name>.mat (XYZcut) files.")
@click.option("--inloc-alignments", type=click.Path(),
              help="InLoc database/alignments folder: scans -> building frame (P_after_GICP).")
@click.option("--queries", required=True, type=click.Path(),
              help="'name [MODEL W H params...]' per line (Aachen *_queries_with_intrinsics.txt).")
@click.option("--pairs", "-p", "pairs_file", required=True, type=click.Path(),
              help="Query-reference pairs (d2 pairs exhaustive --query-prefix, from-retrieval).")
@click.option("--features", "-f", default="feats.h5", show_default=True, help="Features file.")
@click.option("--matches", "-m", default="matches.h5", show_default=True, help="Matches file.")
@click.option("--out", "-o", default="poses.txt", show_default=True,
              help="Poses: 'name qw qx qy qz tx ty tz' (world-to-camera, Aachen format).")
@click.option("--log", "log_file", type=click.Path(),
              help="Per-query log: inliers, or why it failed [default: OUT with suffix .log].")
@click.option("--max-error", default=LocalizeSettings.max_error, show_default=True,
              help="RANSAC reprojection threshold in pixels (hloc: 12 Aachen, 48 InLoc).")
@click.option("--min-inliers", default=LocalizeSettings.min_inliers, show_default=True,
              help="A query with fewer PnP inliers fails.")
@click.option("--refine-focal", is_flag=True, help="Refine each query's focal length with its pose.")
@click.option("--image-dir", type=click.Path(),
              help="Query images, read for EXIF, and with --refine the reference images too "
                   "[default: the root recorded in the features].")
@click.option("--refine", is_flag=True,
              help="Featuremetric refinement of the pose's inlier query points against their "
                   "reference keypoints, then the pose again (reads the images).")
@click.option("--full-names", is_flag=True,
              help="Write query names as given, not their basenames (the Aachen/InLoc form).")
@click.option("--overwrite", is_flag=True, help="Do not resume an interrupted run.")
@verbose_option
@quiet_option
@json_option
@command
def localize_cmd(reference, inloc_scans, inloc_alignments, queries, pairs_file, features, matches,
                 out, log_file, max_error, min_inliers, refine_focal, image_dir, refine,
                 full_names, overwrite, verbose, quiet, as_json) -> int:
    """Localise query images against a COLMAP model (--reference) or InLoc scans.

    2D-3D correspondences come from the queries' matches to reference keypoints that
    observe 3D points; the pose from pycolmap's absolute-pose RANSAC and refinement.
    Failed queries are listed with the reason (exit 1); an interrupted run resumes.
    """
    from ..localize import localize
    from ..refine import RefineConfig

    with progress(quiet or as_json) as show:
        result = localize(
            reference, queries, pairs_file, features, matches, out,
            settings=LocalizeSettings(max_error=max_error, min_inliers=min_inliers,
                                      refine_focal_length=refine_focal),
            inloc_scans=inloc_scans,
            inloc_alignments=inloc_alignments, image_dir=image_dir, full_names=full_names,
            log=log_file, overwrite=overwrite, verbose=verbose,
            refine=RefineConfig() if refine else None, progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        med = s["median_inliers"]
        summary_table(f"d2 localize -> {out}", [
            ("localised", f"{s['localized']} / {s['queries']}"
                          + (f" ({s['resumed']} from an interrupted run)" if s["resumed"] else "")),
            ("median inliers", "-" if med is None else f"{med:.0f}"),
            *([("refined inliers", f"{r['moved']} moved, {r['undone']} undone by the guards, "
                                   f"{r['unmoved']} unmoved")] if (r := s["refined"]) else []),
            ("reference", f"{s['reference']} ({s['mode']})"),
            ("log", s["log"]),
            ("time", f"{s['seconds']:.1f} s"),
        ])
    return finish(result, None if as_json else "queries")
