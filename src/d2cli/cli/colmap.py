"""``d2 colmap-import``, ``d2 reconstruct``, ``d2 sfm`` and ``d2 export``."""

from __future__ import annotations

from typing import Any

import click

from ..settings import NUM_MATCHED, SEQUENTIAL_OVERLAP
from . import main
from .common import (
    camera_options,
    chosen_scales,
    command,
    decode_option,
    device_option,
    done_line,
    err_console,
    extract_settings,
    finish,
    import_settings,
    json_option,
    map_settings,
    mapping_options,
    max_pixels_option,
    model_option,
    multiscale_options,
    network_options,
    parse_pycolmap_options,
    precision_option,
    print_json,
    progress,
    quiet_option,
    resize_options,
    summary_table,
    verbose_option,
)


@main.command("colmap-import")
@click.argument("database", type=click.Path(path_type=str))
@click.option("--features", "-f", default="feats.h5", show_default=True, help="Features file.")
@click.option("--matches", "-m", default="matches.h5", show_default=True, help="Matches file.")
@click.option("--pairs", "pairs_file", type=click.Path(),
              help="Import only these pairs [default: every pair of the matches file].")
@click.option("--image-dir", type=click.Path(),
              help="Images, read for EXIF only [default: the root recorded in the features].")
@camera_options
@click.option("--no-verify", is_flag=True,
              help="Store the raw matches as verified geometry (no RANSAC).")
@click.option("--reference-model", type=click.Path(),
              help="COLMAP model to mirror (same ids), for d2 reconstruct --reference-model.")
@click.option("--prune-pairs", is_flag=True,
              help="Delete the matches of database pairs not imported now (an earlier pairs "
                   "list), so that the mapper sees exactly these pairs.")
@click.option("--overwrite", is_flag=True, help="Start from an empty database.")
@verbose_option
@quiet_option
@json_option
@command
def colmap_import_cmd(database, features, matches, pairs_file, image_dir, camera_mode,
                      camera_model, camera_params, no_verify, reference_model, prune_pairs,
                      overwrite, verbose, quiet, as_json) -> int:
    """Write features and matches into the COLMAP DATABASE (created if missing).

    Keypoints get COLMAP's +0.5 pixel convention; matches are verified with pycolmap
    unless --no-verify. Importing again adds only what is new.
    """
    from ..colmap import colmap_import

    settings = import_settings(camera_mode, camera_model, camera_params, verify=not no_verify,
                               prune=prune_pairs)
    with progress(quiet or as_json) as show:
        result = colmap_import(
            database, features, matches, settings=settings, pairs=pairs_file,
            image_dir=image_dir, reference_model=reference_model, overwrite=overwrite,
            verbose=verbose, progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        db = s["database_stats"]
        rows = [
            ("images", f"{s['images']} ({s['new_images']} new)"),
            ("cameras", f"{db['cameras']} ({s['new_cameras']} new)"),
            ("keypoints", f"{db['keypoints']} ({s['keypoints_written']} images written now)"),
            ("pairs imported", f"{s['pairs']} ({s['new_pairs']} new, {s['replaced_pairs']} "
                               f"replaced, {s['dropped_pairs']} self/duplicate dropped)"),
            *([("pairs removed", f"{s['removed_pairs']} (not in this import)")]
              if prune_pairs else []),
            ("verified now" if not no_verify else "stored unverified",
             f"{s['verified_now']} ({s['inlier_pairs_now']} usable)"),
            ("database", f"{db['matched_pairs']} matched pairs, {db['verified_pairs']} "
                         f"verified, {db['inlier_matches']} inlier matches"),
            ("time", f"{s['seconds']:.1f} s"),
        ]
        if reference_model:
            rows.insert(1, ("outside the model", f"{s['outside_model']} images, "
                                                 f"{s['outside_model_pairs']} pairs ignored"))
        if s["no_image_file"]:
            rows.append(("no image file", f"{s['no_image_file']} (camera from the features' "
                                          "image size, no EXIF)"))
        summary_table(f"d2 colmap-import -> {database}", rows)
    return finish(result, None if as_json else "names or pairs")


def _reconstruct_rows(s: dict[str, Any], inputs: int | None = None) -> list[tuple[str, Any]]:
    """Summary rows of a model; ``inputs``: images given to d2 sfm (some may have failed)."""
    notes = []
    if inputs is not None and inputs != s["images"]:
        notes.append(f"{inputs - s['images']} failed before mapping")
    if s["connected_images"] != s["images"]:
        notes.append(f"{s['connected_images']} with verified pairs")
    rows = [
        ("images registered", f"{s['registered']} / {inputs if inputs is not None else s['images']}"
                              + (f" ({', '.join(notes)})" if notes else "")),
        ("3D points", s["points3D"]),
        ("mean track length", f"{s['mean_track_length']:.2f}"),
        ("mean reprojection error", f"{s['mean_reprojection_error']:.3f} px"),
        ("intrinsics", s.get("intrinsics", "")),
    ]
    if s["num_models"] > 1:
        rows.append(("other models", ", ".join(
            f"{m['registered']} images in {m['path']}" for m in s["models"][1:])))
    return rows


def _report_unregistered(names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
        err_console.print(f"[yellow]{len(names)} images not in the model:[/] {shown}",
                          highlight=False, soft_wrap=True)


@main.command("reconstruct")
@click.argument("database", type=click.Path(path_type=str))
@click.option("--out", "-o", default="sparse", show_default=True,
              help="Model folder: the largest model here, others in OUT/models/<k>/.")
@click.option("--image-dir", type=click.Path(), help="Images, to colour the points (optional).")
@mapping_options
@click.option("--reference-model", type=click.Path(),
              help="Keep this model's poses and only triangulate points (database made by "
                   "colmap-import --reference-model).")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any pycolmap pipeline option, e.g. mapper.init_min_num_inliers=50.")
@verbose_option
@quiet_option
@json_option
@command
def reconstruct_cmd(database, out, image_dir, mapper, intrinsics, threads, seed,
                    min_num_matches, reference_model, extra, verbose, quiet, as_json) -> int:
    """Reconstruct a sparse COLMAP model from DATABASE (pycolmap mapping)."""
    from ..reconstruct import reconstruct

    settings = map_settings(mapper, intrinsics, threads, seed, min_num_matches,
                            options=parse_pycolmap_options(extra))
    with progress(quiet or as_json) as show:
        result = reconstruct(
            database, out, settings=settings, image_dir=image_dir,
            reference_model=reference_model, verbose=verbose, progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 reconstruct ({s['mapper']}) -> {out}",
                      _reconstruct_rows(s) + [("time", f"{s['seconds']:.1f} s")])
        _report_unregistered(result.unregistered)
    return finish(result)


@main.command("sfm")
@click.argument("images", nargs=-1, type=click.Path(path_type=str))
@click.option("--image-list", type=click.Path(), help="File with one image name per line.")
@click.option("--image-root", type=click.Path(),
              help="Root the listed names are relative to [default: the list's folder].")
@click.option("--out", "-o", default="sfm", show_default=True,
              help="Work folder: feats.h5, pairs.txt, matches.h5, database.db, sparse/.")
@model_option()
@multiscale_options
@resize_options
@decode_option
@network_options
@max_pixels_option
@click.option("--pairs-from", type=click.Choice(["auto", "exhaustive", "sequential", "retrieval"]),
              default="auto", show_default=True,
              help="Which pairs to match: all, each image with the next --overlap, or the "
                   "--num-matched nearest by global descriptor; auto: exhaustive up to "
                   "100 images, retrieval above (the choice is printed).")
@click.option("--overlap", default=SEQUENTIAL_OVERLAP, show_default=True,
              help="sequential: images paired ahead.")
@click.option("--descriptors", type=click.Path(),
              help="retrieval: global descriptors from another tool (hloc layout: "
                   "<name>/global_descriptor); default: d2's own, in the features file.")
@click.option("--num-matched", default=NUM_MATCHED, show_default=True,
              help="retrieval: pairs per image.")
@click.option("--whiten", is_flag=True,
              help="retrieval: whiten the global descriptors (PCA learned from the images).")
@click.option("--pairs", "pairs_file", type=click.Path(),
              help="Match the pairs of this file instead (names as in the features).")
@click.option("--ratio", type=float, help="Lowe ratio test in matching, e.g. 0.95.")
@click.option("--refine", is_flag=True,
              help="Featuremetric refinement of the keypoints along the verified tracks before "
                   "mapping (feats-refined.h5, database-refined.db; the originals are kept).")
@camera_options
@mapping_options
@device_option
@precision_option
@verbose_option
@quiet_option
@json_option
@command
def sfm_cmd(images, image_list, image_root, out, model, multiscale, scales, max_edge,
            max_sum_edges, decode, preprocessing, no_relu, max_keypoints, max_pixels, pairs_from,
            overlap, descriptors, num_matched, whiten, pairs_file, ratio, refine, camera_mode,
            camera_model, camera_params, mapper, intrinsics, threads, seed, min_num_matches,
            device, precision, verbose, quiet, as_json) -> int:
    """Images -> COLMAP model: extract, pairs, match, colmap-import, reconstruct.

    Every step's output stays in --out and every step resumes: re-running after an
    interruption or with more images redoes only what is missing.
    """
    from ..match import MatchSettings
    from ..pairs import PairStrategy
    from ..refine import RefineConfig
    from ..sfm import SfmSettings, sfm

    settings = SfmSettings(
        extract=extract_settings(chosen_scales(scales, multiscale), max_edge, max_sum_edges,
                                 preprocessing, no_relu, max_keypoints, decode=decode,
                                 precision=precision),
        pairs=PairStrategy("file" if pairs_file else pairs_from, overlap=overlap,
                           descriptors=descriptors, num_matched=num_matched, file=pairs_file,
                           whiten=whiten),
        match=MatchSettings(ratio=ratio),
        database=import_settings(camera_mode, camera_model, camera_params),
        mapping=map_settings(mapper, intrinsics, threads, seed, min_num_matches),
        refine=RefineConfig(device=device) if refine else None)
    with progress(quiet or as_json) as show:
        result = sfm(images, out, settings, model=model, device=device, max_pixels=max_pixels,
                     image_list=image_list, image_root=image_root, verbose=verbose,
                     progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    elif not result.interrupted:
        rec = result.model
        summary_table(f"d2 sfm -> {out}", _reconstruct_rows(rec, s["steps"]["extract"]["images"]) + [
            ("model", f"{out}/sparse"),
            ("steps skipped (already done)", ", ".join(result.skipped) or "none"),
            ("time", f"{s['seconds']:.1f} s"),
        ])
        _report_unregistered(rec.get("unregistered", []))
    return finish(result, None if as_json else "images or pairs")


@main.command("export")
@click.argument("model_dir", type=click.Path())
@click.option("--out", "-o", required=True,
              help="Folder (txt, bin) or .ply file to write.")
@click.option("--format", "fmt", type=click.Choice(["txt", "bin", "ply"]), default="txt",
              show_default=True, help="COLMAP text or binary model files, or the 3D points as PLY.")
@json_option
@command
def export_cmd(model_dir, out, fmt, as_json) -> int:
    """Write the COLMAP model in MODEL_DIR as text/binary files or as a PLY point cloud."""
    from ..export import export_model

    s = export_model(model_dir, out, fmt).summary()
    return done_line(s, as_json, f"d2 export: {s['images']} images, {s['points3D']} points -> "
                                 f"{s['out']} ({fmt})")
