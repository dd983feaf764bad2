"""``d2 show``: pictures drawn from real files made here.

Features are extracted from sample images (small, two-level pyramid), matched with
``d2cli.match``, imported into a COLMAP database by hand and verified by pycolmap
(``verify_matches``), so the database has real inliers and real rejected matches. The
model is a synthetic scene triangulated by pycolmap, with a few far points that the
views must leave out. Pictures are checked for size, for not being blank, and for the
colours that carry the information (keypoint markers, green inliers, red rejects).
The drawing functions are also called with arrays alone (plain gray images, keypoints and
matches at known places), checking where exactly they draw.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from d2cli.errors import BadFile, InputNotFound, MissingName, OutputError, UsageError
from d2cli.extract import ExtractSettings, extract
from d2cli.io.features import FeatureFile, MatchFile
from d2cli.match import match
from d2cli.show import (
    draw_keypoints,
    draw_matches,
    draw_model,
    show_keypoints,
    show_matches,
    show_model,
)

# landscape 1068x694, portrait 779x1052 (the pair with most inliers), portrait 780x1063
NAMES = ["10265353_3838484249.jpg", "60584745_2207571072.jpg", "02928139_3448003521.jpg"]
BIG = "big.jpg"  # a landscape sample enlarged to 4000 px wide


# --------------------------------------------------------------------------- helpers
def picture(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(np.int16)


def assert_not_blank(px: np.ndarray) -> None:
    assert px.std() > 20, f"picture looks blank (pixel std {px.std():.1f})"


def colourful(px: np.ndarray) -> np.ndarray:
    """Pixels that are clearly not gray (the photos are drawn in gray)."""
    return (px.max(2) - px.min(2)) > 60


def green(px: np.ndarray) -> np.ndarray:
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (g > 130) & (g - r > 60) & (g - b > 50)


def red(px: np.ndarray) -> np.ndarray:
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (r > 150) & (r - g > 90) & (r - b > 90) & (abs(g - b) < 40)  # not orange


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def scene(tmp_path_factory, samples_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("show")
    images = root / "images"
    images.mkdir()
    for n in NAMES:
        shutil.copy(samples_dir / n, images / n)
    with Image.open(samples_dir / NAMES[0]) as im:  # landscape: drawn 1600 px wide
        im.resize((4000, round(4000 * im.height / im.width)), Image.Resampling.BILINEAR).save(
            images / BIG, quality=80)
    feats = root / "feats.h5"
    res = extract([images], feats, settings=ExtractSettings(scales=(0.5, 1.0), max_edge=320),
                  device="cpu")
    assert not res.failed
    pairs = [(NAMES[0], NAMES[1]), (NAMES[0], NAMES[2]), (NAMES[1], NAMES[2])]
    matches = root / "matches.h5"
    assert not match(pairs, feats, matches, device="cpu").failed
    db = root / "db.db"
    make_database(db, feats, matches, pairs, verify=pairs[:2])
    return {"root": root, "images": images, "feats": feats, "matches": matches, "db": db}


def make_database(db_path: Path, feats: Path, matches: Path, pairs: list[tuple[str, str]],
                  verify: list[tuple[str, str]]) -> None:
    """A COLMAP database as d2 colmap-import makes it (+0.5 keypoints), verified by pycolmap."""
    pycolmap.logging.minloglevel = 2
    ids = {}
    with FeatureFile(feats) as ff, MatchFile(matches) as mf, pycolmap.Database.open(db_path) as db:
        for n in NAMES:
            f = ff[n]
            w, h = (int(v) for v in f.image_size)
            cam = pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h,
                                  params=[1.2 * max(w, h), w / 2, h / 2, 0.0])
            ids[n] = db.write_image(pycolmap.Image(name=n, camera_id=db.write_camera(cam)))
            db.write_keypoints(ids[n], (f.keypoints[:, :2] + 0.5).astype(np.float32))
        for a, b in pairs:
            db.write_matches(ids[a], ids[b], mf.get(a, b)[0])
    pairs_txt = db_path.with_suffix(".pairs.txt")
    pairs_txt.write_text("".join(f"{a} {b}\n" for a, b in verify))
    pycolmap.verify_matches(db_path, pairs_txt)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """5 cameras around a 500-point box, triangulated by pycolmap; 4 far points (< 1 %)."""
    pycolmap.logging.minloglevel = 2
    work = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(1)
    W, H, f = 1024, 768, 800.0
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    X = rng.uniform([-2, -1.5, -1], [2, 1.5, 1], (500, 3))
    X = np.concatenate([X, [[-3, 0.5, 60], [3, -0.5, 60], [0, 1, 55], [1, 0, 58]]])
    ref = pycolmap.Reconstruction()
    ref.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=W, height=H,
                                                    params=[f, f, W / 2, H / 2], camera_id=1))
    kps = {}
    for i, a in enumerate(np.deg2rad([-20, -10, 0, 10, 20])):
        c = np.array([8 * np.sin(a), 0, -8 * np.cos(a)])
        z = -c / 8
        x = np.cross([0, 1.0, 0], z)
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        t = -R @ c
        ref.add_image_with_trivial_frame(pycolmap.Image(name=f"{i}.jpg", camera_id=1, image_id=i + 1),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        uv = (X @ R.T + t) @ K.T
        kps[i + 1] = uv[:, :2] / uv[:, 2:] + rng.normal(0, 0.3, (len(X), 2))
    db_path = work / "database.db"
    with pycolmap.Database.open(db_path) as db:
        for c in ref.cameras.values():
            db.write_camera(c, use_camera_id=True)
        for r in ref.rigs.values():
            db.write_rig(r, use_rig_id=True)
        for fr in ref.frames.values():
            db.write_frame(fr, use_frame_id=True)
        for im in ref.images.values():
            db.write_image(im, use_image_id=True)
        for i, k in kps.items():
            db.write_keypoints(i, k.astype(np.float32))
        m = np.repeat(np.arange(len(X), dtype=np.uint32)[:, None], 2, 1)
        for i in kps:
            for j in kps:
                if i < j:
                    db.write_matches(i, j, m)
                    db.write_two_view_geometry(i, j, pycolmap.TwoViewGeometry(
                        config=pycolmap.TwoViewGeometryConfiguration.CALIBRATED, inlier_matches=m))
    (work / "images").mkdir()
    out = work / "sparse"
    pycolmap.triangulate_points(ref, db_path, work / "images", out,
                                options=pycolmap.IncrementalPipelineOptions(num_threads=2,
                                                                            extract_colors=False))
    return out


# --------------------------------------------------------------------------- drawing from arrays
GRAY = 64 + int(0.6 * 128)  # a 128 gray photo as drawn (faded)


def gray_image(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_draw_keypoints_changes_only_the_keypoints_neighbourhoods(tmp_path):
    """800x600 is drawn at its size, at (6, 34) in the picture: a keypoint at (x, y) is the
    marker centred on picture pixel (6 + x, 34 + y), and nothing else of the photo changes
    but the "N keypoints" label in its top-left corner."""
    kp = np.array([[100.0, 100.0], [400.0, 300.0], [700.0, 500.0], [250.0, 450.0]])
    scores = np.array([0.1, 0.5, 0.9, 0.3])
    res = draw_keypoints(gray_image(800, 600), kp, tmp_path / "kp.png", scores=scores)
    assert (res.width, res.height) == (6 + 800 + 150, 34 + 600 + 6)
    assert res.counts == {"keypoints": 4, "color_by": "score"}
    px = picture(tmp_path / "kp.png")
    photo = px[34:634, 6:806]
    changed = (photo != GRAY).any(2)
    changed[:40, :200] = False  # the label
    rows, cols = np.nonzero(changed)
    dist = np.hypot(cols[:, None] - kp[:, 0], rows[:, None] - kp[:, 1]).min(1)
    assert len(rows) and dist.max() <= 6.5  # 9 px markers, nothing drawn elsewhere
    for x, y in kp.astype(int):
        near = colourful(photo[y - 7:y + 8, x - 7:x + 8])
        assert near.sum() >= 20, (x, y)
        cy, cx = np.argwhere(near).mean(0) - 7  # marker centred on the keypoint's pixel
        assert abs(cx) < 0.35 and abs(cy) < 0.35, (x, y, cx, cy)
    r, _, b = photo[500, 700]  # strongest: plasma's yellow end
    assert r > 200 and b < 100
    r, _, b = photo[100, 100]  # weakest: plasma's blue end
    assert b > 100 and r < 60

    by_scale = draw_keypoints(gray_image(800, 600), kp, tmp_path / "s.png", color_by="scale",
                              scales=np.array([1.0, 2.0, 1.0, 2.0]))
    assert by_scale.counts["by_scale"] == {"0.5x": 2, "1x": 2}
    with pytest.raises(ValueError, match="keypoints"):
        draw_keypoints(gray_image(800, 600), np.zeros((4, 3)), tmp_path / "x.png", scores=scores)
    with pytest.raises(ValueError, match="scales"):
        draw_keypoints(gray_image(800, 600), kp, tmp_path / "x.png", color_by="scale")
    with pytest.raises(ValueError, match="image"):
        draw_keypoints(gray_image(800, 600)[:, :, 0], kp, tmp_path / "x.png", scores=scores)


def test_draw_matches_canvas_and_lines(tmp_path):
    """900x800 and 600x800 are drawn at their size, 12 px apart, at (6, 40) in the picture:
    an inlier line in green and a rejected one in red run between the matched keypoints."""
    kp0 = np.array([[100.0, 200.0], [700.0, 600.0]])
    kp1 = np.array([[50.0, 600.0], [500.0, 100.0]])
    m = np.array([[0, 0], [1, 1]])
    res = draw_matches(gray_image(900, 800), gray_image(600, 800), kp0, kp1, m,
                       tmp_path / "m.png", inliers=np.array([True, False]), config="CALIBRATED")
    assert (res.width, res.height) == (6 + 900 + 12 + 600 + 6, 40 + 800 + 6)
    assert res.counts == {"matches": 2, "inliers": 1, "rejected": 1, "config": "CALIBRATED",
                          "verified": True}
    px = picture(tmp_path / "m.png")
    assert (px[40:100, 906:918] == 255).all()  # the gap between the images
    assert (px[45:100, 600:900] == GRAY).all() and (px[700:830, 930:1100] == GRAY).all()

    def along(k: int, t: float) -> tuple[int, int]:
        """Picture pixel at ``t`` of the way along match k's line."""
        (x0, y0), (x1, y1) = kp0[k] + [6, 40], kp1[k] + [6 + 912, 40]
        return round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))

    for k, t in ((0, 0.25), (0, 0.5), (1, 0.5), (1, 0.75)):
        x, y = along(k, t)
        win = px[y - 2:y + 3, x - 2:x + 3]
        assert (green if k == 0 else red)(win).any(), (k, t)
        assert not (red if k == 0 else green)(win).any(), (k, t)
    # the ends sit on the keypoints: (100, 200) of image 0, (500, 100) of image 1
    assert green(px[40 + 197:40 + 204, 6 + 97:6 + 104]).any()
    assert red(px[40 + 97:40 + 104, 918 + 497:918 + 504]).any()

    plain = draw_matches(gray_image(900, 800), gray_image(600, 800), kp0, kp1, m,
                         tmp_path / "p.png")
    assert plain.counts == {"matches": 2}
    with pytest.raises(ValueError, match="index past keypoints1"):
        draw_matches(gray_image(900, 800), gray_image(600, 800), kp0, kp1[:1], m,
                     tmp_path / "x.png")
    with pytest.raises(ValueError, match="inliers"):
        draw_matches(gray_image(900, 800), gray_image(600, 800), kp0, kp1, m, tmp_path / "x.png",
                     inliers=np.array([True]))


def test_draw_model_from_arrays(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (300, 3))
    centres, rots = [], []
    for a in np.deg2rad([-15, 0, 15]):
        c = np.array([6 * np.sin(a), 0, -6 * np.cos(a)])
        z = -c / 6
        x = np.cross([0, 1.0, 0], z)
        x /= np.linalg.norm(x)
        centres.append(c)
        rots.append(np.stack([x, np.cross(z, x), z]))
    res = draw_model(pts, np.array(rots), np.array(centres), tmp_path / "model.png",
                     track_lengths=rng.integers(2, 6, 300), width=800)
    assert (res.width, res.height) == (800, 576)
    assert res.counts["points3D"] == 300 and res.counts["cameras"] == 3
    px = picture(tmp_path / "model.png")
    assert_not_blank(px)
    assert red(px).sum() > 3 * 20  # the cameras and their viewing directions
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_model(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="centres"):
        draw_model(pts, np.array(rots), np.zeros((2, 3)), tmp_path / "x.png")


# --------------------------------------------------------------------------- keypoints
@pytest.mark.parametrize("color_by", ["score", "scale"])
def test_keypoints(scene, tmp_path, color_by):
    out = tmp_path / "kp.png"
    res = show_keypoints(NAMES[0], scene["feats"], out, color_by=color_by)
    px = picture(out)
    assert px.shape[:2] == (res.height, res.width)
    assert_not_blank(px)
    with FeatureFile(scene["feats"]) as ff:
        n = len(ff[NAMES[0]])
    assert res.counts["keypoints"] == n > 50
    # 1068x694 fits the default box unchanged (+ title, margins and legend)
    assert 1068 + 100 < res.width < 1068 + 300 and 694 < res.height < 694 + 80
    assert colourful(px).sum() > 20 * n  # every marker is tens of coloured pixels
    if color_by == "scale":
        by_scale = res.counts["by_scale"]
        assert set(by_scale) == {"0.5x", "1x"} and sum(by_scale.values()) == n
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_keypoints_4000px_image_is_downscaled(scene, tmp_path):
    out = tmp_path / "big.png"
    res = show_keypoints(BIG, scene["feats"], out)
    px = picture(out)
    assert res.width <= 1600 + 200 and res.height <= 1200 + 80
    assert_not_blank(px)
    # markers land all over the drawn image, not in a corner: coordinates were scaled too
    with FeatureFile(scene["feats"]) as ff:
        kp = ff[BIG].keypoints
    cols = np.flatnonzero(colourful(px[:, :1600]).any(0))
    f = 1600 / 4000
    assert abs(cols.min() - kp[:, 0].min() * f) < 30 and abs(cols.max() - kp[:, 0].max() * f) < 30


def test_keypoints_image_by_path_and_image_dir(scene, tmp_path):
    by_path = show_keypoints(scene["images"] / NAMES[1], scene["feats"], tmp_path / "a.png")
    assert by_path.counts["name"] == NAMES[1]

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(scene["images"] / NAMES[1], moved / NAMES[1])
    res = show_keypoints(NAMES[1], scene["feats"], tmp_path / "b.png", image_dir=moved)
    assert res.counts["image"] == str(moved / NAMES[1])
    with pytest.raises(InputNotFound):
        show_keypoints(NAMES[0], scene["feats"], tmp_path / "c.png", image_dir=moved)
    # another image under the right name would put the keypoints in the wrong places
    shutil.copy(scene["images"] / NAMES[0], moved / NAMES[2])
    with pytest.raises(BadFile, match="wrong image"):
        show_keypoints(NAMES[2], scene["feats"], tmp_path / "d.png", image_dir=moved)


def test_keypoints_set_up_errors(scene, tmp_path):
    with pytest.raises(MissingName):
        show_keypoints("nope.jpg", scene["feats"], tmp_path / "x.png")
    with pytest.raises(InputNotFound):
        show_keypoints(NAMES[0], tmp_path / "missing.h5", tmp_path / "x.png")
    with pytest.raises(UsageError):
        show_keypoints(NAMES[0], scene["feats"], tmp_path / "x.jpg")
    with pytest.raises(UsageError):
        show_keypoints(NAMES[0], scene["feats"], tmp_path / "x.png", color_by="size")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OutputError):
        show_keypoints(NAMES[0], scene["feats"], tmp_path / "dir.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png"]


# --------------------------------------------------------------------------- matches
def test_matches_from_matches_file(scene, tmp_path):
    out = tmp_path / "sub" / "m.png"  # a missing folder is created
    res = show_matches(NAMES[0], NAMES[1], scene["feats"], scene["matches"], out=out)
    with MatchFile(scene["matches"]) as mf:
        m, _ = mf.get(NAMES[0], NAMES[1])
    assert res.counts["matches"] == len(m) > 10 and "inliers" not in res.counts
    px = picture(out)
    assert px.shape[:2] == (res.height, res.width) and res.width <= 2400 + 20
    assert_not_blank(px)
    assert colourful(px).sum() > 20 * len(m)
    # the reversed pair draws the same lines
    rev = show_matches(NAMES[1], NAMES[0], scene["feats"], scene["matches"], out=tmp_path / "r.png")
    assert rev.counts["matches"] == len(m)


def test_matches_with_database(scene, tmp_path):
    out = tmp_path / "m.png"
    res = show_matches(NAMES[0], NAMES[1], scene["feats"], db=scene["db"], out=out)
    c = res.counts
    with pycolmap.Database.open(scene["db"]) as db:
        i0, i1 = (db.read_image_with_name(n).image_id for n in NAMES[:2])
        n_matches = len(db.read_matches(i0, i1))
        n_inliers = len(db.read_two_view_geometry(i0, i1).inlier_matches)
    assert c["verified"] and c["matches"] == n_matches and c["inliers"] == n_inliers
    assert c["inliers"] + c["rejected"] == c["matches"]
    assert c["inliers"] >= 15 and c["rejected"] > 0  # the data has both, or the test proves nothing
    px = picture(out)
    assert_not_blank(px)
    assert green(px).sum() > 30 * c["inliers"]
    assert red(px).sum() > 30 * c["rejected"]

    # without a features file, given the image folder
    res2 = show_matches(NAMES[1], NAMES[0], tmp_path / "none.h5", db=scene["db"],
                        image_dir=scene["images"], out=tmp_path / "m2.png")
    assert (res2.counts["inliers"], res2.counts["matches"]) == (c["inliers"], c["matches"])


def test_matches_colours_follow_the_geometry(scene, tmp_path):
    """Inliers = the matches on the left half of image 0: then no red can lie left of them."""
    db_path = tmp_path / "db.db"
    shutil.copy(scene["db"], db_path)
    with pycolmap.Database.open(db_path) as db:
        i0, i1 = (db.read_image_with_name(n).image_id for n in NAMES[:2])
        m = db.read_matches(i0, i1)
        x0 = db.read_keypoints(i0)[m[:, 0], 0]
        left = m[x0 < np.median(x0)]
        db.delete_two_view_geometry(i0, i1)
        db.write_two_view_geometry(i0, i1, pycolmap.TwoViewGeometry(
            config=pycolmap.TwoViewGeometryConfiguration.CALIBRATED, inlier_matches=left))
    out = tmp_path / "m.png"
    res = show_matches(NAMES[0], NAMES[1], scene["feats"], db=db_path, out=out)
    assert res.counts["inliers"] == len(left) and res.counts["rejected"] == len(m) - len(left)
    px = picture(out)
    g_cols, r_cols = np.flatnonzero(green(px).any(0)), np.flatnonzero(red(px).any(0))
    assert g_cols.min() + 20 < r_cols.min()


def test_matches_with_database_pair_not_verified(scene, tmp_path):
    out = tmp_path / "m.png"
    res = show_matches(NAMES[1], NAMES[2], scene["feats"], db=scene["db"], out=out)
    assert res.counts["verified"] is False and res.counts["matches"] > 0
    px = picture(out)
    assert green(px).sum() == 0 and red(px).sum() == 0


def test_matches_set_up_errors(scene, tmp_path):
    out = tmp_path / "m.png"
    with pytest.raises(MissingName):
        show_matches(NAMES[0], "nope.jpg", scene["feats"], scene["matches"], out=out)
    with pytest.raises(MissingName):  # a pair that was never matched
        show_matches(NAMES[0], BIG, scene["feats"], scene["matches"], out=out)
    with pytest.raises(MissingName):
        show_matches(NAMES[0], BIG, scene["feats"], db=scene["db"], out=out)
    with pytest.raises(InputNotFound):
        show_matches(NAMES[0], NAMES[1], scene["feats"], tmp_path / "none.h5", out=out)
    with pytest.raises(InputNotFound):
        show_matches(NAMES[0], NAMES[1], scene["feats"], db=tmp_path / "none.db", out=out)
    assert not out.exists()


# --------------------------------------------------------------------------- model
def test_model(model_dir, tmp_path):
    out = tmp_path / "model.png"
    res = show_model(model_dir, out)
    rec = pycolmap.Reconstruction(model_dir)
    c = res.counts
    assert c["registered"] == 5 and c["points3D"] == rec.num_points3D() > 450
    # the far points are outside the 1-99 percentile box, not squashing the view
    assert 1 <= c["points_outside_view"] <= 4
    px = picture(out)
    assert px.shape[:2] == (res.height, res.width) == (1152, 1600)
    assert_not_blank(px)
    assert red(px).sum() > 5 * 20  # the cameras and their viewing directions


def test_model_set_up_errors(tmp_path):
    with pytest.raises(InputNotFound):
        show_model(tmp_path / "nowhere", tmp_path / "m.png")
    with pytest.raises(BadFile):
        show_model(tmp_path, tmp_path / "m.png")
    (tmp_path / "cameras.bin").write_bytes(b"garbage")
    with pytest.raises(BadFile):
        show_model(tmp_path, tmp_path / "m.png")


# --------------------------------------------------------------------------- CLI
def test_cli(scene, model_dir, tmp_path, d2):
    r = d2("show", "keypoints", NAMES[0], "--features", scene["feats"], "--color-by", "scale",
           "--out", tmp_path / "kp.png", "--json")
    assert r.returncode == 0, r.stderr
    assert picture(tmp_path / "kp.png").shape[1] > 780
    r = d2("show", "matches", NAMES[0], NAMES[1], "-f", scene["feats"], "--db", scene["db"],
           "--out", tmp_path / "m.png")
    assert r.returncode == 0 and "inliers" in r.stdout, r.stderr
    r = d2("show", "model", model_dir, "--out", tmp_path / "model.png", "--width", "800")
    assert r.returncode == 0, r.stderr
    assert picture(tmp_path / "model.png").shape[1] == 800

    for args in (["keypoints", "nope.jpg", "-f", scene["feats"]],
                 ["matches", NAMES[0], NAMES[1], "-f", scene["feats"], "-m", tmp_path / "no.h5"],
                 ["model", tmp_path / "nowhere"]):
        r = d2("show", *args, "--out", tmp_path / "x.png", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("d2: error:") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
