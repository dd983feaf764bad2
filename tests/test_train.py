"""d2 train: soft detection, loss, ground-truth geometry, data sources, training, resume, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from d2cli.errors import UsageError
from d2cli.model import CONV_INDICES, CONV_NAMES, PREFIX, load_d2net, read_state_dict
from d2cli.train import Trainer, TrainSettings, parse_layers, train
from d2cli.train.augment import HomographyRange, random_homography, warp_image
from d2cli.train.loss import cell_centres, pair_loss, pixels_to_cells, spread_loss
from d2cli.train.soft_detection import soft_detection_scores
from d2cli.train.sources import ColmapTracks, DepthScenes, HomographyFolder, open_source
from d2cli.train.warp import interpolate_depth, warp_depth, warp_homography

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "d2cli" / "data" / "sacre_coeur"


# --------------------------------------------------------------------------- soft detection
def test_soft_detection_all_zero_map_and_cells_give_no_nan():
    zero = torch.zeros(1, 512, 8, 8)
    s = soft_detection_scores(zero)
    assert torch.isfinite(s).all() and (s == 0).all()
    neg = -torch.rand(1, 512, 8, 8)  # every activation <= 0: ReLU gives an all-zero map
    assert (soft_detection_scores(neg) == 0).all()
    x = torch.rand(2, 512, 8, 8)
    x[0, :, 2:5, 3:6] = -1.0  # cells where all channels are <= 0
    s = soft_detection_scores(x)
    assert torch.isfinite(s).all()
    assert (s[0, 2:5, 3:6] == 0).all()
    assert torch.allclose(s.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)


def test_soft_detection_is_the_paper_formula():
    torch.manual_seed(0)
    x = torch.rand(1, 6, 5, 4) * 3  # positive, so the epsilons do not matter
    s = soft_detection_scores(x)[0]
    d = x[0] / x.max()
    expected = torch.zeros(5, 4)
    for i in range(5):
        for j in range(4):
            best = 0.0
            for k in range(6):
                window = 0.0
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        ii, jj = i + di, j + dj
                        inside = 0 <= ii < 5 and 0 <= jj < 4
                        window += math.exp(d[k, ii, jj]) if inside else 1.0  # padding exp(0)
                alpha = math.exp(d[k, i, j]) / window
                beta = x[0, k, i, j] / x[0, :, i, j].max()
                best = max(best, float(alpha * beta))
            expected[i, j] = best
    assert torch.allclose(s, expected / expected.sum(), atol=1e-6)


# --------------------------------------------------------------------------- loss
def test_loss_against_a_brute_force_triplet_computation():
    torch.manual_seed(1)
    c, h, w = 16, 6, 7
    f1, f2 = torch.randn(c, h, w), torch.randn(c, h, w)
    s1, s2 = torch.rand(h, w), torch.rand(h, w)
    cells1 = torch.tensor([[0, 0], [2, 3], [5, 6], [3, 1]])
    cells2 = torch.tensor([[1, 1], [2, 2], [4, 6], [0, 5]])
    margin, radius = 1.0, 1
    got = pair_loss(f1, f2, s1, s2, cells1, cells2, margin, radius)

    def desc(f, i, j):
        return f[:, i, j] / f[:, i, j].norm()

    num = den = 0.0
    for (i1, j1), (i2, j2) in zip(cells1.tolist(), cells2.tolist(), strict=True):
        a, b = desc(f1, i1, j1), desc(f2, i2, j2)
        pos = float(((a - b) ** 2).sum())
        neg = 10.0
        for i in range(h):
            for j in range(w):
                if max(abs(i - i2), abs(j - j2)) > radius:  # negatives for a, in image 2
                    neg = min(neg, float(((a - desc(f2, i, j)) ** 2).sum()))
                if max(abs(i - i1), abs(j - j1)) > radius:  # negatives for b, in image 1
                    neg = min(neg, float(((b - desc(f1, i, j)) ** 2).sum()))
        weight = float(s1[i1, j1] * s2[i2, j2])
        num += weight * max(0.0, margin + pos - neg)
        den += weight
    assert got is not None and abs(float(got) - num / den) < 1e-5


def test_loss_is_zero_for_distinct_matching_descriptors_and_none_without_weight():
    h = w = 5
    f = torch.eye(25).reshape(25, h, w)  # one orthogonal descriptor per cell
    cells = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"),
                        -1).reshape(-1, 2)
    s = torch.full((h, w), 1 / 25)
    # positives at distance 0, every negative at squared distance 2: relu(0.5 + 0 - 2) = 0
    assert float(pair_loss(f, f.clone(), s, s, cells, cells, margin=0.5, safe_radius=0)) == 0.0
    assert pair_loss(f, f, torch.zeros(h, w), s, cells, cells) is None


def test_cell_centres_and_pixels_to_cells_round_trip():
    centres = cell_centres(4, 3)
    assert centres[0].tolist() == [3.5, 3.5] and centres[-1].tolist() == [27.5, 19.5]
    cells, inside = pixels_to_cells(centres, 4, 3)
    assert inside.all()
    assert cells.tolist() == [[i, j] for i in range(4) for j in range(3)]
    _, inside = pixels_to_cells(torch.tensor([[-4.5, 3.5], [3.5, 24.0]]), 4, 3)
    assert inside.tolist() == [False, False]


# --------------------------------------------------------------------------- depth warp
def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _project(K: np.ndarray, pose: np.ndarray, X: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> COLMAP pixels (N, 2) = (x, y), and depth (N,)."""
    P = (pose[:3, :3] @ X.T + pose[:3, 3:4]).T
    uv = (K @ P.T).T
    return uv[:, :2] / uv[:, 2:3], P[:, 2]


def test_warp_depth_geometry_is_exact_on_a_synthetic_scene():
    # depth linear in the pixel grid, so bilinear interpolation is exact
    H, W = 60, 80
    K1 = np.array([[70.0, 0, 40.0], [0, 72.0, 30.0], [0, 0, 1]])
    K2 = np.array([[65.0, 0, 38.0], [0, 66.0, 31.0], [0, 0, 1]])
    pose1 = np.eye(4)
    pose1[:3, :3] = _rotation(np.array([0.2, 1.0, 0.1]), 4.0)
    pose1[:3, 3] = [0.1, -0.2, 0.3]
    pose2 = np.eye(4)
    pose2[:3, :3] = _rotation(np.array([0.1, -1.0, 0.3]), 7.0)
    pose2[:3, 3] = [-0.4, 0.05, 0.2]
    ii, jj = np.mgrid[0:H, 0:W].astype(np.float64)
    depth1 = 5.0 + 0.01 * ii - 0.004 * jj
    bbox1, bbox2 = (3, 5), (1, 2)  # crops: (top, left) in the full images
    pos1 = torch.from_numpy(np.stack([ii.ravel() * 0.9 + 0.25, jj.ravel() * 0.9 + 0.4], 1))
    t = torch.from_numpy
    # depth2: true depth everywhere (tolerance test below), so only geometry decides
    pos2, ids = warp_depth(pos1, t(depth1), t(K1), t(pose1), bbox1, t(np.ones((H, W))),
                           t(K2), t(pose2), bbox2, tolerance=1e9)
    p = pos1.numpy()
    z = 5.0 + 0.01 * p[:, 0] - 0.004 * p[:, 1]
    u, v = p[:, 1] + bbox1[1] + 0.5, p[:, 0] + bbox1[0] + 0.5
    Xc = np.stack([(u - K1[0, 2]) * z / K1[0, 0], (v - K1[1, 2]) * z / K1[1, 1], z], 1)
    Xw = (np.linalg.inv(pose1[:3, :3]) @ (Xc.T - pose1[:3, 3:4])).T
    xy2, _ = _project(K2, pose2, Xw)
    expected = np.stack([xy2[:, 1] - bbox2[0] - 0.5, xy2[:, 0] - bbox2[1] - 0.5], 1)
    inside1 = (p[:, 0] <= H - 1) & (p[:, 1] <= W - 1)
    inside2 = ((expected[:, 0] >= 0) & (expected[:, 0] <= H - 1) & (expected[:, 1] >= 0)
               & (expected[:, 1] <= W - 1))
    assert ids.tolist() == np.flatnonzero(inside1 & inside2).tolist()
    assert 0.2 * len(p) < len(ids) < len(p)  # some points leave image 2, most do not
    np.testing.assert_allclose(pos2.numpy(), expected[ids.numpy()], atol=1e-9)


def test_warp_depth_drops_occluded_and_unknown_depth():
    # fronto-parallel plane at Z = 4 seen by two cameras translated sideways: depth 4 in both
    H, W = 40, 50
    K = torch.tensor([[50.0, 0, 25.0], [0, 50.0, 20.0], [0, 0, 1]], dtype=torch.float64)
    pose1 = torch.eye(4, dtype=torch.float64)
    pose2 = torch.eye(4, dtype=torch.float64)
    pose2[0, 3] = -0.8  # camera 2 is 0.8 to the right: image content shifts left by 10 px
    depth1 = torch.full((H, W), 4.0, dtype=torch.float64)
    depth1[:5, :] = 0  # unknown depth in image 1
    depth2 = torch.full((H, W), 4.0, dtype=torch.float64)
    depth2[10:20, 10:20] = 2.0  # an occluder in front of the plane, seen only by camera 2
    pos1 = cell_centres(H // 4, W // 4, stride=4)
    pos2, ids = warp_depth(pos1, depth1, K, pose1, (0, 0), depth2, K, pose2, (0, 0))
    np.testing.assert_allclose(pos2[:, 0], pos1[ids, 0], atol=1e-9)
    np.testing.assert_allclose(pos2[:, 1], pos1[ids, 1] - 10.0, atol=1e-9)
    assert (pos1[ids, 0] >= 4).all()  # rows 0..4 of image 1 have no depth (bilinear rule)
    in_occluder = (pos2[:, 0] > 9) & (pos2[:, 0] < 20) & (pos2[:, 1] > 9) & (pos2[:, 1] < 20)
    assert not in_occluder.any()
    expect = [k for k, (r, c) in enumerate(pos1.tolist())
              if r >= 5 and 0 <= c - 10 <= W - 1
              and not (9 <= r <= 20 and 9 <= c - 10 <= 20)]
    assert set(expect) <= set(ids.tolist())


def test_interpolate_depth_needs_four_known_neighbours():
    d = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]], dtype=torch.float64)
    z, ids = interpolate_depth(torch.tensor([[0.5, 0.5], [0.5, 1.5], [1.0, 2.0], [1.5, 0.0]],
                                            dtype=torch.float64), d)
    assert ids.tolist() == [0, 2]  # [1] touches a 0 depth, [3] leaves the map
    assert z.tolist() == [2.5, 5.0]


# --------------------------------------------------------------------------- homographies
def test_homography_pair_image_content_matches_its_correspondences():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:300, 0:400].astype(np.float32)
    smooth = np.stack([127 + 100 * np.sin(xx / 23 + yy / 31), 127 + 100 * np.cos(yy / 17),
                       127 + 100 * np.sin((xx - yy) / 29)], axis=2)
    H = random_homography(rng, 128, HomographyRange())
    top, left = 70, 120
    full_to_2 = H @ np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]])
    crop2 = warp_image(smooth, np.linalg.inv(full_to_2), (128, 128))
    pos1 = cell_centres(16, 16)
    pos2, ids = warp_homography(pos1, H, (128, 128))
    assert len(ids) > 30
    for (r1, c1), (r2, c2) in zip(pos1[ids].tolist(), pos2.tolist(), strict=True):
        want = np.array([127 + 100 * np.sin((c1 + left) / 23 + (r1 + top) / 31),
                         127 + 100 * np.cos((r1 + top) / 17),
                         127 + 100 * np.sin(((c1 + left) - (r1 + top)) / 29)])
        got = _bilinear(crop2, r2, c2)
        assert np.abs(got - want).max() < 3.0  # bilinear resampling of a smooth image


def _bilinear(img: np.ndarray, r: float, c: float) -> np.ndarray:
    r0, c0 = int(np.floor(r)), int(np.floor(c))
    r1, c1 = min(r0 + 1, img.shape[0] - 1), min(c0 + 1, img.shape[1] - 1)
    a, b = r - r0, c - c0
    return ((1 - a) * (1 - b) * img[r0, c0] + (1 - a) * b * img[r0, c1]
            + a * (1 - b) * img[r1, c0] + a * b * img[r1, c1])


def test_homography_folder_pairs_are_reproducible_and_dense(tmp_path):
    src = HomographyFolder(SAMPLES, max_edge=400)
    a = src.pair(2, np.random.default_rng([5, 1]), 128)
    b = src.pair(2, np.random.default_rng([5, 1]), 128)
    assert np.array_equal(a.image2, b.image2) and torch.equal(a.pos2, b.pos2)
    assert a.image1.shape == a.image2.shape == (128, 128, 3)
    assert len(a.pos1) > 50 and (a.pos2 >= 0).all() and (a.pos2 <= 127).all()


# --------------------------------------------------------------------------- COLMAP scenes
def _synthetic_scene(root: Path, with_depth: bool) -> dict:
    """Two PINHOLE cameras looking at a textured plane; COLMAP text model, images, depths."""
    H, W = 160, 200
    K = np.array([[180.0, 0, 100.0], [0, 180.0, 80.0], [0, 0, 1]])
    poses = [np.eye(4), np.eye(4)]
    poses[1][:3, :3] = _rotation(np.array([0.0, 1.0, 0.0]), 3.0)
    poses[1][:3, 3] = [-0.3, 0.02, 0.05]
    n, dist = np.array([0.05, -0.1, 1.0]), 6.0  # plane n.X = dist (world = camera 1)
    (root / "images").mkdir(parents=True)
    (root / "sparse").mkdir()
    if with_depth:
        (root / "depths").mkdir()
    names = ["a.png", "b.png"]
    for k, name in enumerate(names):
        # pixel colours encode the pixel: R = row, G = column (to find crops back)
        rr, cc = np.mgrid[0:H, 0:W]
        img = np.stack([rr, cc, (rr * 7 + cc * 3) % 256], 2).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / name)
        if with_depth:
            R, t = poses[k][:3, :3], poses[k][:3, 3]
            n_c = R @ n
            d_c = dist + n_c @ t
            uv1 = np.stack([cc + 0.5, rr + 0.5, np.ones_like(rr)], 0).reshape(3, -1)
            rays = np.linalg.inv(K) @ uv1
            np.save(root / "depths" / f"{Path(name).stem}.npy",
                    (d_c / (n_c @ rays)).reshape(H, W))
    rng = np.random.default_rng(0)
    rays = np.linalg.inv(K) @ np.stack([rng.uniform(20, 180, 300), rng.uniform(20, 140, 300),
                                        np.ones(300)])
    X = (rays * (dist / (n @ rays))).T
    obs = [_project(K, p, X)[0] for p in poses]
    lines = {0: [], 1: []}
    for k in range(2):
        lines[k] = " ".join(f"{x:.10f} {y:.10f} {i + 1}" for i, (x, y) in enumerate(obs[k]))
    (root / "sparse" / "cameras.txt").write_text(f"1 PINHOLE {W} {H} 180 180 100 80\n")
    img_lines = []
    for k, name in enumerate(names):
        R = poses[k][:3, :3]
        w = np.sqrt(max(0.0, 1 + np.trace(R))) / 2
        q = [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w),
             (R[1, 0] - R[0, 1]) / (4 * w)]
        t = poses[k][:3, 3]
        img_lines.append(f"{k + 1} {' '.join(f'{v:.12f}' for v in q)} "
                         f"{' '.join(f'{v:.12f}' for v in t)} 1 {name}\n{lines[k]}\n")
    (root / "sparse" / "images.txt").write_text("".join(img_lines))
    (root / "sparse" / "points3D.txt").write_text("".join(
        f"{i + 1} {x[0]} {x[1]} {x[2]} 128 128 128 0.1 1 {i} 2 {i}\n" for i, x in enumerate(X)))
    return {"K": K, "poses": poses, "obs": obs, "X": X, "H": H, "W": W}


def _crop_origin_from_colours(img: np.ndarray) -> tuple[int, int]:
    return int(img[0, 0, 0]), int(img[0, 0, 1])


def test_colmap_tracks_correspondences_are_the_observations(tmp_path):
    scene = _synthetic_scene(tmp_path / "s", with_depth=False)
    src = open_source(str(tmp_path / "s"), max_edge=None)
    assert isinstance(src, ColmapTracks) and len(src) == 2
    p = src.pair(0, np.random.default_rng(0), 128)
    top1, left1 = _crop_origin_from_colours(p.image1)
    top2, left2 = _crop_origin_from_colours(p.image2)
    (x1, y1), (x2, y2) = scene["obs"][0].T, scene["obs"][1].T
    expected = {(round(y - 0.5 - top1, 6), round(x - 0.5 - left1, 6)):
                (y2_ - 0.5 - top2, x2_ - 0.5 - left2)
                for x, y, x2_, y2_ in zip(x1, y1, x2, y2, strict=True)}
    assert len(p.pos1) >= 16
    for a, b in zip(p.pos1.tolist(), p.pos2.tolist(), strict=True):
        want = expected[(round(a[0], 6), round(a[1], 6))]
        assert abs(b[0] - want[0]) < 1e-6 and abs(b[1] - want[1]) < 1e-6
    inside = [k for k, ((r1, c1), (r2, c2)) in enumerate(expected.items())
              if 0 <= r1 <= 127 and 0 <= c1 <= 127 and 0 <= r2 <= 127 and 0 <= c2 <= 127]
    assert len(p.pos1) == len(inside)


def test_depth_scene_pairs_follow_the_true_geometry(tmp_path):
    scene = _synthetic_scene(tmp_path / "s", with_depth=True)
    src = open_source(str(tmp_path / "s"))
    assert isinstance(src, DepthScenes) and len(src) == 2
    p = src.pair(0, np.random.default_rng(1), 128)
    top1, left1 = _crop_origin_from_colours(p.image1)
    top2, left2 = _crop_origin_from_colours(p.image2)
    assert len(p.pos1) > 100  # most of the 16x16 cells
    K, pose2 = scene["K"], scene["poses"][1]
    n, dist = np.array([0.05, -0.1, 1.0]), 6.0
    pos1 = p.pos1.numpy()
    uv = np.stack([pos1[:, 1] + left1 + 0.5, pos1[:, 0] + top1 + 0.5, np.ones(len(pos1))])
    rays = np.linalg.inv(K) @ uv
    X = (rays * (dist / (n @ rays))).T  # the plane point seen at pos1 (camera 1 = world)
    xy2, _ = _project(K, pose2, X)
    expected = np.stack([xy2[:, 1] - 0.5 - top2, xy2[:, 0] - 0.5 - left2], 1)
    # depth is bilinearly interpolated on a plane (1/depth is linear): sub-1e-3 px
    np.testing.assert_allclose(p.pos2.numpy(), expected, atol=1e-3)


def test_open_source_errors(tmp_path):
    with pytest.raises(Exception, match="no such folder"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no images found"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(Exception, match="no COLMAP model"):
        open_source(f"colmap:{tmp_path / 'empty'}")


# --------------------------------------------------------------------------- training
def _settings(**kw) -> TrainSettings:
    base = dict(data=(str(SAMPLES),), init="hed-vgg16", crop=128, steps_per_epoch=3, epochs=2,
                val_pairs=2, val_fraction=0.2, min_matches=32, max_edge=400, lr=1e-4,
                checkpoint_every=2)
    base.update(kw)
    return TrainSettings(**base)


def test_parse_layers():
    assert parse_layers("conv4_3") == ["conv4_3"]
    assert parse_layers("conv4") == ["conv4_1", "conv4_2", "conv4_3"]
    assert parse_layers("conv4_3,conv3_3") == ["conv3_3", "conv4_3"]
    assert parse_layers("all") == list(CONV_NAMES)
    with pytest.raises(UsageError):
        parse_layers("conv9")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_on_real_images_lower_the_loss(tmp_path, precision):
    tr = Trainer(_settings(precision=precision), tmp_path)
    assert tr.precision == precision and tr.channels_last == (precision == "bf16")
    batch = tr.training_pairs(0) + tr.training_pairs(1)
    with torch.no_grad():
        before, _ = tr.batch_loss(batch)
        if precision == "bf16":  # really bf16: the loss is close to fp32's, not equal
            ref, _ = Trainer(_settings(), tmp_path).batch_loss(batch)
            assert float(before) != float(ref)
            assert float(before) == pytest.approx(float(ref), rel=0.05)
    for _ in range(6):
        loss, skipped = tr.batch_loss(batch)
        assert skipped == 0
        tr.optimizer.zero_grad()
        loss.backward()
        tr.optimizer.step()
    with torch.no_grad():
        after, _ = tr.batch_loss(batch)
    assert float(after) < float(before) - 1e-3


def test_only_the_chosen_layers_change(tmp_path):
    init = read_state_dict(Path(__file__).parents[1] / "src/d2cli/weights/hed-vgg16.pth")
    res = train(_settings(epochs=1, steps_per_epoch=2, val_pairs=0, train_layers="conv4_2"),
                tmp_path / "run", progress=None)
    sd = read_state_dict(tmp_path / "run" / "checkpoints" / "d2.01.pth")
    for idx, name in zip(CONV_INDICES, CONV_NAMES, strict=True):
        same = torch.equal(sd[f"{PREFIX}{idx}.weight"], init[f"{PREFIX}{idx}.weight"])
        assert same == (name != "conv4_2"), name
    assert res.trainable == ["conv4_2"]


def test_resume_continues_bit_identically(tmp_path):
    s = _settings()
    whole = train(s, tmp_path / "whole")
    assert whole.steps == 6 and whole.final is not None
    first = train(s, tmp_path / "split", max_steps=3)
    assert first.steps == 3 and first.final is None
    second = train(s, tmp_path / "split")
    assert second.resumed_from == 3 and second.steps == 6
    a = torch.load(tmp_path / "whole" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "state.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    assert a["val_losses"] == b["val_losses"]
    for name in ("d2.final.pth", "checkpoints/d2.01.pth", "checkpoints/d2.02.pth"):
        assert (tmp_path / "whole" / name).read_bytes() != b""
        wa, wb = (read_state_dict(tmp_path / d / name) for d in ("whole", "split"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the log of the split run has each step once
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "log.jsonl").read_text()
             .splitlines() if json.loads(x)["event"] == "train"]
    assert steps == sorted(set(steps))


def test_resume_refuses_other_settings(tmp_path):
    train(_settings(epochs=1), tmp_path, max_steps=1)
    with pytest.raises(UsageError, match="lr"):
        train(_settings(epochs=1, lr=5e-4), tmp_path)


# --------------------------------------------------------------------------- CLI
def test_cli_train_end_to_end(tmp_path, d2):
    out = tmp_path / "run"
    args = ["train", str(SAMPLES), "--out", str(out), "--model", "hed-vgg16", "--crop", "128",
            "--epochs", "1", "--steps-per-epoch", "2", "--val-pairs", "2", "--min-matches", "32",
            "--max-edge", "400", "--lr", "1e-4", "--json"]
    proc = d2(*args)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["steps"] == 2 and set(s["val_losses"]) == {"0", "1"}
    final = out / "d2.final.pth"
    raw = torch.load(final, weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["model"].values())
    net = load_d2net(final)  # the test-time network takes train-time weights
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 7, 7)
    events = [json.loads(x)["event"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "done" and events.count("epoch") == 2
    again = d2(*args)  # finished: nothing more to do
    assert again.returncode == 0 and json.loads(again.stdout)["resumed_from"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--train-layers", "conv7"], "unknown layer"),
    (["--crop", "100"], "multiple of 8"),
    (["--model", "nope"], "unknown model"),
])
def test_cli_train_bad_input_is_one_line(tmp_path, d2, extra, message):
    proc = d2("train", str(SAMPLES), "--out", str(tmp_path / "o"), *extra)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_train_missing_data_folder(tmp_path, d2):
    proc = d2("train", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_soft_detection_scores_are_differentiable_without_nan():
    x = torch.zeros(1, 512, 4, 4, requires_grad=True)
    s = soft_detection_scores(x)
    s.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert F.relu(x).sum() == 0
    # away from ReLU's kink the gradient is the true one (finite differences, float64), and
    # it is zero exactly where ReLU cuts the input (a cell of all-negative channels), and
    # non-zero in every other cell
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, 4, 5, generator=g, dtype=torch.float64) + 0.1)
    x[0, :, 1, 2] = -0.5
    x.requires_grad_(True)
    w = torch.rand(4, 5, generator=g, dtype=torch.float64)  # a loss that weighs each cell
    assert torch.autograd.gradcheck(lambda t: (soft_detection_scores(t) * w).sum(), (x,))
    (soft_detection_scores(x) * w).sum().backward()
    per_cell = x.grad[0].abs().sum(dim=0)  # (4, 5)
    assert per_cell[1, 2] == 0
    per_cell[1, 2] = 1.0
    assert (per_cell > 0).all()  # every other cell's activations move its score


def test_relu_descriptors_option_trains_on_test_time_descriptors(tmp_path):
    """relu_descriptors: the loss of each pair is the triplet loss of the descriptors the
    test-time network gives (relu of conv4_3); without it, of raw conv4_3 (the reference).
    The detection scores are the same either way."""
    from d2cli.images import preprocess

    raw = Trainer(_settings(), tmp_path / "a")
    relu = Trainer(_settings(relu_descriptors=True), tmp_path / "b")
    batch = raw.training_pairs(0)
    usable = [(p, raw._matches(src, p)) for src, p in batch if p is not None]
    usable = [(p, m) for p, m in usable if m is not None]
    assert usable
    s = raw.s
    x = torch.from_numpy(np.stack([preprocess(im, s.preprocessing)
                                   for p, _ in usable for im in (p.image1, p.image2)]))
    test_time = load_d2net(raw.init_model.path, stride=8)  # what d2 extract runs
    with torch.no_grad():
        a, _ = raw.batch_loss(batch)
        b, _ = relu.batch_loss(batch)
        conv = raw.net(x)
        desc = test_time(x)
        assert (conv < 0).any() and torch.allclose(desc, F.relu(conv))
        scores = soft_detection_scores(conv)

        def loss_of(d: torch.Tensor) -> torch.Tensor:
            return torch.stack([pair_loss(d[2 * k], d[2 * k + 1], scores[2 * k],
                                          scores[2 * k + 1], c1, c2, s.margin, s.safe_radius)
                                for k, (_, (c1, c2)) in enumerate(usable)]).mean()

        on_raw, on_test_time = loss_of(conv), loss_of(desc)
    assert abs(float(on_raw) - float(on_test_time)) > 1e-3  # the two are told apart
    assert float(a) == pytest.approx(float(on_raw), rel=1e-5)
    assert float(b) == pytest.approx(float(on_test_time), rel=1e-5)


def test_spread_loss_punishes_collapse_and_not_random_descriptors():
    g = torch.Generator().manual_seed(0)
    rand1 = F.normalize(torch.randn(300, 512, generator=g), dim=1)
    rand2 = F.normalize(torch.randn(400, 512, generator=g), dim=1)
    assert float(spread_loss(rand1, rand2)) < 1e-4  # cosines of random unit vectors
    one = F.normalize(torch.ones(1, 512), dim=1)
    collapsed = F.normalize(one + 0.005 * torch.randn(300, 512, generator=g), dim=1)
    assert float(spread_loss(collapsed, collapsed)) > 1.0  # mean cosine near 1: 1 + (1 - 1/C)
    # the paper's loss plus spread x regulariser, exactly
    f1, f2 = (torch.randn(512, 4, 4, generator=g) for _ in range(2))
    s = torch.full((4, 4), 1 / 16)
    cells = torch.tensor([[0, 0], [3, 3], [1, 2]])
    plain = pair_loss(f1, f2, s, s, cells, cells, safe_radius=1)
    with_spread = pair_loss(f1, f2, s, s, cells, cells, safe_radius=1, spread=2.0)
    d1, d2 = (F.normalize(f.reshape(512, -1), dim=0).t() for f in (f1, f2))
    assert torch.allclose(with_spread, plain + 2.0 * spread_loss(d1, d2))


def test_spread_option_changes_the_loss_and_is_validated(tmp_path):
    plain = Trainer(_settings(), tmp_path / "a")
    batch = plain.training_pairs(0)
    with torch.no_grad():
        a, _ = plain.batch_loss(batch)
        b1, _ = Trainer(_settings(spread=1.0), tmp_path / "b").batch_loss(batch)
        b2, _ = Trainer(_settings(spread=2.0), tmp_path / "c").batch_loss(batch)
    # the option is the weight of a positive term added to the paper's loss
    assert float(b1) > float(a) + 1e-4
    assert float(b2) - float(a) == pytest.approx(2 * (float(b1) - float(a)), rel=1e-4)
    with pytest.raises(UsageError, match="spread"):
        _settings(spread=-1.0)


def test_warp_option_scales_the_homographies(tmp_path):
    r = HomographyRange()
    assert r.scaled(1.0) == r
    double = r.scaled(2.0)
    assert double.max_angle == 2 * r.max_angle and double.max_perspective == 2 * r.max_perspective
    assert double.scale == pytest.approx((r.scale[0] ** 2, r.scale[1] ** 2))

    def mean_cell_motion(warp: float) -> float:
        src = Trainer(_settings(warp=warp), tmp_path / str(warp)).sources[0]
        moves = []
        for seed in range(12):  # the same draws, wider ranges: correspondences move further
            p = src.pair(0, np.random.default_rng([9, seed]), 128)
            if p is not None:
                moves.append(float((p.pos2 - p.pos1).norm(dim=1).mean()))
        return float(np.mean(moves))

    assert isinstance(Trainer(_settings(warp=0.5), tmp_path / "h").sources[0], HomographyFolder)
    assert mean_cell_motion(2.0) > mean_cell_motion(1.0) > mean_cell_motion(0.25)
    with pytest.raises(UsageError, match="warp"):
        _settings(warp=0.0)


def test_resume_of_a_state_written_before_spread_and_warp_existed(tmp_path):
    s = _settings()
    train(s, tmp_path, max_steps=2)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    for k in ("spread", "warp"):  # what a state of the previous release holds
        del state["settings"][k]
    torch.save(state, tmp_path / "state.pt")
    res = train(s, tmp_path)
    assert res.resumed_from == 2 and res.steps == 6
    with pytest.raises(UsageError, match="spread"):  # it ran without the regulariser
        train(_settings(spread=1.0, epochs=3), tmp_path)
