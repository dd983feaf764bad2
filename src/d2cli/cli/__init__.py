"""The ``d2`` command line: a thin Click layer over the Python API.

One module per command group; each command parses options, calls one library function
with the shared progress renderer, and prints a summary (``common.py`` holds what they
share, ``render.py`` draws progress). A new command is one file here plus its job module.
"""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="d2")
def main() -> None:
    """D2-Net local features, matching and COLMAP reconstruction.

    \b
    Exit codes: 0 ok, 1 some items failed (the rest were done),
    2 usage or set-up error, 3 internal error, 130 interrupted (re-run to resume).
    """


from . import (  # noqa: E402  (each module adds its commands to `main`)
    colmap,
    eval,
    extract,
    localize,
    match,
    pairs,
    refine,
    show,
    train,
    weights,
)

__all__ = ["main", "colmap", "eval", "extract", "localize", "match", "pairs", "refine", "show", "train",
           "weights"]
