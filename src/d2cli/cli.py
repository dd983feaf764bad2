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
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_PARTIAL, D2Error, UsageError

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


def exit_status(result: Any) -> int:
    """A batch command's exit code: re-raise an interruption (130), 1 if items failed."""
    if result.interrupted:
        raise KeyboardInterrupt
    return EXIT_PARTIAL if result.failed else 0


def _parse_scales(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"--scales expects numbers like '0.5,1,2', got {text!r}") from None


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
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Trunk precision (detection stays fp32).")
@click.option("--memory-cap", type=float, help="GB for one network call; larger batches split.")
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
                batch_size, precision, memory_cap, workers, commit_every, shard, overwrite, quiet,
                as_json) -> int:
    """Extract D2-Net features of IMAGES (files and/or folders) into an HDF5 file.

    Re-running skips images already in the file; a killed run resumes.
    """
    from .extract import MULTI_SCALE, SINGLE_SCALE, ExtractSettings, extract

    chosen = _parse_scales(scales) or (MULTI_SCALE if multiscale else SINGLE_SCALE)
    settings = ExtractSettings(
        scales=chosen, max_edge=max_edge, max_sum_edges=max_sum_edges,
        preprocessing=preprocessing, use_relu=not no_relu, max_keypoints=max_keypoints,
        descriptor_dtype=descriptor_dtype, precision=precision)
    with sharded(out, shard, device) as run, \
            progress_bar("extract", "img", quiet or as_json or run.rank > 0) as p:
        task = p.add_task("extract", total=None, rate="", visible=False)

        def on_start(total: int, todo: int) -> None:
            p.update(task, total=todo, visible=True)  # not before: set-up errors show no bar

        def on_image(name: str, n: int | None, error: str | None) -> None:
            if error:
                p.console.print(f"[yellow]skipped[/] {error}", highlight=False, soft_wrap=True)
            p.update(task, advance=1, rate=_rate(p, task))

        result = extract(
            images, out, model=model, settings=settings, image_list=image_list,
            image_root=image_root, device=run.device, batch_size=batch_size, overwrite=overwrite,
            workers=workers, commit_every=commit_every, shard=run.shard,
            memory_cap_gb=memory_cap, progress=on_image,
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
    return exit_status(result)


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


@pairs_group.command("from-retrieval")
@click.option("--descriptors", "-d", required=True, type=click.Path(),
              help="Global descriptors (hloc layout: <name>/global_descriptor), e.g. NetVLAD.")
@click.option("--num-matched", "-k", default=20, show_default=True,
              help="Pair each query with its K most similar references.")
@click.option("--query-prefix", help="Queries: the names starting with this.")
@click.option("--query-list", type=click.Path(), help="Queries: the names in this file.")
@click.option("--ref-prefix", help="References: the names starting with this.")
@click.option("--ref-list", type=click.Path(), help="References: the names in this file.")
@click.option("--min-score", default=0.0, show_default=True,
              help="Do not pair below this cosine similarity.")
@_pairs_common
@command
def pairs_from_retrieval_cmd(descriptors, num_matched, query_prefix, query_list, ref_prefix,
                             ref_list, min_score, out, as_json) -> int:
    """Top-K retrieval pairs from global descriptors (as hloc's pairs_from_retrieval).

    Without --query-*/--ref-* every image is paired with its K nearest other images.
    """
    from .pairs import pairs_from_retrieval, read_global_descriptors, save_pairs, select_names

    names, desc = read_global_descriptors(descriptors)
    queries = select_names(names, query_prefix, query_list, "query")
    refs = select_names(names, ref_prefix, ref_list, "ref")
    pairs = pairs_from_retrieval(names, desc, num_matched, queries, refs, min_score)
    return _pairs_done(save_pairs(pairs, out, "from-retrieval"), as_json)


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
@click.option("--cache-mb", default=2048, show_default=True, type=click.IntRange(min=0),
              help="Memory for descriptors kept between pairs.")
@click.option("--commit-every", default=32, show_default=True, type=click.IntRange(min=1),
              help="Pairs per crash-safe commit (at most this many are redone after a kill).")
@click.option("--shard", help="Match only shard i/n (0-based) of the pairs into OUT's part file; "
                              "combine parts with d2 merge. Automatic under torchrun.")
@click.option("--overwrite", is_flag=True, help="Redo pairs already in the output.")
@click.option("--force", is_flag=True,
              help="Match features made with different models or settings anyway.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def match_cmd(pairs_file, features, features_ref, out, ratio, max_distance, device, cache_mb,
              commit_every, shard, overwrite, force, quiet, as_json) -> int:
    """Mutual nearest neighbours of the descriptors of every pair, into an hloc matches file.

    Re-running skips pairs already in the file; a killed run resumes.
    """
    from .match import MatchSettings, match

    settings = MatchSettings(ratio=ratio, max_distance=max_distance)
    with sharded(out, shard, device) as run, \
            progress_bar("match", "pairs", quiet or as_json or run.rank > 0) as p:
        task = p.add_task("match", total=None, rate="", visible=False)

        def on_start(total: int, todo: int) -> None:
            p.update(task, total=todo, visible=True)  # not before: set-up errors show no bar

        def on_pair(pair: tuple[str, str], n: int | None, error: str | None) -> None:
            if error:
                p.console.print(f"[yellow]failed[/] {error}", highlight=False, soft_wrap=True)
            p.update(task, advance=1, rate=_rate(p, task))

        result = match(
            pairs_file, features, out, features_ref=features_ref, settings=settings,
            device=run.device, overwrite=overwrite, force=force, cache_bytes=cache_mb << 20,
            commit_every=commit_every, shard=run.shard, progress=on_pair, on_start=on_start)
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
    return exit_status(result)


# --------------------------------------------------------------------------- weights
@main.group("weights")
def weights_group() -> None:
    """List, fetch and check D2-Net weights (cache: $D2CLI_HOME/weights)."""


@weights_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list on stdout.")
@command
def weights_list_cmd(as_json) -> int:
    """Every known model and every file in the cache, and whether it is available offline."""
    from .weights import cache_dir, list_models

    entries = list_models()
    if as_json:
        print_json({"cache": str(cache_dir()), "models": [e.as_dict() for e in entries]})
        return 0
    table = Table(title=f"d2 weights (cache: {cache_dir()})", title_justify="left")
    for col in ("name", "kind", "available", "size", "sha256", "licence", "source"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if e.available:
            avail = "yes" if e.recorded_sha256 in (None, e.sha256) else "yes (changed since fetch)"
        elif e.partial_bytes is not None:
            avail = f"no (partial: {e.partial_bytes / 1e6:.1f} MB)"
        else:
            avail = "no"
        table.add_row(e.name, e.kind, avail, f"{e.size / 1e6:.1f} MB" if e.size else "-",
                      e.sha256[:16] + "…" if e.sha256 else "-", e.licence, e.source)
    out_console.print(table)
    if not all(e.available for e in entries):
        out_console.print("Fetch a missing model with `d2 weights fetch NAME`; --json gives "
                          "full sha256 values.", highlight=False)
    return 0


@weights_group.command("fetch")
@click.argument("name")
@click.option("--url", help="Download from this URL (any NAME then works). "
                            "Default: $D2CLI_WEIGHTS_URL/NAME.pth, else the official host.")
@click.option("--sha256", "expected_sha256", help="Refuse the file unless it has this sha256.")
@click.option("--force", is_flag=True, help="Download again even if the cache has it.")
@click.option("--retries", default=3, show_default=True,
              help="Resume attempts within this run after a broken transfer.")
@click.option("--timeout", default=30.0, show_default=True,
              help="Seconds to wait for the server before a retry.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def weights_fetch_cmd(name, url, expected_sha256, force, retries, timeout, quiet,
                      as_json) -> int:
    """Download NAME (d2_ots, d2_tf, d2_tf_no_phototourism) into the cache.

    The file appears in the cache only once complete and verified as a D2-Net
    checkpoint; an interrupted download resumes where it stopped when run again.
    """
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from .weights.fetch import fetch_model

    columns = [TextColumn("[bold]fetch {task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, disable=quiet or as_json) as p:
        task = p.add_task(name, total=None, visible=False)

        def on_bytes(done: int, total: int | None) -> None:
            p.update(task, completed=done, total=total, visible=True)

        res = fetch_model(name, url, expected_sha256=expected_sha256, force=force,
                          retries=retries, timeout=timeout, progress=on_bytes)
    s = res.summary()
    if as_json:
        print_json(s)
    elif not res.downloaded:
        out_console.print(f"{name} is already in the cache: {res.path}\nsha256 {res.sha256} "
                          "(--force downloads it again)", highlight=False, soft_wrap=True)
    else:
        rows = [("file", s["path"]), ("from", s["url"]), ("size", f"{s['size']:,} bytes"),
                ("sha256", s["sha256"]), ("time", f"{s['seconds']:.1f} s")]
        if res.resumed_from:
            rows.append(("resumed at", f"{res.resumed_from:,} bytes"))
        summary_table(f"d2 weights fetch {name}: verified", rows)
    return 0


@weights_group.command("check")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@command
def weights_check_cmd(path, as_json) -> int:
    """Validate a checkpoint PATH (or model name): layout, shapes, finite values."""
    from .weights import check_weights

    res = check_weights(path)
    s = res.summary()
    if as_json:
        print_json(s)
        return 0
    record = {"matches": "matches the fetch record", "differs": "DIFFERS from the fetch record",
              None: "no fetch record"}[res.record]
    summary_table("d2 weights check: a valid D2-Net checkpoint", [
        ("file", s["path"]), ("size", f"{s['size']:,} bytes"), ("sha256", s["sha256"]),
        ("layout", s["layout"]), ("stored as", ", ".join(s["dtypes"])),
        ("tensors", s["tensors"]), ("parameters", f"{s['parameters']:,}"),
        ("extra keys", ", ".join(s["extra_keys"]) or "none"),
        ("known as", ", ".join(s["known_as"]) or "-"), ("record", record),
    ])
    table = Table(show_header=True, title_justify="left")
    for col in ("layer", "shape", "weight mean", "weight std"):
        table.add_column(col, justify="right")
    for layer in s["layers"]:
        table.add_row(layer["layer"], "x".join(map(str, layer["shape"])),
                      f"{layer['weight_mean']:+.2e}", f"{layer['weight_std']:.2e}")
    out_console.print(table)
    return 0


# --------------------------------------------------------------------------- eval
@main.group("eval")
def eval_group() -> None:
    """Benchmarks: HPatches mean matching accuracy, relative-pose AUC."""


def _eval_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--model", "-m", "models", multiple=True,
                     help="Model name or .pth path; repeat for several [default: built-in]."),
        click.option("--fetch", is_flag=True, help="Download missing official models first."),
        click.option("--multiscale", is_flag=True, help="Scales 0.5, 1, 2 (D2-Net MS)."),
        click.option("--both-scales", is_flag=True,
                     help="Each model single-scale and multiscale (two curves)."),
        click.option("--scales", help="Any pyramid, e.g. '0.5,1'. Overrides --multiscale."),
        click.option("--max-edge", default=1600, show_default=True,
                     help="Also COLMAP SIFT's max image size."),
        click.option("--max-sum-edges", default=2800, show_default=True),
        click.option("--preprocessing", type=click.Choice(["caffe", "torch", "none"]),
                     default="caffe", show_default=True),
        click.option("--no-relu", is_flag=True, help="No ReLU after conv4_3."),
        click.option("--max-keypoints", type=int, help="Keep the K highest scores per image."),
        click.option("--precision", "precisions", multiple=True,
                     type=click.Choice(["fp32", "tf32", "bf16", "fp16"]),
                     help="Trunk precision; repeat to compare (one curve each) [default: fp32]."),
        click.option("--baseline", type=click.Choice(["sift"]), multiple=True,
                     help="Add COLMAP SIFT (pycolmap, CPU) on the same images."),
        click.option("--sift-max-features", default=8192, show_default=True),
        click.option("--work-dir", type=click.Path(),
                     help="Cache of features and matches [default: $D2CLI_HOME/eval/...]."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda, cuda:N."),
        click.option("--no-plot", is_flag=True, help="Do not write the PNG."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
        click.option("--json", "as_json", is_flag=True, help="Full results as JSON on stdout."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _eval_methods(models, fetch, multiscale, both_scales, scales, max_edge, max_sum_edges,
                  preprocessing, no_relu, max_keypoints, precisions, baseline,
                  sift_max_features, quiet) -> list[Any]:
    from .eval.methods import SiftSettings, d2_method, sift_method
    from .extract import MULTI_SCALE, SINGLE_SCALE, ExtractSettings
    from .weights.fetch import ensure_model

    if both_scales and (multiscale or scales):
        raise click.BadParameter("--both-scales chooses the scales itself",
                                 param_hint="--both-scales")
    chosen = _parse_scales(scales) or (MULTI_SCALE if multiscale else SINGLE_SCALE)
    scale_sets = (SINGLE_SCALE, MULTI_SCALE) if both_scales else (chosen,)
    methods = []
    for model in models or (None,):
        if fetch:
            with _download_bar(str(model), quiet) as on_bytes:
                ensure_model(model, fetch=True, progress=on_bytes)
        for sc in scale_sets:
            for precision in precisions or ("fp32",):
                # fp32 descriptors: the protocol matches in fp32, fp16 would flip near-ties
                settings = ExtractSettings(
                    scales=sc, max_edge=max_edge, max_sum_edges=max_sum_edges,
                    preprocessing=preprocessing, use_relu=not no_relu,
                    max_keypoints=max_keypoints, descriptor_dtype="float32",
                    precision=precision)
                methods.append(d2_method(model, settings))
    if "sift" in baseline:
        methods.append(sift_method(SiftSettings(max_image_size=max_edge,
                                                max_num_features=sift_max_features)))
    return methods


@contextmanager
def _download_bar(name: str, quiet: bool) -> Iterator[Callable[[int, int | None], None]]:
    from rich.progress import DownloadColumn, TransferSpeedColumn

    columns = [TextColumn("[bold]fetch {task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, disable=quiet) as p:
        task = p.add_task(name, total=None, visible=False)

        def on_bytes(done: int, total: int | None) -> None:
            p.update(task, completed=done, total=total, visible=True)

        yield on_bytes


@contextmanager
def _stage_bars(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """One bar per stage ('extract <method>', 'match <method>')."""
    with progress_bar("eval", "items", quiet) as p:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks and total == 0:
                return  # all cached: no bar
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=total, rate="")
            p.update(tasks[stage], completed=done, total=total, rate=_rate(p, tasks[stage]))

        yield on_progress


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.1f}" if pct else f"{v:.0f}"


@eval_group.command("hpatches")
@click.argument("root", type=click.Path(path_type=str))
@click.option("--all-sequences", is_flag=True,
              help="Keep the 8 high-resolution sequences the D2-Net protocol removes.")
@click.option("--plot", default="hpatches-mma.png", show_default=True,
              help="PNG of MMA vs threshold.")
@_eval_options
@command
def eval_hpatches_cmd(root, all_sequences, plot, models, fetch, multiscale, both_scales, scales,
                      max_edge, max_sum_edges, preprocessing, no_relu, max_keypoints, precisions,
                      baseline, sift_max_features, work_dir, device, no_plot, quiet,
                      as_json) -> int:
    """HPatches-sequences mean matching accuracy (the D2-Net paper's protocol) on ROOT.

    ROOT is laid out like hpatches-sequences-release: <seq>/1.ppm .. 6.ppm and
    H_1_2 .. H_1_6. MMA at 1..10 px, overall and per i_/v_ sequences.
    """
    from .eval.hpatches import evaluate_hpatches
    from .eval.plots import plot_mma

    quiet = quiet or as_json
    methods = _eval_methods(models, fetch, multiscale, both_scales, scales, max_edge,
                            max_sum_edges, preprocessing, no_relu, max_keypoints, precisions,
                            baseline, sift_max_features, quiet)
    with _stage_bars(quiet) as on_progress:
        res = evaluate_hpatches(root, methods, work_dir=work_dir, all_sequences=all_sequences,
                                device=device, progress=on_progress)
    s = res.summary()
    s["plot"] = None if no_plot else str(plot_mma(res, plot))
    if as_json:
        print_json(s)
    else:
        sq = s["sequences"]
        table = Table(title=f"d2 eval hpatches {res.root}: {sq['total']} sequences "
                            f"({sq['i']} i_, {sq['v']} v_), {s['pairs']['overall']} pairs",
                      title_justify="left")
        for col in ("method", "set", "pairs", "feat/img", "match/pair", "MMA@1", "@2", "@3",
                    "@5", "@10"):
            table.add_column(col, justify="left" if col in ("method", "set") else "right")
        for ms in s["methods"]:
            fpi = ms["features_per_image"]
            for kind, name in (("overall", "all"), ("i", "illum"), ("v", "view")):
                mma = ms["mma"][kind]
                if mma is None or (kind != "overall"
                                   and s["pairs"][kind] == s["pairs"]["overall"]):
                    continue  # a set with no pairs, or the same pairs as "all"
                table.add_row(
                    ms["label"], name, str(s["pairs"][kind]),
                    f"{fpi['mean']:.0f}" if kind == "overall" else "",
                    _fmt(ms["matches_per_pair"][kind], False),
                    *(_fmt(mma[t - 1]) for t in (1, 2, 3, 5, 10)))
        out_console.print(table)
        out_console.print(f"MMA in % at 1..10 px. Features and matches cached in {res.work_dir}"
                          + (f"; plot: {s['plot']}" if s["plot"] else ""),
                          highlight=False, soft_wrap=True)
        if res.cache_dropped:
            err_console.print("[yellow]images changed since the last run: the cache was redone")
        report_failures({k: f"{k}: {v}" for k, v in res.skipped.items()}, "sequences")
        report_failures({k: f"pair {k}: {v}" for k, v in res.failed.items()}, "pairs")
    return EXIT_PARTIAL if res.skipped or res.failed else 0


@eval_group.command("pose")
@click.argument("root", type=click.Path(path_type=str))
@click.option("--pairs", "pairs_file", type=click.Path(),
              help="Pairs with cameras: 'name0 name1 K0(9) K1(9) T_0to1(16)' per line, names "
                   "relative to ROOT. Default: ROOT is a Strecha folder (.camera files).")
@click.option("--max-gap", type=int,
              help="Strecha: pair images at most this far apart in name order [default: all].")
@click.option("--max-error", default=2.0, show_default=True,
              help="RANSAC threshold of the essential matrix, in pixels.")
@click.option("--ransac-trials", default=10000, show_default=True,
              help="Most RANSAC iterations per pair.")
@click.option("--plot", default="pose-auc.png", show_default=True,
              help="PNG of the pose-error curves.")
@_eval_options
@command
def eval_pose_cmd(root, pairs_file, max_gap, max_error, ransac_trials, plot, models, fetch,
                  multiscale, both_scales, scales, max_edge, max_sum_edges, preprocessing,
                  no_relu, max_keypoints, precisions, baseline, sift_max_features, work_dir,
                  device, no_plot, quiet, as_json) -> int:
    """Relative-pose AUC at 5/10/20 degrees on image pairs with known cameras under ROOT.

    Matches every pair, estimates the essential matrix with RANSAC (pycolmap) and
    compares the relative pose with the ground truth.
    """
    from .eval.plots import plot_pose
    from .eval.pose import evaluate_pose

    quiet = quiet or as_json
    methods = _eval_methods(models, fetch, multiscale, both_scales, scales, max_edge,
                            max_sum_edges, preprocessing, no_relu, max_keypoints, precisions,
                            baseline, sift_max_features, quiet)
    with _stage_bars(quiet) as on_progress:
        res = evaluate_pose(root, methods, pairs_file=pairs_file, max_gap=max_gap,
                            max_error=max_error, max_trials=ransac_trials,
                            work_dir=work_dir, device=device, progress=on_progress)
    s = res.summary()
    s["plot"] = None if no_plot else str(plot_pose(res, plot))
    if as_json:
        print_json(s)
    else:
        table = Table(title=f"d2 eval pose {res.root}: {s['evaluated_pairs']} pairs, "
                            f"RANSAC {res.max_error:g} px, <= {res.max_trials} trials",
                      title_justify="left")
        for col in ("method", "AUC@5", "@10", "@20", "match/pair", "inliers/pair",
                    "median err", "no pose"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for ms in s["methods"]:
            med = ms["median_error"]
            table.add_row(ms["label"], *(_fmt(ms["auc"][f"@{t}"]) for t in (5, 10, 20)),
                          _fmt(ms["matches_per_pair"], False), _fmt(ms["inliers_per_pair"], False),
                          "-" if med is None else f"{med:.2f}°", str(ms["failed_estimates"]))
        out_console.print(table)
        out_console.print(f"AUC in %. Features and matches cached in {res.work_dir}"
                          + (f"; plot: {s['plot']}" if s["plot"] else ""),
                          highlight=False, soft_wrap=True)
        if res.cache_dropped:
            err_console.print("[yellow]images changed since the last run: the cache was redone")
        report_failures({k: f"pair {k}: {v}" for k, v in res.failed.items()}, "pairs")
    return EXIT_PARTIAL if res.failed else 0


# --------------------------------------------------------------------------- show
@main.group("show")
def show_group() -> None:
    """Pictures (PNG) of keypoints, matches and sparse models."""


def _image_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--image-dir", type=click.Path(),
                        help="Folder of the images [default: the one recorded in the features "
                             "file].")(fn)


def _show_done(result: Any, as_json: bool, what: str) -> int:
    if as_json:
        print_json(result.summary())
    else:
        out_console.print(f"d2 show {what}: {result.width}x{result.height} -> {result.out}",
                          highlight=False, soft_wrap=True)
    return 0


@show_group.command("keypoints")
@click.argument("image")
@click.option("--features", "-f", default="feats.h5", show_default=True, help="Features file.")
@_image_dir_option
@click.option("--color-by", type=click.Choice(["score", "scale"]), default="score",
              show_default=True, help="Colour by detection score or by pyramid scale.")
@click.option("--width", default=1600, show_default=True,
              help="Largest width of the drawn image in pixels.")
@click.option("--out", "-o", default="keypoints.png", show_default=True, help="PNG to write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def show_keypoints_cmd(image, features, image_dir, color_by, width, out, as_json) -> int:
    """Draw IMAGE with its keypoints.

    IMAGE is a name as keyed in the features file, or a path to the image file.
    """
    from .show import show_keypoints

    if width < 16:
        raise click.BadParameter("must be >= 16", param_hint="--width")
    result = show_keypoints(image, features, out, color_by=color_by, image_dir=image_dir,
                            max_width=width, max_height=max(16, round(width * 0.75)))
    return _show_done(result, as_json, f"keypoints ({result.counts['keypoints']} keypoints)")


@show_group.command("matches")
@click.argument("name0")
@click.argument("name1")
@click.option("--features", "-f", default="feats.h5", show_default=True, help="Features file.")
@click.option("--matches", "-m", default="matches.h5", show_default=True, help="Matches file.")
@click.option("--db", type=click.Path(),
              help="COLMAP database (d2 colmap-import): verified inliers green, rejected red.")
@_image_dir_option
@click.option("--width", default=2400, show_default=True,
              help="Largest width of the two drawn images in pixels.")
@click.option("--out", "-o", default="matches.png", show_default=True, help="PNG to write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def show_matches_cmd(name0, name1, features, matches, db, image_dir, width, out, as_json) -> int:
    """Draw images NAME0 and NAME1 side by side with their matches.

    With --db, keypoints, matches and inliers come from the database (the features file
    only gives the image folder).
    """
    from .show import show_matches

    if width < 32:
        raise click.BadParameter("must be >= 32", param_hint="--width")
    result = show_matches(name0, name1, features, matches, db=db, out=out, image_dir=image_dir,
                          max_width=width, max_height=max(16, round(width * 5 / 12)))
    c = result.counts
    what = f"matches ({c['matches']} matches" + (
        f", {c['inliers']} inliers)" if c.get("inliers") is not None else ")")
    return _show_done(result, as_json, what)


@show_group.command("model")
@click.argument("model_dir", type=click.Path())
@click.option("--width", default=1600, show_default=True, help="Picture width in pixels.")
@click.option("--out", "-o", default="model.png", show_default=True, help="PNG to write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def show_model_cmd(model_dir, width, out, as_json) -> int:
    """Draw the COLMAP model in MODEL_DIR.

    A top and a side view of the 3D points with the camera centres and viewing
    directions (clipped to the points' 1-99 percentile box), and histograms of track
    lengths and reprojection errors.
    """
    from .show import show_model

    if width < 400:
        raise click.BadParameter("must be >= 400", param_hint="--width")
    result = show_model(model_dir, out, width=width)
    c = result.counts
    return _show_done(result, as_json, f"model ({c['registered']} images, {c['points3D']} points)")


# --------------------------------------------------------------------------- train
@main.command("train")
@click.argument("data", nargs=-1, required=True, type=str)
@click.option("--out", "-o", required=True, help="Folder for checkpoints, state and log.")
@click.option("--model", "-m", "init", default=None,
              help="Starting weights: name or .pth path [default: built-in].")
@click.option("--train-layers", default="conv4_3", show_default=True,
              help="Layers to train: conv4_3 (the paper), conv4, 'conv3_3,conv4', all.")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--steps-per-epoch", default=500, show_default=True)
@click.option("--batch-size", default=1, show_default=True, help="Image pairs per step.")
@click.option("--crop", default=256, show_default=True, help="Crop size (multiple of 8).")
@click.option("--margin", default=1.0, show_default=True)
@click.option("--safe-radius", default=4, show_default=True, help="In feature cells (8 px).")
@click.option("--min-matches", type=int,
              help="Fewest correspondences of a usable pair [default: 128; 16 for COLMAP tracks].")
@click.option("--val-pairs", default=32, show_default=True, help="Fixed validation pairs.")
@click.option("--val-fraction", default=0.1, show_default=True,
              help="Fraction of each source's images/pairs held out for validation.")
@click.option("--seed", default=1, show_default=True)
@click.option("--preprocessing", type=click.Choice(["caffe", "torch", "none"]), default="caffe",
              show_default=True)
@click.option("--max-edge", default=1024, show_default=True,
              help="Resize COLMAP / homography images to fit.")
@click.option("--photometric", type=float,
              help="Photometric change strength, 0..1 [default: 1 homography, 0 otherwise].")
@click.option("--checkpoint-every", default=50, show_default=True, help="Steps between saves.")
@click.option("--relu-descriptors", is_flag=True,
              help="Loss on ReLU'd descriptors, as matched at test time (reference: raw).")
@click.option("--spread", default=0.0, show_default=True,
              help="Weight of a spread-out regulariser against descriptor collapse (paper: 0).")
@click.option("--warp", default=1.0, show_default=True,
              help="Homography sources: scale the random homographies (angles, zoom, tilt).")
@click.option("--max-steps", type=int, help="Stop after N steps in this run; re-run to go on.")
@click.option("--overwrite", is_flag=True, help="Start again, discarding a run in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def train_cmd(data, out, init, train_layers, lr, epochs, steps_per_epoch, batch_size, crop, margin,
              safe_radius, min_matches, val_pairs, val_fraction, seed, preprocessing, max_edge,
              photometric, checkpoint_every, relu_descriptors, spread, warp, max_steps,
              overwrite, quiet, as_json) -> int:
    """Fine-tune D2-Net on DATA folders as the paper (stride 8, soft detection, margin loss).

    \b
    DATA is [KIND:]FOLDER, KIND guessed when left out:
      depth:      COLMAP model (sparse/) + images/ + depths/ (MegaDepth-style)
      colmap:     COLMAP model (sparse/ or the folder) + images/: 3D point tracks
      homography: any folder of images: random homographies + photometric changes
    Re-running with the same options resumes a killed or --max-steps run exactly.
    """
    from .train import TrainSettings, train
    from .weights import DEFAULT_MODEL

    settings = TrainSettings(
        data=tuple(data), init=init or DEFAULT_MODEL, train_layers=train_layers, lr=lr,
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop=crop,
        margin=margin, safe_radius=safe_radius, min_matches=min_matches, val_pairs=val_pairs,
        val_fraction=val_fraction, seed=seed, preprocessing=preprocessing, max_edge=max_edge,
        photometric=photometric, checkpoint_every=checkpoint_every,
        relu_descriptors=relu_descriptors, spread=spread, warp=warp)
    with progress_bar("train", "steps", quiet or as_json) as p:
        task = p.add_task("train", total=None, rate="", visible=False)
        recent: list[float] = []

        def on_event(event: str, info: dict[str, Any]) -> None:
            if event == "start":
                p.update(task, total=info["total"], completed=info["resumed"], visible=True)
            elif event == "step":
                if info["loss"] is not None:
                    recent[:] = (recent + [info["loss"]])[-50:]
                loss = f"loss {sum(recent) / len(recent):.3f}" if recent else ""
                p.update(task, completed=info["step"], rate=loss)
            elif event == "epoch":
                val = info["val_loss"]
                p.console.print(f"epoch {info['epoch']}: validation loss "
                                f"{'-' if val is None else f'{val:.4f}'}", highlight=False)

        result = train(settings, out, overwrite=overwrite, max_steps=max_steps, progress=on_event)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        vals = ", ".join(f"{e}: {v:.4f}" for e, v in sorted(result.val_losses.items()))
        summary_table(f"d2 train -> {out}", [
            ("steps", f"{s['steps']} of {settings.epochs * settings.steps_per_epoch}"
                      f" (this run from {s['resumed_from']})"),
            ("trained layers", ", ".join(s["trainable"])),
            ("last loss", "-" if s["last_loss"] is None else f"{s['last_loss']:.4f}"),
            ("validation loss by epoch", vals or "-"),
            ("best epoch", s["best_epoch"] if s["best_epoch"] is not None else "-"),
            ("skipped pairs", s["skipped_samples"]),
            ("final model", s["final"] or "not yet (re-run to go on)"),
            ("time", f"{s['seconds']:.1f} s"),
        ])
    if result.interrupted:
        raise KeyboardInterrupt
    return 0


# --------------------------------------------------------------------------- colmap
def _parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    from .errors import UsageError

    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.replace(",", " ").split())
    except ValueError:  # D2Error, not click's: raised inside the command body
        raise UsageError(f"{option}: expected numbers like '1200,512,384,0', got {text!r}") \
            from None


def _parse_pycolmap_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``a.b=1`` items -> nested dict; values are JSON (numbers, true/false) or strings."""
    from .errors import UsageError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option: expected KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return out


@contextmanager
def _stage_progress(quiet: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """One bar per stage of a multi-step job: (stage, done, total)."""
    with progress_bar("", "", quiet) as p:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=total, rate="")
            p.update(tasks[stage], completed=done, **({"total": total} if total else {}))

        yield update


def _fmt_px(v: float) -> str:
    return f"{v:.3f} px"


@main.command("colmap-import")
@click.argument("database", type=click.Path(path_type=str))
@click.option("--features", "-f", default="feats.h5", show_default=True, help="Features file.")
@click.option("--matches", "-m", default="matches.h5", show_default=True, help="Matches file.")
@click.option("--pairs", "pairs_file", type=click.Path(),
              help="Import only these pairs [default: every pair of the matches file].")
@click.option("--image-dir", type=click.Path(),
              help="Images, read for EXIF only [default: the root recorded in the features].")
@click.option("--camera-mode", type=click.Choice(["auto", "single", "per-folder", "per-image"]),
              default="auto", show_default=True,
              help="auto: one camera per image size and EXIF camera.")
@click.option("--camera-model", default="SIMPLE_RADIAL", show_default=True,
              help="COLMAP camera model (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, OPENCV...).")
@click.option("--camera-params", help="Known intrinsics in the model's order, e.g. '1200,512,384,0'.")
@click.option("--no-verify", is_flag=True,
              help="Store the raw matches as verified geometry (no RANSAC).")
@click.option("--reference-model", type=click.Path(),
              help="COLMAP model to mirror (same ids), for d2 reconstruct --reference-model.")
@click.option("--overwrite", is_flag=True, help="Start from an empty database.")
@click.option("--verbose", "-v", is_flag=True, help="Show pycolmap's log.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def colmap_import_cmd(database, features, matches, pairs_file, image_dir, camera_mode,
                      camera_model, camera_params, no_verify, reference_model, overwrite, verbose,
                      quiet, as_json) -> int:
    """Write features and matches into the COLMAP DATABASE (created if missing).

    Keypoints get COLMAP's +0.5 pixel convention; matches are verified with pycolmap
    unless --no-verify. Importing again adds only what is new.
    """
    from .colmap import colmap_import

    params = _parse_floats(camera_params, "--camera-params")
    with _stage_progress(quiet or as_json) as update:
        result = colmap_import(
            database, features, matches, pairs=pairs_file, image_dir=image_dir,
            camera_mode=camera_mode, camera_model=camera_model, camera_params=params,
            verify=not no_verify, reference_model=reference_model, overwrite=overwrite,
            verbose=verbose, progress=update)
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
        report_failures(result.failed, "names or pairs")
    return EXIT_PARTIAL if result.failed else 0


def _reconstruct_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [
        ("images registered", f"{s['registered']} / {s['images']}"
                              + (f" ({s['connected_images']} with verified pairs)"
                                 if s["connected_images"] != s["images"] else "")),
        ("3D points", s["points3D"]),
        ("mean track length", f"{s['mean_track_length']:.2f}"),
        ("mean reprojection error", _fmt_px(s["mean_reprojection_error"])),
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
@click.option("--mapper", type=click.Choice(["incremental", "global"]), default="incremental",
              show_default=True)
@click.option("--reference-model", type=click.Path(),
              help="Keep this model's poses and only triangulate points (database made by "
                   "colmap-import --reference-model).")
@click.option("--threads", type=int, help="CPU threads [default: the cores available].")
@click.option("--seed", default=0, show_default=True, help="Random seed (repeatable runs).")
@click.option("--min-num-matches", default=15, show_default=True,
              help="Inlier matches for a pair to count.")
@click.option("--intrinsics", type=click.Choice(["auto", "refine", "fixed"]), default="auto",
              show_default=True, help="Refine focal lengths and distortion, keep them as "
              "imported, or auto: refine when most images share a camera.")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any pycolmap pipeline option, e.g. mapper.init_min_num_inliers=50.")
@click.option("--verbose", "-v", is_flag=True, help="Show pycolmap's log.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def reconstruct_cmd(database, out, image_dir, mapper, reference_model, threads, seed,
                    min_num_matches, intrinsics, extra, verbose, quiet, as_json) -> int:
    """Reconstruct a sparse COLMAP model from DATABASE (pycolmap mapping)."""
    from .reconstruct import reconstruct

    options = _parse_pycolmap_options(extra)
    with progress_bar("", "img", quiet or as_json) as p:
        tasks: list[int] = []  # added at the first event: nothing is drawn before the checks

        def on_progress(event: str, registered: int, total: int) -> None:
            label = {"init": "mapping (new model)", "global": "global mapping",
                     "triangulate": "triangulating"}.get(event)
            if not tasks:
                tasks.append(p.add_task(label or "mapping", total=total, rate=""))
            p.update(tasks[0], completed=registered, total=total,
                     **({"description": label} if label else {}))

        result = reconstruct(
            database, out, image_dir=image_dir, mapper=mapper, reference_model=reference_model,
            num_threads=threads, seed=seed, min_num_matches=min_num_matches,
            intrinsics=intrinsics, options=options, verbose=verbose, progress=on_progress)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        summary_table(f"d2 reconstruct ({s['mapper']}) -> {out}",
                      _reconstruct_rows(s) + [("time", f"{s['seconds']:.1f} s")])
        _report_unregistered(result.unregistered)
    return 0


@main.command("sfm")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "-o", default="sfm", show_default=True,
              help="Work folder: feats.h5, pairs.txt, matches.h5, database.db, sparse/.")
@click.option("--model", default=None, help="Model name or .pth path [default: built-in].")
@click.option("--max-edge", default=1600, show_default=True, help="Extraction resize limit.")
@click.option("--multiscale", is_flag=True, help="Scales 0.5, 1, 2 (the paper's D2-Net MS).")
@click.option("--max-keypoints", type=int, help="Keep the K highest scores per image.")
@click.option("--ratio", type=float, help="Lowe ratio test in matching, e.g. 0.95.")
@click.option("--camera-mode", type=click.Choice(["auto", "single", "per-folder", "per-image"]),
              default="auto", show_default=True)
@click.option("--camera-model", default="SIMPLE_RADIAL", show_default=True)
@click.option("--camera-params", help="Known intrinsics in the model's order.")
@click.option("--mapper", type=click.Choice(["incremental", "global"]), default="incremental",
              show_default=True)
@click.option("--intrinsics", type=click.Choice(["auto", "refine", "fixed"]), default="auto",
              show_default=True, help="See d2 reconstruct --help.")
@click.option("--threads", type=int, help="CPU threads for mapping [default: the cores available].")
@click.option("--seed", default=0, show_default=True, help="Random seed of the mapper.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--verbose", "-v", is_flag=True, help="Show pycolmap's log.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def sfm_cmd(images, out, model, max_edge, multiscale, max_keypoints, ratio, camera_mode,
            camera_model, camera_params, mapper, intrinsics, threads, seed, device, verbose,
            quiet, as_json) -> int:
    """Images -> COLMAP model: extract, pairs (exhaustive), match, colmap-import, reconstruct.

    Every step's output stays in --out and every step resumes: re-running after an
    interruption or with more images redoes only what is missing.
    """
    from .extract import MULTI_SCALE, SINGLE_SCALE, ExtractSettings
    from .match import MatchSettings
    from .sfm import sfm

    settings = ExtractSettings(scales=MULTI_SCALE if multiscale else SINGLE_SCALE,
                               max_edge=max_edge, max_keypoints=max_keypoints)
    quiet = quiet or as_json
    with _stage_progress(quiet) as update:
        def on_step(step: str, status: str) -> None:
            if status != "start" and not quiet:
                err_console.print(f"[bold]{step}[/]: {status}", highlight=False)

        result = sfm(images, out, model=model, extract_settings=settings,
                     match_settings=MatchSettings(ratio=ratio),
                     camera_mode=camera_mode, camera_model=camera_model,
                     camera_params=_parse_floats(camera_params, "--camera-params"),
                     mapper=mapper, intrinsics=intrinsics, num_threads=threads, seed=seed,
                     device=device,
                     verbose=verbose, on_step=on_step, progress=update)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        rec = result.model
        summary_table(f"d2 sfm -> {out}", _reconstruct_rows(rec) + [
            ("model", f"{out}/sparse"),
            ("steps skipped (already done)", ", ".join(result.skipped) or "none"),
            ("time", f"{s['seconds']:.1f} s"),
        ])
        _report_unregistered(rec.get("unregistered", []))
        report_failures(result.failed, "images or pairs")
    return EXIT_PARTIAL if result.failed else 0


# --------------------------------------------------------------------------- localize
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
@click.option("--max-error", default=12.0, show_default=True,
              help="RANSAC reprojection threshold in pixels (hloc: 12 Aachen, 48 InLoc).")
@click.option("--min-inliers", default=12, show_default=True,
              help="A query with fewer PnP inliers fails.")
@click.option("--refine-focal", is_flag=True, help="Refine each query's focal length with its pose.")
@click.option("--image-dir", type=click.Path(),
              help="Query images, read for EXIF [default: the root recorded in the features].")
@click.option("--full-names", is_flag=True,
              help="Write query names as given, not their basenames (the Aachen/InLoc form).")
@click.option("--overwrite", is_flag=True, help="Do not resume an interrupted run.")
@click.option("--verbose", "-v", is_flag=True, help="Show pycolmap's log.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def localize_cmd(reference, inloc_scans, inloc_alignments, queries, pairs_file, features, matches,
                 out, log_file, max_error, min_inliers, refine_focal, image_dir, full_names,
                 overwrite, verbose, quiet, as_json) -> int:
    """Localise query images against a COLMAP model (--reference) or InLoc scans.

    2D-3D correspondences come from the queries' matches to reference keypoints that
    observe 3D points; the pose from pycolmap's absolute-pose RANSAC and refinement.
    Failed queries are listed with the reason (exit 1); an interrupted run resumes.
    """
    from .localize import localize

    with progress_bar("localize", "query", quiet or as_json) as p:
        tasks: list[Any] = []  # added at the first query: a set-up error shows no bar

        def on_query(name: str, done: int, total: int) -> None:
            if not tasks:
                tasks.append(p.add_task("localize", total=total, rate=""))
            p.update(tasks[0], completed=done, total=total, rate=_rate(p, tasks[0]))

        result = localize(
            reference, queries, pairs_file, features, matches, out, max_error=max_error,
            min_inliers=min_inliers, refine_focal_length=refine_focal, inloc_scans=inloc_scans,
            inloc_alignments=inloc_alignments, image_dir=image_dir, full_names=full_names,
            log=log_file, overwrite=overwrite, verbose=verbose, progress=on_query)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        med = s["median_inliers"]
        summary_table(f"d2 localize -> {out}", [
            ("localised", f"{s['localized']} / {s['queries']}"
                          + (f" ({s['resumed']} from an interrupted run)" if s["resumed"] else "")),
            ("median inliers", "-" if med is None else f"{med:.0f}"),
            ("reference", f"{s['reference']} ({s['mode']})"),
            ("log", s["log"]),
            ("time", f"{s['seconds']:.1f} s"),
        ])
        report_failures(result.failed, "queries")
    return EXIT_PARTIAL if result.failed else 0


if __name__ == "__main__":
    main()
