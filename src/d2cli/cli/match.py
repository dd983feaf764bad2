"""``d2 match``."""

from __future__ import annotations

import click

from ..settings import MatchSettings
from . import main
from .common import (
    all_done,
    command,
    device_option,
    finish,
    json_option,
    print_json,
    progress,
    quiet_option,
    summary_table,
)


@main.command("match")
@click.option("--pairs", "-p", "pairs_file", required=True, type=click.Path(),
              help="Pairs file (one 'name0 name1' per line).")
@click.option("--features", "-f", default="feats.h5", show_default=True,
              help="Features file (of name0, and of name1 without --features-ref).")
@click.option("--features-ref", type=click.Path(), help="Features file of name1.")
@click.option("--out", "-o", default="matches.h5", show_default=True, help="Matches file (HDF5).")
@click.option("--matcher", default=MatchSettings.matcher, show_default=True,
              help="Descriptor matcher: a name in d2cli.matchers.MATCHERS (mnn: mutual nearest "
                   "neighbours; a plugin module adds its own).")
@click.option("--ratio", type=float, help="Lowe ratio test on descriptor distances, e.g. 0.95.")
@click.option("--max-distance", type=float,
              help="Largest descriptor distance of a match (unit vectors: 0 to 2).")
@device_option
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True,
              help="Of the similarity products. auto: bf16 for pairs of 2M+ similarities on "
                   "CPUs with native bf16, fp32 elsewhere (faster on GPUs); the matches are "
                   "fp32's either way (near-ties re-scored in fp32).")
@click.option("--cache-mb", default=2048, show_default=True, type=click.IntRange(min=0),
              help="Memory for descriptors kept between pairs.")
@click.option("--commit-every", default=32, show_default=True, type=click.IntRange(min=1),
              help="Pairs per crash-safe commit (at most this many are redone after a kill).")
@click.option("--shard", help="Match only shard i/n (0-based) of the pairs into OUT's part file; "
                              "combine parts with d2 merge. Automatic under torchrun.")
@click.option("--overwrite", is_flag=True, help="Redo pairs already in the output.")
@click.option("--force", is_flag=True,
              help="Match features made with different models or settings anyway.")
@quiet_option
@json_option
@command
def match_cmd(pairs_file, features, features_ref, out, matcher, ratio, max_distance, device,
              precision,
              cache_mb, commit_every, shard, overwrite, force, quiet, as_json) -> int:
    """Mutual nearest neighbours of the descriptors of every pair, into an hloc matches file.

    Re-running skips pairs already in the file; a killed run resumes.
    """
    from ..match import match
    from ..shard import sharded

    settings = MatchSettings(matcher=matcher, ratio=ratio, max_distance=max_distance)
    with sharded(out, shard, device) as run, progress(quiet or as_json or run.rank > 0) as show:
        result = match(
            pairs_file, features, out, features_ref=features_ref, settings=settings,
            device=run.device, precision=precision, overwrite=overwrite, force=force,
            cache_bytes=cache_mb << 20, commit_every=commit_every, shard=run.shard, progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        if all_done("match", s["skipped"], s["pairs"], "pairs already matched", out):
            return finish(result)
        summary_table(f"d2 match -> {out}", [
            ("pairs", s["pairs"]), ("matched", s["matched"]), ("already done", s["skipped"]),
            ("failed", len(s["failed"])),
            ("matches / pair", f"{s['matches_mean']:.0f} [{s['matches_min']}, "
                               f"{s['matches_max']}]" if s["matched"] else "-"),
            ("descriptor reads", f"{s['descriptor_reads']} ({s['images']} images)"),
            ("device", f"{s['device']} ({s['precision']} products)"),
            ("time", f"{s['seconds']:.1f} s ({s['pairs_per_second']:.2f} pairs/s)"),
        ])
    return finish(result, None if as_json else "pairs")
