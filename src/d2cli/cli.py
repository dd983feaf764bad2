"""The ``d2`` command line: a thin Click layer over the Python API.

Each command parses options, calls one library function, shows progress and a
summary, and maps :class:`d2cli.errors.D2Error` to a one-line message and its exit
code (see ``errors.py``). No command prints a traceback for a user error.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_PARTIAL, D2Error

err_console = Console(stderr=True)
out_console = Console()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body with d2's error policy: one line on stderr, documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            code = fn(*args, **kwargs)
        except D2Error as e:
            err_console.print(f"[bold red]d2: error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print("d2: interrupted; finished work is saved, re-run to resume")
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("D2CLI_DEBUG"):
                raise
            err_console.print(
                f"[bold red]d2: internal error:[/] {e.__class__.__name__}: {e} "
                "(set D2CLI_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
            sys.exit(3)
        sys.exit(code or 0)

    return wrapper


@contextmanager
def progress_bar(label: str, unit: str, quiet: bool) -> Iterator[Progress]:
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, disable=quiet, transient=False) as p:
        p.unit = unit  # type: ignore[attr-defined]
        yield p


def _rate(p: Progress, task: int) -> str:
    t = p.tasks[task]
    speed = t.finished_speed or t.speed
    return f"{speed:.2f} {p.unit}/s" if speed else ""  # type: ignore[attr-defined]


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def summary_table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for k, v in rows:
        table.add_row(k, str(v))
    out_console.print(table)


def report_failures(failed: dict[str, str], what: str) -> None:
    if failed:
        err_console.print(f"[yellow]{len(failed)} {what} failed:[/]")
        for reason in failed.values():
            err_console.print(f"  {reason}", highlight=False, soft_wrap=True)


def _parse_scales(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected numbers like '0.5,1,2', got {text!r}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="d2")
def main() -> None:
    """D2-Net local features, matching and COLMAP reconstruction.

    \b
    Exit codes: 0 ok, 1 some items failed (the rest were done),
    2 usage or set-up error, 3 internal error, 130 interrupted (re-run to resume).
    """


class _ShardedRun:
    def __init__(self, shard: Any, device: str, dist: Any = None) -> None:
        self.shard, self.device, self.dist = shard, device, dist
        self.rank = dist.rank if dist else 0


@contextmanager
def sharded(out: str, shard_text: str | None, device: str) -> Iterator[_ShardedRun]:
    """--shard i/n, or one shard per rank under torchrun with rank 0 merging at the end."""
    from .shard import DistributedRun, merge, parse_shard, torchrun_shard

    shard = parse_shard(shard_text)
    if shard is not None or torchrun_shard() is None:
        yield _ShardedRun(shard, device)
        return
    dist = DistributedRun(device)
    run = _ShardedRun(torchrun_shard(), dist.device, dist)
    try:
        yield run
        dist.barrier()
        if dist.rank == 0:
            parts = [type(run.shard)(i, run.shard.count).part_path(out)
                     for i in range(run.shard.count)]
            merge(parts, out)
            for p in parts:
                p.unlink()
        dist.barrier()
    finally:
        dist.close()


# --------------------------------------------------------------------------- extract
@main.command("extract")
@click.argument("images", nargs=-1, type=click.Path(path_type=str))
@click.option("--out", "-o", default="feats.h5", show_default=True, help="Features file (HDF5).")
@click.option("--image-list", type=click.Path(), help="File with one image name per line.")
@click.option("--image-root", type=click.Path(), help="Root the names are relative to.")
@click.option("--model", "-m", default=None, help="Model name or .pth path [default: built-in].")
@click.option("--multiscale", is_flag=True, help="Scales 0.5, 1, 2 (the paper's D2-Net MS).")
@click.option("--scales", help="Any pyramid, e.g. '0.5,1'. Overrides --multiscale.")
@click.option("--max-edge", default=1600, show_default=True)
@click.option("--max-sum-edges", default=2800, show_default=True)
@click.option("--preprocessing", type=click.Choice(["caffe", "torch", "none"]), default="caffe",
              show_default=True)
@click.option("--no-relu", is_flag=True, help="No ReLU after conv4_3.")
@click.option("--max-keypoints", type=int, help="Keep the K highest scores per image.")
@click.option("--descriptor-dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--batch-size", default=1, show_default=True,
              help="Images of equal size per network call.")
@click.option("--workers", default=2, show_default=True, help="Decoding threads.")
@click.option("--commit-every", default=16, show_default=True,
              help="Save finished images to disk every N images (and every 30 s).")
@click.option("--shard", help="Extract only shard i/n (0-based) into OUT's part file; "
                              "combine parts with d2 merge. Automatic under torchrun.")
@click.option("--overwrite", is_flag=True, help="Redo images already in the output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def extract_cmd(images, out, image_list, image_root, model, multiscale, scales, max_edge,
                max_sum_edges, preprocessing, no_relu, max_keypoints, descriptor_dtype, device,
                batch_size, workers, commit_every, shard, overwrite, quiet, as_json) -> int:
    """Extract D2-Net features of IMAGES (files and/or folders) into an HDF5 file.

    Re-running skips images already in the file; a killed run resumes.
    """
    from .extract import MULTI_SCALE, SINGLE_SCALE, ExtractSettings, extract

    chosen = _parse_scales(scales) or (MULTI_SCALE if multiscale else SINGLE_SCALE)
    settings = ExtractSettings(
        scales=chosen, max_edge=max_edge, max_sum_edges=max_sum_edges,
        preprocessing=preprocessing, use_relu=not no_relu, max_keypoints=max_keypoints,
        descriptor_dtype=descriptor_dtype)
    with sharded(out, shard, device) as run, \
            progress_bar("extract", "img", quiet or as_json or run.rank > 0) as p:
        task = p.add_task("extract", total=None, rate="")

        def on_start(total: int, todo: int) -> None:
            p.update(task, total=todo)

        def on_image(name: str, n: int | None, error: str | None) -> None:
            if error:
                p.console.print(f"[yellow]skipped[/] {error}", highlight=False, soft_wrap=True)
            p.update(task, advance=1, rate=_rate(p, task))

        result = extract(
            images, out, model=model, settings=settings, image_list=image_list,
            image_root=image_root, device=run.device, batch_size=batch_size, overwrite=overwrite,
            workers=workers, commit_every=commit_every, shard=run.shard, progress=on_image,
            on_start=on_start)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 extract -> {out}", [
            ("model", s["model"]), ("images", s["images"]), ("extracted", s["extracted"]),
            ("already done", s["skipped"]), ("failed", len(s["failed"])),
            ("keypoints / image", f"{s['keypoints_mean']:.0f} [{s['keypoints_min']}, "
                                  f"{s['keypoints_max']}]"),
            ("time", f"{s['seconds']:.1f} s ({s['images_per_second']:.2f} img/s)"),
        ])
        report_failures(result.failed, "images")
    if result.interrupted:
        raise KeyboardInterrupt
    return EXIT_PARTIAL if result.failed else 0


# --------------------------------------------------------------------------- merge
@main.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "-o", required=True, help="Merged features or matches file.")
@click.option("--remove-parts", is_flag=True, help="Delete the part files once merged.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def merge_cmd(parts, out, remove_parts, as_json) -> int:
    """Combine part files (from --shard runs) into one features or matches file.

    Parts made with different models or settings are refused, and so is a name present
    twice with different data. Re-running is safe (the merge is atomic).
    """
    from pathlib import Path

    from .shard import merge

    result = merge(parts, out)
    if remove_parts:
        for p in result.parts:
            if p.resolve() != Path(out).resolve():
                p.unlink()
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 merge -> {out}", [("parts", len(s["parts"])), ("entries", s["entries"]),
                                            ("identical duplicates", s["identical_duplicates"])])
    return 0


# --------------------------------------------------------------------------- pairs
@main.group("pairs")
def pairs_group() -> None:
    """Write a pairs file (one 'name0 name1' per line) for d2 match."""


def _pairs_common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Machine-readable summary on stdout.")(fn)
    return click.option("--out", "-o", default="pairs.txt", show_default=True,
                        help="Pairs file to write.")(fn)


def _image_names_source(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--image-list", type=click.Path(),
                      help="Take the names from this file (one per line) instead.")(fn)
    return click.option("--features", "-f", default="feats.h5", show_default=True,
                        help="Features file whose image names are paired.")(fn)


def _pairs_done(result: Any, as_json: bool) -> int:
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        out_console.print(f"d2 pairs {s['method']}: {s['pairs']} pairs of {s['images']} images "
                          f"-> {s['out']}", highlight=False, soft_wrap=True)
    return 0


@pairs_group.command("exhaustive")
@_image_names_source
@click.option("--query-prefix", help="Queries: the names starting with this.")
@click.option("--query-list", type=click.Path(), help="Queries: the names in this file.")
@click.option("--ref-prefix", help="References: the names starting with this.")
@click.option("--ref-list", type=click.Path(), help="References: the names in this file.")
@_pairs_common
@command
def pairs_exhaustive_cmd(features, image_list, query_prefix, query_list, ref_prefix, ref_list,
                         out, as_json) -> int:
    """Every pair of images; or every query with every reference.

    With only queries (or only references) chosen, the other side is all other images.
    """
    from .pairs import image_names, pairs_exhaustive, save_pairs, select_names

    names = image_names(features, image_list)
    queries = select_names(names, query_prefix, query_list, "query")
    refs = select_names(names, ref_prefix, ref_list, "ref")
    return _pairs_done(save_pairs(pairs_exhaustive(names, queries, refs), out, "exhaustive"),
                       as_json)


@pairs_group.command("sequential")
@_image_names_source
@click.option("--overlap", "-k", default=5, show_default=True,
              help="Pair each image with the next K in name order.")
@_pairs_common
@command
def pairs_sequential_cmd(features, image_list, overlap, out, as_json) -> int:
    """Each image with the next K images in name order (video, ordered captures)."""
    from .pairs import image_names, pairs_sequential, save_pairs

    names = image_names(features, image_list)
    return _pairs_done(save_pairs(pairs_sequential(names, overlap), out, "sequential"), as_json)


@pairs_group.command("from-model")
@click.argument("model_dir", type=click.Path())
@click.option("--num-matched", "-k", default=20, show_default=True,
              help="Pair each image with the K images sharing most 3D points.")
@_pairs_common
@command
def pairs_from_model_cmd(model_dir, num_matched, out, as_json) -> int:
    """Covisibility pairs from an existing COLMAP model in MODEL_DIR."""
    from .pairs import pairs_from_model, save_pairs

    return _pairs_done(save_pairs(pairs_from_model(model_dir, num_matched), out, "from-model"),
                       as_json)


@pairs_group.command("from-poses")
@click.argument("model_dir", type=click.Path())
@click.option("--num-matched", "-k", default=20, show_default=True,
              help="Pair each image with the K nearest camera centres.")
@click.option("--max-angle", default=30.0, show_default=True,
              help="Only cameras whose viewing directions differ by less (degrees).")
@click.option("--any-angle", is_flag=True, help="No viewing-direction limit.")
@_pairs_common
@command
def pairs_from_poses_cmd(model_dir, num_matched, max_angle, any_angle, out, as_json) -> int:
    """Nearest-camera pairs from the poses of a COLMAP model in MODEL_DIR (as hloc)."""
    from .pairs import pairs_from_poses, save_pairs

    pairs = pairs_from_poses(model_dir, num_matched, None if any_angle else max_angle)
    return _pairs_done(save_pairs(pairs, out, "from-poses"), as_json)


# --------------------------------------------------------------------------- match
@main.command("match")
@click.option("--pairs", "-p", "pairs_file", required=True, type=click.Path(),
              help="Pairs file (one 'name0 name1' per line).")
@click.option("--features", "-f", default="feats.h5", show_default=True,
              help="Features file (of name0, and of name1 without --features-ref).")
@click.option("--features-ref", type=click.Path(), help="Features file of name1.")
@click.option("--out", "-o", default="matches.h5", show_default=True, help="Matches file (HDF5).")
@click.option("--ratio", type=float, help="Lowe ratio test on descriptor distances, e.g. 0.95.")
@click.option("--max-distance", type=float,
              help="Largest descriptor distance of a match (unit vectors: 0 to 2).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--cache-mb", default=2048, show_default=True,
              help="Memory for descriptors kept between pairs.")
@click.option("--overwrite", is_flag=True, help="Redo pairs already in the output.")
@click.option("--force", is_flag=True,
              help="Match features made with different models or settings anyway.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def match_cmd(pairs_file, features, features_ref, out, ratio, max_distance, device, cache_mb,
              overwrite, force, quiet, as_json) -> int:
    """Mutual nearest neighbours of the descriptors of every pair, into an hloc matches file.

    Re-running skips pairs already in the file; a killed run resumes.
    """
    from .match import MatchSettings, match

    settings = MatchSettings(ratio=ratio, max_distance=max_distance)
    if cache_mb < 0:
        raise click.BadParameter("must be >= 0", param_hint="--cache-mb")
    with progress_bar("match", "pairs", quiet or as_json) as p:
        task = p.add_task("match", total=None, rate="", visible=False)

        def on_start(total: int, todo: int) -> None:
            p.update(task, total=todo, visible=True)  # not before: set-up errors show no bar

        def on_pair(pair: tuple[str, str], n: int | None, error: str | None) -> None:
            if error:
                p.console.print(f"[yellow]failed[/] {error}", highlight=False, soft_wrap=True)
            p.update(task, advance=1, rate=_rate(p, task))

        result = match(
            pairs_file, features, out, features_ref=features_ref, settings=settings,
            device=device, overwrite=overwrite, force=force, cache_bytes=cache_mb << 20,
            progress=on_pair, on_start=on_start)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 match -> {out}", [
            ("pairs", s["pairs"]), ("matched", s["matched"]), ("already done", s["skipped"]),
            ("failed", len(s["failed"])),
            ("matches / pair", f"{s['matches_mean']:.0f} [{s['matches_min']}, "
                               f"{s['matches_max']}]"),
            ("descriptor reads", f"{s['descriptor_reads']} ({s['images']} images)"),
            ("device", s["device"]),
            ("time", f"{s['seconds']:.1f} s ({s['pairs_per_second']:.2f} pairs/s)"),
        ])
        report_failures(result.failed, "pairs")
    if result.interrupted:
        raise KeyboardInterrupt
    return EXIT_PARTIAL if result.failed else 0


if __name__ == "__main__":
    main()
