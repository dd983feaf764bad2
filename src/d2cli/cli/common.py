"""What every ``d2`` command shares: the error policy, output helpers, shared options.

A command body parses options, calls one library function with ``progress=show`` (the
:class:`~d2cli.cli.render.Renderer`), prints a summary (table, or ``--json``) and
returns :func:`finish` of the result. :func:`command` maps
:class:`d2cli.errors.D2Error` to a one-line message and its exit code; nothing here
prints a traceback for a user error.
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
from rich.table import Table

from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, D2Error, UsageError, exit_status
from ..precision import PRECISIONS
from ..settings import (
    CAMERA_MODES,
    DEFAULT_MAX_PIXELS,
    INTRINSICS,
    MAPPERS,
    MULTI_SCALE,
    PREPROCESSING,
    SINGLE_SCALE,
    ExtractSettings,
    ImportSettings,
    MapSettings,
)
from .render import Renderer

err_console = Console(stderr=True)
out_console = Console()

INTERRUPTED = "d2: interrupted; finished work is saved, re-run to resume"

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body with d2's error policy: one line on stderr, documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            try:
                code = fn(*args, **kwargs)
            except click.ClickException as e:  # click's usage errors raised in a body
                raise UsageError(e.format_message()) from None
        except D2Error as e:
            err_console.print(f"[bold red]d2: error:[/] {e}", highlight=False, soft_wrap=True)
            if kwargs.get("as_json"):  # scripts always get one JSON object
                print_json({"error": str(e), "exit_code": e.exit_code})
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print(INTERRUPTED)
            if kwargs.get("as_json"):
                print_json({"error": INTERRUPTED.removeprefix("d2: "), "interrupted": True,
                            "exit_code": EXIT_INTERRUPTED})
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("D2CLI_DEBUG"):
                raise
            err_console.print(
                f"[bold red]d2: internal error:[/] {e.__class__.__name__}: {e} "
                "(set D2CLI_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
            sys.exit(EXIT_INTERNAL)
        sys.exit(code or 0)

    return wrapper


@contextmanager
def progress(quiet: bool) -> Iterator[Renderer]:
    """The renderer every job reports to (``quiet``: failures only)."""
    with Renderer(err_console, quiet) as r:
        yield r


def finish(result: Any, failures: str | None = None) -> int:
    """Report ``result.failed`` (as ``failures``, e.g. "images") and return its exit code.

    An interrupted job has already committed what it finished: say so, exit 130.
    """
    if failures:
        report_failures(result.failed, failures)
    code = exit_status(result)
    if code == EXIT_INTERRUPTED:
        err_console.print(INTERRUPTED)
    return code


def all_done(command: str, skipped: int, total: int, what: str, out: Any) -> bool:
    """A re-run with nothing left to do says so in one line (True) instead of a table;
    ``what``: e.g. "pairs already matched"."""
    if not total or skipped != total:
        return False
    out_console.print(f"d2 {command}: all {total} {what} in {out} "
                      "(--overwrite redoes them)", highlight=False, soft_wrap=True)
    return True


def done_line(summary: dict[str, Any], as_json: bool, line: str) -> int:
    """A one-step command's output: the summary as JSON, or one line; exit 0."""
    if as_json:
        print_json(summary)
    else:
        out_console.print(line, highlight=False, soft_wrap=True)
    return 0


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


def fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.1f}" if pct else f"{v:.0f}"


# --------------------------------------------------------------------------- parsing
def parse_floats(text: str | None, option: str, example: str = "1200,512,384,0"
                 ) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.replace(",", " ").split())
    except ValueError:  # D2Error, not click's: raised inside the command body
        raise UsageError(f"{option}: expected numbers like '{example}', got {text!r}") from None


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"--scales expects numbers like '0.5,1,2', got {text!r}") from None


def parse_pycolmap_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``a.b=1`` items -> nested dict; values are JSON (numbers, true/false) or strings."""
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


def chosen_scales(scales: str | None, multiscale: bool) -> tuple[float, ...]:

    return parse_scales(scales) or (MULTI_SCALE if multiscale else SINGLE_SCALE)


def extract_settings(scales: tuple[float, ...], max_edge: int, max_sum_edges: int,
                     preprocessing: str, no_relu: bool, max_keypoints: int | None,
                     **kw: Any) -> ExtractSettings:
    """The one place the CLI's extraction options become an ExtractSettings."""
    return ExtractSettings(scales=scales, max_edge=max_edge, max_sum_edges=max_sum_edges,
                           preprocessing=preprocessing, use_relu=not no_relu,
                           max_keypoints=max_keypoints, **kw)


def import_settings(camera_mode: str, camera_model: str, camera_params: str | None,
                    **kw: Any) -> ImportSettings:
    """The CLI's camera options (:data:`camera_options`) as an ImportSettings."""
    return ImportSettings(camera_mode=camera_mode, camera_model=camera_model,
                          camera_params=parse_floats(camera_params, "--camera-params"), **kw)


def map_settings(mapper: str, intrinsics: str, threads: int | None, seed: int,
                 min_num_matches: int, **kw: Any) -> MapSettings:
    """The CLI's mapping options (:data:`mapping_options`) as a MapSettings."""
    return MapSettings(mapper=mapper, intrinsics=intrinsics, num_threads=threads, seed=seed,
                       min_num_matches=min_num_matches, **kw)


# --------------------------------------------------------------------------- shared options
def options(*opts: Decorator) -> Decorator:
    """Several click options as one decorator, in the order given (as --help lists them)."""
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return apply


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Machine-readable summary on stdout.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress display.")
verbose_option = click.option("--verbose", "-v", is_flag=True, help="Show pycolmap's log.")


def device_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu, cuda, cuda:N.")(fn)


def model_option(name: str = "model") -> Decorator:
    return click.option("--model", "-m", name, default=None,
                        help="Model name or .pth path [default: built-in].")


multiscale_options = options(
    click.option("--multiscale", is_flag=True, help="Scales 0.5, 1, 2 (the paper's D2-Net MS)."),
    click.option("--scales", help="Any pyramid, e.g. '0.5,1'. Overrides --multiscale."),
)

decode_option = click.option(
    "--decode", type=click.Choice(["full", "reduced"]), default="full", show_default=True,
    help="reduced: decode JPEGs at 1/2-1/8 size when the network input is that much smaller "
         "(huge aerial/panorama images in bounded memory; not reference-exact).")
resize_options = options(
    click.option("--max-edge", default=ExtractSettings.max_edge, show_default=True,
                 help="Downscale images whose longer side is larger (reference policy)."),
    click.option("--max-sum-edges", default=ExtractSettings.max_sum_edges, show_default=True,
                 help="Then downscale images whose width + height is larger."),
)

network_options = options(
    click.option("--preprocessing", type=click.Choice(PREPROCESSING),
                 default=ExtractSettings.preprocessing, show_default=True,
                 help="Input normalisation: caffe (BGR, mean subtracted; the official "
                      "weights), torch (RGB, ImageNet mean/std) or none."),
    click.option("--no-relu", is_flag=True, help="No ReLU after conv4_3."),
    click.option("--max-keypoints", type=int, help="Keep the K highest scores per image."),
)

camera_options = options(
    click.option("--camera-mode", type=click.Choice(CAMERA_MODES),
                 default=ImportSettings.camera_mode, show_default=True,
                 help="auto: one camera per image size and EXIF camera."),
    click.option("--camera-model", default=ImportSettings.camera_model, show_default=True,
                 help="COLMAP camera model (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, OPENCV...)."),
    click.option("--camera-params",
                 help="Known intrinsics in the model's order, e.g. '1200,512,384,0'."),
)

mapping_options = options(
    click.option("--mapper", type=click.Choice(MAPPERS), default=MapSettings.mapper,
                 show_default=True),
    click.option("--intrinsics", type=click.Choice(INTRINSICS), default=MapSettings.intrinsics,
                 show_default=True, help="Refine focal lengths and distortion, keep them as "
                 "imported, or auto: refine when most images share a camera."),
    click.option("--threads", type=int, help="CPU threads [default: the cores available]."),
    click.option("--seed", default=MapSettings.seed, show_default=True,
                 help="Random seed (repeatable runs)."),
    click.option("--min-num-matches", default=MapSettings.min_num_matches, show_default=True,
                 help="Inlier matches for a pair to count."),
)

query_ref_options = options(
    click.option("--query-prefix", help="Queries: the names starting with this."),
    click.option("--query-list", type=click.Path(), help="Queries: the names in this file."),
    click.option("--ref-prefix", help="References: the names starting with this."),
    click.option("--ref-list", type=click.Path(), help="References: the names in this file."),
)

precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto",
    show_default=True,
    help="Network precision. auto: bf16 where the device runs it fast (CPUs with AMX or "
         "AVX512-BF16, GPUs from Ampere on), else fp32; fp32: exact to the reference. "
         "Detection and refinement do their arithmetic in fp32.")

max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
    help="Refuse larger images (aerial, panoramas: raise it; 0: no limit).")

image_dir_option = click.option(
    "--image-dir", type=click.Path(),
    help="Folder of the images [default: the one recorded in the features file].")
