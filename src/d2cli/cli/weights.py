"""``d2 weights list | fetch | check``."""

from __future__ import annotations

import click
from rich.table import Table

from . import main
from .common import command, json_option, out_console, print_json, progress, quiet_option, summary_table


@main.group("weights")
def weights_group() -> None:
    """List, fetch and check D2-Net weights (cache: $D2CLI_HOME/weights)."""


@weights_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list on stdout.")
@command
def weights_list_cmd(as_json) -> int:
    """Every known model and every file in the cache, and whether it is available offline."""
    from ..weights import cache_dir, list_models

    entries = list_models()
    if as_json:
        print_json({"cache": str(cache_dir()), "models": [e.as_dict() for e in entries]})
        return 0
    columns = ("name", "kind", "available", "size", "sha256", "licence", "source")
    rows = []
    for e in entries:
        if e.available:
            avail = "yes" if e.recorded_sha256 in (None, e.sha256) else "yes (changed since fetch)"
        elif e.partial_bytes is not None:
            avail = f"no (partial: {e.partial_bytes / 1e6:.1f} MB)"
        else:
            avail = "no"
        rows.append((e.name, e.kind, avail, f"{e.size / 1e6:.1f} MB" if e.size else "-",
                     e.sha256[:16] + "…" if e.sha256 else "-", e.licence, e.source))
    if not out_console.is_terminal:  # piped: one tab-separated line per model, no wrapping
        click.echo("\t".join(columns))
        for r in rows:
            click.echo("\t".join(r))
        return 0
    table = Table(title=f"d2 weights (cache: {cache_dir()})", title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
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
@quiet_option
@json_option
@command
def weights_fetch_cmd(name, url, expected_sha256, force, retries, timeout, quiet,
                      as_json) -> int:
    """Download NAME (d2_ots, d2_tf, d2_tf_no_phototourism) into the cache.

    The file appears in the cache only once complete and verified as a D2-Net
    checkpoint; an interrupted download resumes where it stopped when run again.
    """
    from ..weights.fetch import fetch_model

    with progress(quiet or as_json) as show:
        res = fetch_model(name, url, expected_sha256=expected_sha256, force=force,
                          retries=retries, timeout=timeout, progress=show)
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
    from ..weights import check_weights

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
