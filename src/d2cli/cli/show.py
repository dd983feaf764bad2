"""``d2 show keypoints | matches | model``."""

from __future__ import annotations

from typing import Any

import click

from . import main
from .common import command, done_line, image_dir_option, json_option


@main.group("show")
def show_group() -> None:
    """Pictures (PNG) of keypoints, matches and sparse models."""


def _show_done(result: Any, as_json: bool, what: str) -> int:
    return done_line(result.summary(), as_json,
                     f"d2 show {what}: {result.width}x{result.height} -> {result.out}")


@show_group.command("keypoints")
@click.argument("image")
@click.option("--features", "-f", default="feats.h5", show_default=True, help="Features file.")
@image_dir_option
@click.option("--color-by", type=click.Choice(["score", "scale"]), default="score",
              show_default=True, help="Colour by detection score or by pyramid scale.")
@click.option("--width", default=1600, show_default=True,
              help="Largest width of the drawn image in pixels.")
@click.option("--out", "-o", default="keypoints.png", show_default=True, help="PNG to write.")
@json_option
@command
def show_keypoints_cmd(image, features, image_dir, color_by, width, out, as_json) -> int:
    """Draw IMAGE with its keypoints.

    IMAGE is a name as keyed in the features file, or a path to the image file.
    """
    from ..show import show_keypoints

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
@image_dir_option
@click.option("--width", default=2400, show_default=True,
              help="Largest width of the two drawn images in pixels.")
@click.option("--out", "-o", default="matches.png", show_default=True, help="PNG to write.")
@json_option
@command
def show_matches_cmd(name0, name1, features, matches, db, image_dir, width, out, as_json) -> int:
    """Draw images NAME0 and NAME1 side by side with their matches.

    With --db, keypoints, matches and inliers come from the database (the features file
    only gives the image folder).
    """
    from ..show import show_matches

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
@json_option
@command
def show_model_cmd(model_dir, width, out, as_json) -> int:
    """Draw the COLMAP model in MODEL_DIR.

    A top and a side view of the 3D points with the camera centres and viewing
    directions (clipped to the points' 1-99 percentile box), and histograms of track
    lengths and reprojection errors.
    """
    from ..show import show_model

    if width < 400:
        raise click.BadParameter("must be >= 400", param_hint="--width")
    result = show_model(model_dir, out, width=width)
    c = result.counts
    return _show_done(result, as_json, f"model ({c['registered']} images, {c['points3D']} points)")
