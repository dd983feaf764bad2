"""Global descriptors from D2's own features and retrieval pairs (issue 25)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from d2cli.errors import MissingName
from d2cli.io.features import FeatureFile
from d2cli.io.h5store import write_attrs
from d2cli.pairs import (
    AUTO_RETRIEVAL_ABOVE,
    PairStrategy,
    _best_k,
    pairs_from_retrieval,
    read_feature_global_descriptors,
)
from d2cli.retrieval import METHOD_ATTR, add_global_descriptors, pooled, whiten

D2 = [sys.executable, "-m", "d2cli"]


def features_file(path: Path, descs: dict[str, np.ndarray], with_global: str | None = None
                  ) -> None:
    """A features file in the extractor's layout; ``descs[name]`` is (D, N) float16."""
    with h5py.File(path, "w") as f:
        attrs = {"model": "d2cli-v1", "model_sha256": "ab" * 32, "settings": {"max_edge": 1600}}
        if with_global:
            attrs[METHOD_ATTR] = with_global
        write_attrs(f, attrs)
        for name, d in descs.items():
            g = f.create_group(name)
            n = d.shape[1]
            g["keypoints"] = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
            g["descriptors"] = d.astype(np.float16)
            g["scores"] = np.ones(n, np.float32)
            g["scales"] = np.ones(n, np.float32)
            g["image_size"] = np.array([640, 480])
            if with_global:
                g["global_descriptor"] = pooled(d, with_global)


def scene_collection(n_scenes: int, per_scene: int, seed: int = 0, dim: int = 64,
                     n_kp: int = 80) -> tuple[dict[str, np.ndarray], list[str]]:
    """Images whose local descriptors come from a per-scene vocabulary plus a strong
    direction common to every image (what whitening exists to remove)."""
    rng = np.random.default_rng(seed)
    common = np.abs(rng.standard_normal(dim))
    descs, labels = {}, []
    for s in range(n_scenes):
        vocab = np.abs(rng.standard_normal((20, dim)))
        for i in range(per_scene):
            words = vocab[rng.integers(0, 20, n_kp)] + 0.3 * np.abs(rng.standard_normal((n_kp, dim)))
            d = words + 6 * common
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            descs[f"scene{s}/im{i}.jpg"] = d.T.astype(np.float32)
            labels.append(f"scene{s}")
    return descs, labels


# --------------------------------------------------------------------------- pooling
def test_gem_is_the_cube_root_mean_of_cubes_normalised():
    d = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], np.float32)  # (D=2, N=3)
    g = pooled(d, "gem")
    raw = np.cbrt(np.array([(1 + 8 + 0) / 3, 27 / 3]))
    np.testing.assert_allclose(g, raw / np.linalg.norm(raw), rtol=1e-6)
    np.testing.assert_allclose(pooled(d, "mean"), np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-6)
    assert g.dtype == np.float32 and abs(np.linalg.norm(g) - 1) < 1e-6
    # an image without keypoints gets a zero vector (never a NaN)
    z = pooled(np.zeros((512, 0), np.float16))
    assert z.shape == (512,) and not z.any()


def test_whitening_removes_a_common_direction_and_retrieval_gets_better():
    descs, labels = scene_collection(6, 5)
    x = np.stack([pooled(d) for d in descs.values()])
    lab = np.array(labels)

    def recall1(v: np.ndarray) -> float:
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return float(np.mean(lab[s.argmax(1)] == lab))

    w = whiten(x)
    assert np.allclose(np.linalg.norm(w, axis=1), 1, atol=1e-5)
    assert recall1(w) >= recall1(x)
    assert recall1(w) > 0.9
    # learned from a subset, applied to all: same shape, still unit rows
    assert whiten(x, learn_from=x[:10]).shape == x.shape


def test_best_k_by_partition_equals_the_full_sort_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.integers(0, 6, rng.integers(1, 300)).astype(np.float64)
        scores[rng.random(len(scores)) < 0.1] = -np.inf
        k = int(rng.integers(1, 20))
        js = np.flatnonzero(np.isfinite(scores))
        expected = js[np.argsort(-scores[js], kind="stable")][:k]
        np.testing.assert_array_equal(_best_k(scores, k), expected)


# --------------------------------------------------------------------------- d2 global
def test_global_job_adds_descriptors_and_keeps_everything_else(tmp_path):
    descs, _ = scene_collection(2, 3)
    descs["empty.jpg"] = np.zeros((64, 0), np.float32)
    path = tmp_path / "f.h5"
    features_file(path, descs)
    with FeatureFile(path) as ff:
        before = {n: ff[n].as_arrays() for n in ff.names}
        assert not ff.global_names
    r = add_global_descriptors(path)
    assert sorted(r.written) == sorted(n for n in descs if n != "empty.jpg")
    assert r.empty == ["empty.jpg"] and not r.already
    with FeatureFile(path) as ff:
        assert ff.attrs[METHOD_ATTR] == "gem" and ff.global_names == set(descs)
        for n in descs:
            f = ff[n]
            for k, v in before[n].items():
                np.testing.assert_array_equal(f.as_arrays()[k], v)
            np.testing.assert_array_equal(f.global_descriptor, pooled(before[n]["descriptors"]))
    again = add_global_descriptors(path)
    assert not again.written and len(again.already) == len(descs)
    other = add_global_descriptors(path, "mean")  # another method: every image redone
    assert len(other.written) == len(descs) - 1
    with FeatureFile(path) as ff:
        assert ff.attrs[METHOD_ATTR] == "mean"
        np.testing.assert_allclose(ff[next(iter(descs))].global_descriptor,
                                   pooled(next(iter(descs.values())).astype(np.float16), "mean"))


def test_hloc_reads_the_features_file_as_a_global_descriptor_file(tmp_path):
    """hloc's pairs_from_retrieval: names = parents of every dataset (list_h5_names), then
    ``h5[name]['global_descriptor']`` for each; our features file must serve as is."""
    descs, _ = scene_collection(2, 2)
    path = tmp_path / "f.h5"
    features_file(path, descs, with_global="gem")
    names = set()
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: names.add(obj.parent.name.strip("/"))
                     if isinstance(obj, h5py.Dataset) else None)
        got = {n: f[n]["global_descriptor"].__array__() for n in names}
    assert names == set(descs)
    for n, d in descs.items():
        np.testing.assert_array_equal(got[n], pooled(d))


# --------------------------------------------------------------------------- pairs
def test_pairs_from_the_features_file_and_a_missing_descriptor_names_the_fix(tmp_path):
    descs, labels = scene_collection(4, 4)
    path = tmp_path / "f.h5"
    features_file(path, descs, with_global="gem")
    names, x = read_feature_global_descriptors(path)
    pairs = pairs_from_retrieval(names, x, 3)
    scene = dict(zip(descs, labels, strict=True))
    assert len(pairs) >= len(names) * 3 // 2
    assert np.mean([scene[a] == scene[b] for a, b in pairs]) > 0.9
    out = tmp_path / "pairs.txt"
    r = subprocess.run([*D2, "pairs", "from-retrieval", "--features", str(path), "-k", "3",
                        "-o", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pairs"] == len(pairs)
    # an image without one: one line naming the command that adds it, exit 2
    with h5py.File(path, "a") as f:
        del f[names[0]]["global_descriptor"]
    with pytest.raises(MissingName, match=f"d2 global {path}"):
        read_feature_global_descriptors(path)
    r = subprocess.run([*D2, "pairs", "from-retrieval", "--features", str(path), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"d2 global {path}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*D2, "pairs", "from-retrieval", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--features" in r.stderr and "Traceback" not in r.stderr
    # d2 global repairs it, and the pairs come back
    r = subprocess.run([*D2, "global", str(path), "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["written"] == 1
    assert read_feature_global_descriptors(path)[0] == names


def test_auto_strategy_picks_retrieval_above_the_threshold(tmp_path):
    n = AUTO_RETRIEVAL_ABOVE + 1
    descs, _ = scene_collection(n // 3 + 1, 3, dim=16, n_kp=10)
    descs = dict(list(descs.items())[:n])
    path = tmp_path / "f.h5"
    features_file(path, descs, with_global="gem")
    names = sorted(descs)
    assert PairStrategy().resolved(n - 1).method == "exhaustive"
    assert PairStrategy().resolved(n).method == "retrieval"
    small = PairStrategy().make(names[:-1], path)
    assert len(small) == (n - 1) * (n - 2) // 2
    big = PairStrategy(num_matched=5).make(names, path)
    assert len(big) <= 5 * n and len({x for p in big for x in p}) == n
    assert big == PairStrategy("retrieval", num_matched=5).make(names, path)
