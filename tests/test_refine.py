"""Featuremetric refinement on a real photo and warped copies with known geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from d2cli.images import load_rgb
from d2cli.refine import RefineConfig, build_tracks, refine_pair, refine_tracks
from d2cli.train.augment import warp_image

PHOTO = Path(__file__).resolve().parents[1] / "src/d2cli/data/sacre_coeur/02928139_3448003521.jpg"
IMAGE = RefineConfig(source="image", template=11, radius=6.0)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    img = load_rgb(PHOTO)
    return img[200:456, 200:456].copy()  # 256 x 256 of facade texture


def warp(img: np.ndarray, H: np.ndarray) -> np.ndarray:
    """img seen through H (img pixels -> output pixels), same size, uint8."""
    out = warp_image(img.astype(np.float32), np.linalg.inv(H), img.shape[:2])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def apply(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ H.T
    return (p[:, :2] / p[:, 2:]).astype(np.float32)


def grid_points(n: int = 8, lo: float = 40, hi: float = 215) -> np.ndarray:
    t = np.linspace(lo, hi, n)
    return np.stack(np.meshgrid(t, t), -1).reshape(-1, 2).astype(np.float32)


@pytest.mark.parametrize("cfg", [IMAGE, RefineConfig(block_size=16)])  # defaults, blocked
def test_subpixel_shift_recovered(photo: np.ndarray, cfg: RefineConfig) -> None:
    H = np.array([[1, 0, 1.3], [0, 1, -0.7], [0, 0, 1.0]])
    img1 = warp(photo, H)
    kp0 = grid_points()
    truth = apply(H, kp0)
    rng = np.random.default_rng(0)
    kp1 = truth + rng.uniform(-3, 3, truth.shape).astype(np.float32)  # stride-4 sized errors
    m = np.stack([np.arange(len(kp0))] * 2, 1)
    k0, k1 = refine_pair(photo, img1, kp0, kp1, m, cfg)
    before = np.linalg.norm(kp1 - truth, axis=1)
    after = np.linalg.norm(k1 - truth, axis=1)
    assert np.array_equal(k0, kp0)
    assert np.median(after) < 0.35 and np.median(after) < 0.2 * np.median(before)


def test_affine_handles_rotation_and_zoom(photo: np.ndarray) -> None:
    c = 127.5
    a, s = np.deg2rad(20), 1.25
    R = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0], [0, 0, 1]])
    T = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    H = np.linalg.inv(T) @ R @ T
    img1 = warp(photo, H)
    kp0 = grid_points(8, 70, 185)
    truth = apply(H, kp0)
    kp1 = truth + np.random.default_rng(1).uniform(-3, 3, truth.shape).astype(np.float32)
    m = np.stack([np.arange(len(kp0))] * 2, 1)
    cfg = RefineConfig(source="image", template=11, radius=6.0, affine=True)
    _, k1 = refine_pair(photo, img1, kp0, kp1, m, cfg)
    assert np.median(np.linalg.norm(k1 - truth, axis=1)) < 0.5


def test_unmatched_unchanged_and_empty(photo: np.ndarray) -> None:
    kp0, kp1 = grid_points(4), grid_points(4) + 1.5
    m = np.array([[0, 3], [5, 5]])
    _, k1 = refine_pair(photo, photo, kp0, kp1, m, IMAGE)
    untouched = np.setdiff1d(np.arange(len(kp1)), m[:, 1])
    assert np.array_equal(k1[untouched], kp1[untouched])
    assert not np.array_equal(k1[5], kp1[5])
    k0e, k1e = refine_pair(photo, photo, kp0, kp1, np.zeros((0, 2), np.int64), IMAGE)
    assert np.array_equal(k0e, kp0) and np.array_equal(k1e, kp1)


def test_blocked_equals_unblocked(photo: np.ndarray) -> None:
    H = np.array([[1, 0, 0.6], [0, 1, 0.4], [0, 0, 1.0]])
    img1 = warp(photo, H)
    kp0 = grid_points(6)
    kp1 = apply(H, kp0) + 1.0
    m = np.stack([np.arange(len(kp0))] * 2, 1)
    cfg = RefineConfig(source="conv1_2", radius=3.0, affine=True)
    _, big = refine_pair(photo, img1, kp0, kp1, m, cfg)
    _, small = refine_pair(photo, img1, kp0, kp1, m, RefineConfig(**{**cfg.as_dict(),
                                                                     "steps": cfg.steps,
                                                                     "block_size": 7}))
    np.testing.assert_allclose(big, small, atol=1e-4)


# Keypoints on the image's corners and within a pixel of both its edges: their templates
# reach outside, where crops read zeros, an edge that is not in the scene.
CORNERS = np.array([[0, 0], [255, 0], [0, 255], [255, 255], [2.5, 253.2], [254.6, 0.3],
                    [0.4, 1.1], [253.9, 254.6]], np.float32)
# 9 px from an edge: the template fits at the truth and at the start (up to 3 px away), the
# search window is cut by the border
NEAR = np.array([[9, 128], [128, 9], [246, 128], [128, 246], [9.4, 60.2], [60.3, 245.6]],
                np.float32)


def test_border_keypoints(photo: np.ndarray) -> None:
    """Corner keypoints (the photo against itself) stay where they are: their template is
    cut by the border. Keypoints 9 px inside return to the truth from up to 3 px away, to
    0.15 px (the parabola on a 0.25 px grid), though part of their search window is cut off."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        inward = np.where(CORNERS < 128, 1, -1).astype(np.float32)
        start = CORNERS + inward * rng.uniform(0.5, 3, CORNERS.shape).astype(np.float32)
        m = np.stack([np.arange(len(CORNERS))] * 2, 1)
        _, k1 = refine_pair(photo, photo, CORNERS, start, m, IMAGE)
        assert np.array_equal(k1, start), seed
        start = NEAR + rng.uniform(-3, 3, NEAR.shape).astype(np.float32)
        m = np.stack([np.arange(len(NEAR))] * 2, 1)
        _, k1 = refine_pair(photo, photo, NEAR, start, m, IMAGE)
        after = np.linalg.norm(k1 - NEAR, axis=1)
        assert (after < 0.15).all(), (seed, after.round(3))


def test_edge_keypoints_are_refined_or_left_unmoved(photo: np.ndarray) -> None:
    """Keypoints whose template leaves the image, away from the corners: each refined one is
    closer to the truth than its start and within 0.25 px of it, or left where it was (a
    keypoint whose own template is cut: the true fit may be cut too, and a wrong peak in
    the rest of the window would win). Once 4 of 63 moved 7-11 px away here."""
    def check(img0, img1, kp0, truth, seed):
        rng = np.random.default_rng(seed)
        start = np.clip(truth + rng.uniform(-3, 3, truth.shape).astype(np.float32), 0, 255)
        _, k1 = refine_pair(img0, img1, kp0, start, np.stack([np.arange(len(kp0))] * 2, 1),
                            IMAGE)
        moved = (k1 != start).any(axis=1)
        after = np.linalg.norm(k1 - truth, axis=1)
        ok = ~moved | ((after < np.linalg.norm(start - truth, axis=1)) & (after < 0.25))
        assert ok.all(), (seed, after[~ok].round(2))

    edges = np.array([[0, 128], [128, 255], [128, 0], [255, 128], [1.2, 60], [60, 254.1]],
                     np.float32)
    for seed in range(8):  # the same frame: the truth is the keypoint of the other view
        check(photo, photo, edges, edges, seed)
    # at the border of this view only: the reference is a wider frame of the same photo
    wide = load_rgb(PHOTO)[150:506, 150:506].copy()
    t = np.float32([0.0, 0.6, 2.0, 4.4, 128.0, 251.3, 254.0, 255.0])
    truth = np.array([[x, y] for x in t for y in t if min(x, y) < 5 or max(x, y) > 250],
                     np.float32)
    check(wide, photo, truth + 50, truth, 0)


def test_tracks_one_position_and_consistent(photo: np.ndarray) -> None:
    shifts = {"a": (0.0, 0.0), "b": (1.4, -0.6), "c": (-0.8, 1.1)}
    imgs = {n: warp(photo, np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]))
            for n, (dx, dy) in shifts.items()}
    base = grid_points(6)
    rng = np.random.default_rng(2)
    truth = {n: base + np.array(d, np.float32) for n, d in shifts.items()}
    kps = {n: t + rng.uniform(-2.5, 2.5, t.shape).astype(np.float32) for n, t in truth.items()}
    ids = np.arange(len(base))
    matches = {("a", "b"): np.stack([ids, ids], 1), ("b", "c"): np.stack([ids, ids], 1)}
    out = refine_tracks({n: (lambda im=im: im) for n, im in imgs.items()}, kps, matches, IMAGE)
    assert all(out[n].shape == kps[n].shape for n in kps)
    # relative geometry: every view agrees with every other after refinement
    for x, y in (("a", "b"), ("b", "c"), ("a", "c")):
        rel_true = np.subtract(shifts[y], shifts[x])
        before = np.linalg.norm(kps[y] - kps[x] - rel_true, axis=1)
        after = np.linalg.norm(out[y] - out[x] - rel_true, axis=1)
        assert np.median(after) < 0.4 and np.median(after) < 0.25 * np.median(before)


def test_build_tracks_conflicts_and_singletons() -> None:
    matches = {("a", "b"): np.array([[0, 0], [1, 1]]), ("b", "c"): np.array([[0, 0], [1, 0]])}
    t = build_tracks({"a": 3, "b": 2, "c": 1}, matches)
    # {a0, b0, c0, b1, a1} holds b0 and b1: conflicting, left alone; a2 in no track
    assert t.count == 0 and t.conflicting == 1
    assert (t.ids["a"] == -1).all() and (t.ids["c"] == -1).all()
    t2 = build_tracks({"a": 3, "b": 2}, {("a", "b"): np.array([[0, 1], [2, 0]])})
    assert t2.count == 2 and t2.ids["a"][1] == -1 and t2.ids["a"][0] == t2.ids["b"][1]
    t3 = build_tracks({"a": 2, "b": 2}, {("a", "b"): np.array([[0, 1]])}, max_track=2)
    assert t3.count == 1


def test_query_refiner_moves_each_correspondence_to_its_reference(photo: np.ndarray,
                                                                    tmp_path: Path) -> None:
    from PIL import Image

    from d2cli.refine.query import QueryRefiner

    # query = the photo shifted by a sub-pixel amount; the reference = the photo itself
    H = np.array([[1, 0, -0.9], [0, 1, 1.6], [0, 0, 1.0]])
    Image.fromarray(photo).save(tmp_path / "ref.png")
    Image.fromarray(warp(photo, H)).save(tmp_path / "query.png")
    kr = grid_points()
    truth = apply(H, kr)
    kq = truth + np.random.default_rng(3).uniform(-3, 3, truth.shape).astype(np.float32)
    rows = np.arange(0, len(kr), 2)  # only some matches carry a 3D point
    refiner = QueryRefiner(RefineConfig(), tmp_path, cache=1)
    out, counts = refiner.refine("query.png", "ref.png", kq, kr, rows)
    assert out.shape == (len(rows), 2) and sum(counts.values()) == len(rows)
    after = np.linalg.norm(out - truth[rows], axis=1)
    before = np.linalg.norm(kq[rows] - truth[rows], axis=1)
    assert np.median(after) < 0.35 and np.median(after) < 0.2 * np.median(before)
    # the cache of one image reloads what it dropped, with the same result
    assert np.array_equal(refiner.refine("query.png", "ref.png", kq, kr, rows)[0], out)


def test_anchor_is_the_best_connected_keypoint_of_each_track() -> None:
    from d2cli.refine.tracks import anchors

    # track 1: a0-b0, b0-c0, a0-c0 (all degree 2: the first image wins); track 2: a1-b1, b1-c1
    matches = {("a", "b"): np.array([[0, 0], [1, 1]]), ("b", "c"): np.array([[0, 0], [1, 1]]),
               ("a", "c"): np.array([[0, 0]])}
    t = build_tracks({"a": 2, "b": 2, "c": 2}, matches)
    got = anchors(t, matches)
    assert got["a"].tolist() == [True, False]
    assert got["b"].tolist() == [False, True] and got["c"].tolist() == [False, False]


def test_outcomes_say_what_moved_and_what_a_guard_undid(photo: np.ndarray) -> None:
    """Each match's outcome: moved (towards the truth), unmoved, or undone by a guard (here
    the corner keypoints, whose template is mostly outside the image)."""
    import torch

    from d2cli.refine.features import PatchFeatures, image_tensor
    from d2cli.refine.pair import MOVED, UNDONE_FAR, refine_points

    feats = PatchFeatures(IMAGE, torch.device("cpu"))
    t = image_tensor(photo, IMAGE, feats.device)
    truth = np.concatenate([grid_points(4), CORNERS])
    start = truth + np.float32([1.5, -1.0])
    r = refine_points(feats, t, t, torch.from_numpy(truth), torch.from_numpy(start))
    outcome = r.outcome.numpy()
    inner = np.arange(len(truth)) < 16
    assert (outcome[inner] == MOVED).all() and (outcome[~inner] == UNDONE_FAR).all()
    assert r.counts() == {"moved": 16, "undone": len(CORNERS), "unmoved": 0}
    assert np.array_equal(r.points.numpy()[~inner], start[~inner])
    assert np.abs(r.points.numpy()[inner] - truth[inner]).max() < 0.1


def test_refine_verified_moves_verified_matches_only(photo: np.ndarray) -> None:
    """Two-view order: a LO-RANSAC fundamental matrix first; its inliers are refined, wrong
    matches (random positions) are left where they are; every move keeps the geometry."""
    from d2cli.colmap.verification import epipolar_geometry, sampson_error
    from d2cli.refine import refine_verified

    H = np.array([[1, 0, 1.3], [0, 1, -0.7], [0, 0, 1.0]])
    img1 = warp(photo, H)
    rng = np.random.default_rng(3)
    kp0 = np.concatenate([grid_points(8), grid_points(4, 60, 200) + 7])
    truth = apply(H, kp0[:64])
    kp1 = np.concatenate([truth + rng.uniform(-2, 2, truth.shape).astype(np.float32),
                          rng.uniform(30, 225, (16, 2)).astype(np.float32)])
    m = np.stack([np.arange(80)] * 2, 1)
    counts: dict[str, int] = {}
    _, k1 = refine_verified(photo, img1, kp0, kp1, m, IMAGE, counts=counts)
    F, inliers = epipolar_geometry(kp0, kp1, m)
    assert inliers[:64].all() and inliers[64:].sum() <= 4  # a plane: F is loose
    assert np.array_equal(k1[64:][~inliers[64:]], kp1[64:][~inliers[64:]])  # not verified
    after = np.linalg.norm(k1[:64] - truth, axis=1)
    assert np.median(after) < 0.35 and counts["moved"] >= 60
    assert (sampson_error(F, kp0[inliers], k1[inliers]) <= 4.0).all()
    assert sum(counts.values()) == inliers.sum()


def test_sampson_error_is_the_distance_to_the_epipolar_line_for_a_translation() -> None:
    from d2cli.colmap.verification import sampson_error

    F = np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0.0]])  # x-translation: lines are y = const
    x0 = np.array([[10.0, 20.0], [5.0, 7.0]])
    x1 = np.array([[40.0, 23.0], [0.0, 7.0]])
    # the Sampson error splits the distance between the two views: |dy| / sqrt(2)
    np.testing.assert_allclose(sampson_error(F, x0, x1), [3 / np.sqrt(2), 0.0], atol=1e-12)


def test_neighbour_prediction_follows_the_local_motion_and_ignores_wrong_matches() -> None:
    """Each match's point predicted from its nearest *other* matches' affine motion: exact
    for an affine motion, unspoilt by a wrong neighbour, NaN for neighbours on a line."""
    import torch

    from d2cli.refine.search import neighbour_drift, neighbour_prediction

    A = np.array([[1.1, 0.2], [-0.15, 0.9]])
    x0 = grid_points(6, 20, 220).astype(np.float64)
    x1 = x0 @ A.T + [5.0, -3.0]
    wrong = x1.copy()
    wrong[14] += [25.0, -18.0]  # one wrong match among its neighbours' neighbours
    t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    pred = neighbour_prediction(t(x0), t(wrong), 12).numpy()
    others = np.arange(len(x0)) != 14
    assert np.abs(pred[others] - x1[others]).max() < 1e-2
    assert np.abs(pred[14] - x1[14]).max() < 1e-2  # left out of its own prediction
    line = np.c_[np.linspace(0, 200, 20), np.full(20, 50.0)]
    assert np.isnan(neighbour_prediction(t(line), t(line + 3), 12).numpy()).all()
    # drift: a 6 px jump away from the prediction, a 6 px move onto it, a 1 px polish
    after = x1.copy()
    after[3] += [6.0, 0.0]
    start = x1.copy()
    start[7] += [0.0, 6.0]
    after[9] += [0.6, 0.8]
    drift = neighbour_drift(t(x0), t(start), t(after), 12).numpy()
    assert drift[3] == pytest.approx(6.0, abs=0.05) and drift[7] == pytest.approx(-6.0, abs=0.05)
    assert drift[9] == pytest.approx(1.0, abs=0.05)
    assert np.abs(np.delete(drift, [3, 7, 9])).max() < 0.05


def test_a_jump_along_the_epipolar_line_to_a_look_alike_is_undone(photo: np.ndarray) -> None:
    """F checks only across its epipolar lines. A copy of a keypoint's surroundings 9 px
    along its line, with the true spot damaged, draws the search there: F alone keeps
    that move, the neighbours' motion does not, so refine_verified leaves the point."""
    from d2cli.colmap.verification import epipolar_geometry, sampson_error
    from d2cli.refine import refine_pair, refine_verified

    H = np.array([[1, 0, 1.3], [0, 1, -0.7], [0, 0, 1.0]])
    img1 = warp(photo, H)
    rng = np.random.default_rng(5)
    kp0 = grid_points(8)
    truth = apply(H, kp0)
    kp1 = truth + rng.uniform(-1, 1, truth.shape).astype(np.float32)
    m = np.stack([np.arange(64)] * 2, 1)
    F, inliers = epipolar_geometry(kp0, kp1, m)
    assert inliers.all()
    i = 27
    line = F @ np.r_[kp0[i], 1.0]  # a x + b y + c = 0 in image 1
    along = np.array([line[1], -line[0]]) / np.hypot(line[0], line[1])
    decoy = truth[i] + 9 * along
    assert sampson_error(F, kp0[i:i + 1], decoy[None])[0] < 4.0  # F would keep the jump
    y, x = np.round(truth[i]).astype(int)[::-1]
    dy, dx = np.round(decoy).astype(int)[::-1] - (y, x)
    faked = img1.copy()
    faked[y - 6:y + 7, x - 6:x + 7] = rng.integers(0, 256, (13, 13, 3))  # the true spot, damaged
    faked[y + dy - 8:y + dy + 9, x + dx - 8:x + dx + 9] = img1[y - 8:y + 9, x - 8:x + 9]
    _, jumped = refine_pair(photo, faked, kp0, kp1, m, RefineConfig())
    assert np.linalg.norm(jumped[i] - decoy) < 1.5  # the look-alike draws the search
    _, k1 = refine_verified(photo, faked, kp0, kp1, m, RefineConfig())
    assert np.array_equal(k1[i], kp1[i])  # undone: it left its neighbours' motion
    others = np.arange(64) != i
    assert np.median(np.linalg.norm(k1[others] - truth[others], axis=1)) < 0.35
