"""The ``d2`` command line: a thin Click layer over the Python API.

One module per command group; each command parses options, calls one library function
with the shared progress renderer, and prints a summary (``common.py`` holds what they
share, ``render.py`` draws progress). A new command is one file here plus its job module.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import __version__


class D2Group(click.Group):
    """Click's group, but a usage error with ``--json`` also prints one JSON object on stdout
    (scripts always get one), besides Click's message on stderr; exit code 2 as before."""

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        kw["standalone_mode"] = False
        try:
            code = super().main(argv, *a, **kw)
        except click.ClickException as e:
            e.show()
            if "--json" in argv:
                click.echo(json.dumps({"error": e.format_message(), "exit_code": e.exit_code},
                                      indent=2, sort_keys=True))
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=D2Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
