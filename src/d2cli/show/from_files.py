"""``d2 show keypoints | matches | model``: load with ``inputs``, draw with the drawing
modules. What a picture shows from files; the drawing itself takes arrays."""

from __future__ import annotations

import os
from pathlib import Path

from .draw import ShowResult, check_out
from .inputs import load_keypoints, load_model, load_pair
from .keypoints import check_color_by, draw_keypoints
from .matches import draw_matches
from .model import draw_model


def show_keypoints(
    image: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    out: str | os.PathLike = "keypoints.png",
    *,
    color_by: str = "score",
    image_dir: str | os.PathLike | None = None,
    max_width: int = 1600,
    max_height: int = 1200,
) -> ShowResult:
    """Draw one image with its keypoints coloured by score or by pyramid scale.

    ``image``: a name as keyed in the features file (found under ``image_dir``, default
    the features file's image root) or a path to the image file.
    """
    check_color_by(color_by)
    out = check_out(out)
    kp = load_keypoints(image, features, image_dir)
    res = draw_keypoints(kp.image, kp.keypoints, out, scores=kp.scores, scales=kp.scales,
                         color_by=color_by, name=kp.name, max_width=max_width,
                         max_height=max_height)
    res.counts = {"name": kp.name, "image": str(kp.path), **res.counts}
    return res


def show_matches(
    name0: str | os.PathLike,
    name1: str | os.PathLike,
    features: str | os.PathLike = "feats.h5",
    matches: str | os.PathLike = "matches.h5",
    *,
    db: str | os.PathLike | None = None,
    out: str | os.PathLike = "matches.png",
    image_dir: str | os.PathLike | None = None,
    max_width: int = 2400,
    max_height: int = 1000,
) -> ShowResult:
    """Draw two images side by side with their match lines.

    Without ``db``: the matches of the matches file, coloured by their height in the first
    image (a crossing line stands out from its neighbours). With ``db`` (a COLMAP database
    from ``d2 colmap-import``): keypoints and matches come from the database, inliers of
    the verified two-view geometry are green, rejected matches red. The features file is
    then only read for the image folder (``image_dir`` replaces it).
    """
    out = check_out(out)
    pair = load_pair(name0, name1, features, matches, db, image_dir)
    verified = False if pair.from_database and pair.inliers is None else None
    res = draw_matches(*pair.images, *pair.keypoints, pair.matches, out, inliers=pair.inliers,
                       config=pair.config, verified=verified, names=pair.names,
                       max_width=max_width, max_height=max_height)
    res.counts = {"name0": pair.names[0], "name1": pair.names[1], **res.counts}
    return res


def show_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike = "model.png",
    *,
    width: int = 1600,
) -> ShowResult:
    """Draw a COLMAP model: a top and a side view of the 3D points with the camera centres
    and viewing directions, and histograms of track lengths and reprojection errors.

    "Up" is the cameras' mean up direction (no gravity is known); the horizontal axis is
    the points' main direction. Views keep the points' 1-99 percentile box.
    """
    out = check_out(out)
    model_dir = Path(model_dir)
    m = load_model(model_dir)
    n_pts, n_reg = len(m.points), len(m.centres)
    mean_track = float(m.track_lengths.mean()) if n_pts else 0.0
    title = (f"{model_dir}:  {n_reg} of {m.num_images} images registered  ·  {n_pts:,} points"
             f"  ·  mean track length {mean_track:.2f}  ·  mean reprojection error "
             f"{m.mean_reprojection_error:.2f} px")
    if m.smaller_models:
        title += f"  (+{m.smaller_models} smaller models in {model_dir / 'models'})"
    res = draw_model(m.points, m.rotations, m.centres, out, colors=m.colors,
                     track_lengths=m.track_lengths, errors=m.errors, directions=m.directions,
                     title=title, width=width)
    res.counts = {"model": str(model_dir), "registered": n_reg, "images": m.num_images,
                  "points3D": n_pts, "mean_track_length": res.counts["mean_track_length"],
                  "mean_reprojection_error": round(m.mean_reprojection_error, 4),
                  "points_outside_view": res.counts["points_outside_view"]}
    return res
