"""The scale benchmark's synthetic scene through the real pipeline (issue 24, item 4).

``benchmarks/synthetic_scene.py`` writes ~60 images of a street with known cameras as a
real features file; ``d2 pairs sequential``, ``d2 match``, ``d2 colmap-import`` (pycolmap
verification) and ``d2 reconstruct`` run on it as processes, and the model must register
>= 99 % of the images with a median camera-centre error under 0.5 % of the scene extent
after a similarity alignment. The alignment helper itself is checked against known
perturbations, so that the accuracy assertion can fail.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic_scene import (  # noqa: E402
    SceneConfig,
    aligned_errors,
    evaluate_model,
    generate_scene,
    iter_neighbour_pairs,
    match_precision,
    quaternion_to_rotation,
    rotation_to_quaternion,
    scene_extent,
)

from d2cli.io.features import FeatureFile  # noqa: E402

SMALL = SceneConfig(num_images=60, keypoints=300, query_every=0, seed=3)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_alignment_error_helper_measures_known_perturbations() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(-20, 20, (50, 3))
    rot, scale, shift = _random_rotation(rng), 0.37, np.array([5.0, -3.0, 12.0])
    # an exact similarity of the ground truth: aligned back to (numerically) zero error
    err, (s, r, t) = aligned_errors(scale * gt @ rot.T + shift, gt)
    assert err.max() < 1e-9
    assert s == pytest.approx(1 / scale) and np.allclose(r, rot.T)
    # known noise on every centre (in ground-truth units): the error is that noise
    noise = 0.05 * rng.standard_normal(gt.shape)
    err, _ = aligned_errors(scale * (gt + noise) @ rot.T + shift, gt)
    assert np.median(err) == pytest.approx(np.median(np.linalg.norm(noise, axis=1)), rel=0.25)
    # one camera 10 units off stands out; the others stay put
    moved = gt.copy()
    moved[7] += [0.0, 10.0, 0.0]
    err, _ = aligned_errors(scale * moved @ rot.T + shift, gt)
    assert err[7] > 8.0 and np.median(err) < 0.5


def test_scene_extent_is_the_largest_distance() -> None:
    rng = np.random.default_rng(2)
    for pts in (rng.random((400, 3)), rng.standard_normal((300, 3)) * [30, 1, 1],
                np.cumsum(rng.standard_normal((500, 3)), 0)):
        brute = np.linalg.norm(pts[:, None] - pts[None], axis=2).max()
        assert scene_extent(pts) == pytest.approx(brute, rel=1e-12)


def test_quaternion_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        rot = _random_rotation(rng)
        assert np.allclose(quaternion_to_rotation(rotation_to_quaternion(rot)), rot, atol=1e-12)


def test_generator_is_deterministic_and_a_prefix(tmp_path: Path) -> None:
    small = SceneConfig(num_images=6, keypoints=200, query_every=3, seed=5)
    a = generate_scene(tmp_path / "a", small)
    b = generate_scene(tmp_path / "b", small)
    c = generate_scene(tmp_path / "c", replace(small, num_images=9))
    assert a.query_names == ["query/000000.jpg", "query/000003.jpg"]
    with FeatureFile(a.files["features"]) as fa, FeatureFile(b.files["features"]) as fb, \
            FeatureFile(c.files["features"]) as fc:
        assert fa.names == a.db_names and len(fc.names) == 9
        for name in fa.names:
            x, y, z = fa[name], fb[name], fc[name]
            assert np.array_equal(x.keypoints, y.keypoints) and np.array_equal(x.keypoints, z.keypoints)
            assert np.array_equal(x.descriptors, z.descriptors)
            assert x.descriptors.shape == (512, len(x)) and x.descriptors.dtype == np.float16
            assert (x.descriptors >= 0).all()
            assert np.allclose(np.linalg.norm(x.descriptors.astype(np.float32), axis=0), 1, atol=2e-3)
            assert tuple(x.image_size) == (small.width, small.height)
            assert (x.keypoints >= -0.5).all() and (x.keypoints[:, 0] < small.width).all()
    with h5py.File(a.files["truth"], "r") as t:
        ids = t[a.db_names[0]]["point_ids"][()]
    assert 0.15 < (ids < 0).mean() < 0.35  # the distractors


def test_synthetic_scene_reconstructs(tmp_path: Path, d2) -> None:
    scene = generate_scene(tmp_path / "scene", SMALL)
    assert 200 < scene.keypoints_mean < 400
    cwd = scene.folder
    d2("pairs", "sequential", "-f", "feats.h5", "-k", "5", "-o", "pairs.txt", cwd=cwd, check=True)
    d2("match", "-p", "pairs.txt", "-f", "feats.h5", "-o", "matches.h5", "-q", cwd=cwd, check=True)
    # the descriptors are hard: MNN makes real mistakes between neighbouring views
    prec = match_precision(cwd / "matches.h5", scene.files["truth"],
                           list(iter_neighbour_pairs(scene.db_names)))
    assert 0.55 < prec["precision"] < 0.92, prec
    d2("colmap-import", "db.db", "-f", "feats.h5", "-m", "matches.h5", "--camera-model", "PINHOLE",
       "--camera-params", scene.camera_params, "-q", cwd=cwd, check=True)
    d2("reconstruct", "db.db", "-o", "sparse", "-q", cwd=cwd, check=True)
    ev = evaluate_model(cwd / "sparse", scene)
    assert ev["registered"] >= 0.99 * SMALL.num_images, ev
    assert ev["median_fraction"] < 0.005, ev
