"""``d2 eval hpatches | pose``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from ..errors import EXIT_PARTIAL
from ..precision import PRECISIONS
from ..settings import SiftSettings
from . import main
from .common import (
    chosen_scales,
    command,
    device_option,
    err_console,
    extract_settings,
    finish,
    fmt,
    json_option,
    multiscale_options,
    network_options,
    options,
    out_console,
    print_json,
    progress,
    quiet_option,
    report_failures,
    resize_options,
)


@main.group("eval")
def eval_group() -> None:
    """Benchmarks: HPatches mean matching accuracy, relative-pose AUC."""


eval_options = options(
        click.option("--model", "-m", "models", multiple=True,
                     help="Model name or .pth path; repeat for several [default: built-in]."),
        click.option("--fetch", is_flag=True, help="Download missing official models first."),
        multiscale_options,
        click.option("--both-scales", is_flag=True,
                     help="Each model single-scale and multiscale (two curves)."),
        resize_options,  # --max-edge is also COLMAP SIFT's max image size
        network_options,
        click.option("--precision", "precisions", multiple=True,
                     type=click.Choice(PRECISIONS),
                     help="Trunk precision; repeat to compare (one curve each) [default: auto, "
                          "as d2 extract]."),
        click.option("--refine", is_flag=True,
                     help="Also each D2 method with featuremetric two-view refinement of its "
                          "matched keypoints (same features and matches; one more curve)."),
        click.option("--baseline", type=click.Choice(["sift"]), multiple=True,
                     help="Add COLMAP SIFT (pycolmap, CPU) on the same images."),
        click.option("--sift-max-features", default=SiftSettings.max_num_features,
                     show_default=True),
        click.option("--work-dir", type=click.Path(),
                     help="Cache of features and matches [default: $D2CLI_HOME/eval/...]."),
        device_option,
        click.option("--no-plot", is_flag=True, help="Do not write the PNG."),
        quiet_option,
        json_option,
)


def _eval_methods(quiet: bool, device: str, models, fetch, multiscale, scales, both_scales,
                  max_edge, max_sum_edges, preprocessing, no_relu, max_keypoints, precisions,
                  refine, baseline, sift_max_features) -> list[Any]:
    """The methods the eval options name: each model x scales x precision, and SIFT."""
    from ..device import pick_device
    from ..eval.methods import d2_method, refined_method, sift_method
    from ..settings import MULTI_SCALE, SINGLE_SCALE, ExtractSettings
    from ..weights.fetch import ensure_model

    if both_scales and (multiscale or scales):
        raise click.BadParameter("--both-scales chooses the scales itself",
                                 param_hint="--both-scales")
    scale_sets = ((SINGLE_SCALE, MULTI_SCALE) if both_scales
                  else (chosen_scales(scales, multiscale),))
    methods = []
    for model in models or (None,):
        if fetch:
            with progress(quiet) as show:
                ensure_model(model, fetch=True, progress=show)
        for sc in scale_sets:
            for precision in precisions or (ExtractSettings.precision,):
                # fp32 descriptors: the protocol matches in fp32, fp16 would flip near-ties;
                # auto is decided here, so labels and the cache name the precision used
                settings = extract_settings(sc, max_edge, max_sum_edges, preprocessing,
                                            no_relu, max_keypoints, descriptor_dtype="float32",
                                            precision=precision).resolved(pick_device(device))
                methods.append(d2_method(model, settings))
                if refine:
                    methods.append(refined_method(methods[-1]))
    if "sift" in baseline:
        methods.append(sift_method(SiftSettings(max_image_size=max_edge,
                                                max_num_features=sift_max_features)))
    return methods


def _evaluate(evaluate: Callable[[list[Any], Any], Any], plot: Callable[[Any], Any],
              no_plot: bool, quiet: bool, device: str, method_options: dict[str, Any],
              ) -> tuple[Any, dict[str, Any] | None]:
    """The methods the options name, evaluated with progress, and the summary with its
    plot; no summary when interrupted."""
    methods = _eval_methods(quiet, device, **method_options)
    with progress(quiet) as show:
        res = evaluate(methods, show)
    if res.interrupted:
        return res, None
    s = res.summary()
    s["plot"] = None if no_plot else str(plot(res))
    return res, s


def _footer(table: Table, res: Any, s: dict[str, Any], units: str) -> None:
    out_console.print(table)
    for ms in s["methods"]:  # what refinement did to each refined method's matches
        if r := ms.get("refined_matches"):
            out_console.print(f"{ms['label']}: {r.get('moved', 0)} matches moved, "
                              f"{r.get('undone', 0)} moves undone by the guards, "
                              f"{r.get('unmoved', 0)} unmoved", highlight=False)
    out_console.print(f"{units}. Features and matches cached in {res.work_dir}"
                      + (f"; plot: {s['plot']}" if s["plot"] else ""),
                      highlight=False, soft_wrap=True)
    if res.cache_dropped:
        err_console.print("[yellow]images changed since the last run: the cache was redone")


@eval_group.command("hpatches")
@click.argument("root", type=click.Path(path_type=str))
@click.option("--all-sequences", is_flag=True,
              help="Keep the 8 high-resolution sequences the D2-Net protocol removes.")
@click.option("--plot", default="hpatches-mma.png", show_default=True,
              help="PNG of MMA vs threshold.")
@eval_options
@command
def eval_hpatches_cmd(root, all_sequences, plot, work_dir, device, no_plot, quiet, as_json,
                      **method_options) -> int:
    """HPatches-sequences mean matching accuracy (the D2-Net paper's protocol) on ROOT.

    ROOT is laid out like hpatches-sequences-release: <seq>/1.ppm .. 6.ppm and
    H_1_2 .. H_1_6. MMA at 1..10 px, overall and per i_/v_ sequences.
    """
    from ..eval.hpatches import evaluate_hpatches
    from ..eval.plots import plot_mma

    res, s = _evaluate(
        lambda methods, show: evaluate_hpatches(root, methods, work_dir=work_dir,
                                                all_sequences=all_sequences, device=device,
                                                progress=show),
        lambda r: plot_mma(r, plot), no_plot, quiet or as_json, device, method_options)
    if s is None:
        return finish(res)
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
                    fmt(ms["matches_per_pair"][kind], False),
                    *(fmt(mma[t - 1]) for t in (1, 2, 3, 5, 10)))
        _footer(table, res, s, "MMA in % at 1..10 px")
        report_failures({k: f"{k}: {v}" for k, v in res.skipped.items()}, "sequences")
        report_failures({k: f"pair {k}: {v}" for k, v in res.failed.items()}, "pairs")
    return EXIT_PARTIAL if res.skipped else finish(res)


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
@eval_options
@command
def eval_pose_cmd(root, pairs_file, max_gap, max_error, ransac_trials, plot, work_dir, device,
                  no_plot, quiet, as_json, **method_options) -> int:
    """Relative-pose AUC at 5/10/20 degrees on image pairs with known cameras under ROOT.

    Matches every pair, estimates the essential matrix with RANSAC (pycolmap) and
    compares the relative pose with the ground truth.
    """
    from ..eval.plots import plot_pose
    from ..eval.pose import evaluate_pose

    res, s = _evaluate(
        lambda methods, show: evaluate_pose(root, methods, pairs_file=pairs_file,
                                            max_gap=max_gap, max_error=max_error,
                                            max_trials=ransac_trials, work_dir=work_dir,
                                            device=device, progress=show),
        lambda r: plot_pose(r, plot), no_plot, quiet or as_json, device, method_options)
    if s is None:
        return finish(res)
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
            table.add_row(ms["label"], *(fmt(ms["auc"][f"@{t}"]) for t in (5, 10, 20)),
                          fmt(ms["matches_per_pair"], False), fmt(ms["inliers_per_pair"], False),
                          "-" if med is None else f"{med:.2f}°", str(ms["failed_estimates"]))
        _footer(table, res, s, "AUC in %")
        report_failures({k: f"pair {k}: {v}" for k, v in res.failed.items()}, "pairs")
    return finish(res)
