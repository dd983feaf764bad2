"""``d2 extract`` and ``d2 merge``."""

from __future__ import annotations

import click

from ..retrieval import DEFAULT_METHOD, GLOBAL_METHODS
from . import main
from .common import (
    all_done,
    chosen_scales,
    command,
    decode_option,
    device_option,
    extract_settings,
    finish,
    json_option,
    max_pixels_option,
    model_option,
    multiscale_options,
    network_options,
    precision_option,
    print_json,
    progress,
    quiet_option,
    resize_options,
    summary_table,
)


@main.command("extract")
@click.argument("images", nargs=-1, type=click.Path(path_type=str))
@click.option("--out", "-o", default="feats.h5", show_default=True, help="Features file (HDF5).")
@click.option("--image-list", type=click.Path(), help="File with one image name per line.")
@click.option("--image-root", type=click.Path(), help="Root the names are relative to.")
@model_option()
@multiscale_options
@resize_options
@decode_option
@network_options
@click.option("--descriptor-dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True)
@device_option
@click.option("--batch-size", default=1, show_default=True,
              help="Images of equal size per network call.")
@precision_option
@click.option("--memory-cap", type=float, help="GB for one network call; larger batches split.")
@click.option("--workers", default=2, show_default=True, help="Decoding threads.")
@max_pixels_option
@click.option("--commit-every", default=16, show_default=True,
              help="Save finished images to disk every N images (and every 30 s).")
@click.option("--shard", help="Extract only shard i/n (0-based) into OUT's part file; "
                              "combine parts with d2 merge. Automatic under torchrun.")
@click.option("--overwrite", is_flag=True, help="Redo images already in the output.")
@quiet_option
@json_option
@command
def extract_cmd(images, out, image_list, image_root, model, multiscale, scales, max_edge,
                max_sum_edges, decode, preprocessing, no_relu, max_keypoints, descriptor_dtype, device,
                batch_size, precision, memory_cap, workers, max_pixels, commit_every, shard, overwrite, quiet,
                as_json) -> int:
    """Extract D2-Net features of IMAGES (files and/or folders) into an HDF5 file.

    Re-running skips images already in the file; a killed run resumes.
    """
    from ..extract import extract
    from ..shard import sharded

    settings = extract_settings(chosen_scales(scales, multiscale), max_edge, max_sum_edges,
                                preprocessing, no_relu, max_keypoints,
                                descriptor_dtype=descriptor_dtype, precision=precision,
                                decode=decode)
    with sharded(out, shard, device) as run, progress(quiet or as_json or run.rank > 0) as show:
        result = extract(
            images, out, model=model, settings=settings, image_list=image_list,
            image_root=image_root, device=run.device, batch_size=batch_size, overwrite=overwrite,
            workers=workers, commit_every=commit_every, shard=run.shard,
            memory_cap_gb=memory_cap, max_pixels=max_pixels, progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        if all_done("extract", s["skipped"], s["images"], "images already extracted", out):
            return finish(result)
        summary_table(f"d2 extract -> {out}", [
            ("model", s["model"]), ("precision", f"{s['precision']} ({s['precision_note']})"),
            ("images", s["images"]), ("extracted", s["extracted"]),
            ("already done", s["skipped"]), ("failed", len(s["failed"])),
            ("keypoints / image", f"{s['keypoints_mean']:.0f} [{s['keypoints_min']}, "
                                  f"{s['keypoints_max']}]" if s["extracted"] else "-"),
            ("time", f"{s['seconds']:.1f} s ({s['images_per_second']:.2f} img/s)"),
        ])
    return finish(result, None if as_json else "images")


@main.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "-o", required=True, help="Merged features or matches file.")
@click.option("--remove-parts", is_flag=True, help="Delete the part files once merged.")
@json_option
@command
def merge_cmd(parts, out, remove_parts, as_json) -> int:
    """Combine part files (from --shard runs) into one features or matches file.

    Parts made with different models or settings are refused, and so is a name present
    twice with different data. Re-running is safe (the merge is atomic).
    """
    from ..shard import merge

    result = merge(parts, out, remove_parts=remove_parts)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 merge -> {out}", [("parts", len(s["parts"])), ("entries", s["entries"]),
                                            ("identical duplicates", s["identical_duplicates"])])
    return 0


@main.command("global")
@click.argument("features", type=click.Path(path_type=str))
@click.option("--method", type=click.Choice(GLOBAL_METHODS), default=DEFAULT_METHOD,
              show_default=True, help="How the local descriptors are pooled.")
@click.option("--overwrite", is_flag=True, help="Recompute the images that have one already.")
@quiet_option
@json_option
@command
def global_cmd(features, method, overwrite, quiet, as_json) -> int:
    """Add a global descriptor (for retrieval) to every image of FEATURES.

    Pooled from the local descriptors already in the file: no images, no network.
    d2 extract writes them itself; this adds them to files made without them, or
    with another --method. Then: d2 pairs from-retrieval --features FEATURES -k 20.
    """
    from ..retrieval import add_global_descriptors

    with progress(quiet or as_json) as show:
        r = add_global_descriptors(features, method, overwrite=overwrite, progress=show)
    s = r.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 global -> {features}", [
            ("method", method), ("written", s["written"]), ("already there", s["already"]),
            ("without keypoints (zero vector)", len(s["empty"])), ("time", f"{s['seconds']:.1f} s")])
    return finish(r, "images")
