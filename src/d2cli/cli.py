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
@click.option("--overwrite", is_flag=True, help="Redo images already in the output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@command
def extract_cmd(images, out, image_list, image_root, model, multiscale, scales, max_edge,
                max_sum_edges, preprocessing, no_relu, max_keypoints, descriptor_dtype, device,
                batch_size, workers, commit_every, overwrite, quiet, as_json) -> int:
    """Extract D2-Net features of IMAGES (files and/or folders) into an HDF5 file.

    Re-running skips images already in the file; a killed run resumes.
    """
    from .extract import MULTI_SCALE, SINGLE_SCALE, ExtractSettings, extract

    chosen = _parse_scales(scales) or (MULTI_SCALE if multiscale else SINGLE_SCALE)
    settings = ExtractSettings(
        scales=chosen, max_edge=max_edge, max_sum_edges=max_sum_edges,
        preprocessing=preprocessing, use_relu=not no_relu, max_keypoints=max_keypoints,
        descriptor_dtype=descriptor_dtype)
    with progress_bar("extract", "img", quiet or as_json) as p:
        task = p.add_task("extract", total=None, rate="")

        def on_start(total: int, todo: int) -> None:
            p.update(task, total=todo)

        def on_image(name: str, n: int | None, error: str | None) -> None:
            if error:
                p.console.print(f"[yellow]skipped[/] {error}", highlight=False, soft_wrap=True)
            p.update(task, advance=1, rate=_rate(p, task))

        result = extract(
            images, out, model=model, settings=settings, image_list=image_list,
            image_root=image_root, device=device, batch_size=batch_size, overwrite=overwrite,
            workers=workers, commit_every=commit_every, progress=on_image, on_start=on_start)
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


if __name__ == "__main__":
    main()
