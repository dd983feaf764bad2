"""The matcher and ``d2 match``: golden parity, blocked == full, the job, resume after kill -9.

The reference for the blocked matcher is the D2-Net ``mnn_matcher`` written out on the full
similarity matrix (``full_mnn`` below). Where tiles are tiny, BLAS may sum in another order
than on the full matrix, so those tests use dyadic descriptors (multiples of 1/64): every
dot product is then exact in float32 and any summation order gives the same bits.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from d2cli.errors import IncompatibleFeatures
from d2cli.io.features import FeatureFile, MatchFile, pair_key
from d2cli.io.h5store import list_entries, write_attrs
from d2cli.match import DescriptorCache, MatchSettings, _read_ahead, _read_in_order, match
from d2cli.mnn import mnn
from d2cli.pairs import pairs_exhaustive
from d2cli.weights import DEFAULT_MODEL

SAMPLE_NAMES = ["02928139_3448003521.jpg", "03903474_1471484089.jpg",
                "10265353_3838484249.jpg", "17295357_9106075285.jpg"]


# --------------------------------------------------------------------------- helpers
def full_mnn(d0: torch.Tensor, d1: torch.Tensor, ratio: float | None = None,
             max_distance: float | None = None) -> np.ndarray:
    """The reference matcher on the whole similarity matrix: (M, 2) int64."""
    sim = d0 @ d1.T
    nn12 = torch.max(sim, dim=1)[1]
    nn21 = torch.max(sim, dim=0)[1]
    ids = torch.arange(len(d0))
    keep = nn21[nn12] == ids
    dist = lambda s: (2 - 2 * s).clamp(min=0).sqrt()  # noqa: E731
    best = sim.max(1).values
    if max_distance is not None:
        keep &= dist(best) <= max_distance
    if ratio is not None:
        r2 = torch.topk(sim, 2, dim=1).values[:, 1]  # values only: ties give equal values
        c2 = torch.topk(sim, 2, dim=0).values[1]
        keep &= dist(best) <= ratio * dist(r2)
        keep &= dist(best) <= ratio * dist(c2[nn12])
    idx = torch.nonzero(keep).squeeze(1)
    return torch.stack([idx, nn12[idx]], 1).numpy()


def dyadic(n: int, d: int, levels: int, gen: torch.Generator) -> torch.Tensor:
    """(n, d) float32 with entries k/64, |k| <= levels: exact dot products."""
    return torch.randint(-levels, levels + 1, (n, d), generator=gen).float() / 64


def unit(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)


def write_features(path: Path, descs: dict[str, np.ndarray], attrs: dict | None = None,
                   dtype=np.float16) -> None:
    """A features file in the extractor's layout; ``descs[name]`` is (N, D)."""
    with h5py.File(path, "w") as f:
        write_attrs(f, attrs if attrs is not None else {
            "model": "hed-vgg16", "model_sha256": "ab" * 32,
            "settings": {"max_edge": 1600, "scales": [1.0]}})
        for name, d in descs.items():
            g = f.create_group(name)
            n = len(d)
            g["keypoints"] = np.zeros((n, 2), np.float32)
            g["descriptors"] = np.ascontiguousarray(d.T.astype(dtype))
            g["scores"] = np.ones(n, np.float32)
            g["scales"] = np.ones(n, np.float32)
            g["image_size"] = np.array([640, 480])


def random_features(path: Path, count: int, n: int, seed: int = 0, **kw) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    names = [f"img{i:03d}.jpg" for i in range(count)]
    write_features(path, {nm: unit(n + 7 * i, 512, gen).numpy() for i, nm in enumerate(names)},
                   **kw)
    return names


def read_matches(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k]["matches0"][()] for k in list_entries(f)}


# --------------------------------------------------------------------------- golden
@pytest.mark.parametrize("tile", [None, (16, 40), (5, 7)])
def test_golden_parity(tile, golden_dir):
    da = torch.from_numpy(np.load(golden_dir / "ss_caffe_a.npz")["descriptors"])
    db = torch.from_numpy(np.load(golden_dir / "ss_caffe_b.npz")["descriptors"])
    golden = np.load(golden_dir / "mnn_matches_a_b.npz")["matches"]
    m, s = mnn(da, db, tile=tile)
    assert m.dtype == torch.int64 and golden.shape == (113, 2)
    np.testing.assert_array_equal(m.numpy(), golden)
    np.testing.assert_allclose(s.numpy(), (da[golden[:, 0]] * db[golden[:, 1]]).sum(1), atol=1e-6)
    golden16 = np.load(golden_dir / "mnn_matches_a_b_fp16desc.npz")["matches"]
    m16, _ = mnn(da.half().float(), db.half().float(), tile=tile)
    np.testing.assert_array_equal(m16.numpy(), golden16)


def test_golden_through_the_job(tmp_path, golden_dir):
    """The file path: fp16 storage, HDF5, hloc arrays, MatchFile read-back."""
    da = np.load(golden_dir / "ss_caffe_a.npz")["descriptors"]
    db = np.load(golden_dir / "ss_caffe_b.npz")["descriptors"]
    write_features(tmp_path / "f.h5", {"a.png": da, "b.png": db})
    r = match([("a.png", "b.png")], tmp_path / "f.h5", tmp_path / "m.h5", device="cpu")
    assert r.num_matches == [113] and not r.failed
    with MatchFile(tmp_path / "m.h5") as mf:
        m, _ = mf.get("a.png", "b.png")
    golden16 = np.load(golden_dir / "mnn_matches_a_b_fp16desc.npz")["matches"]
    np.testing.assert_array_equal(m, golden16)


# --------------------------------------------------------------------------- blocked == full
# (tile, N0, N1): single-element tiles on small sets only (one Python step per tile)
TILES = [((1, 1), 41, 29), ((1, 9), 41, 29), ((7, 13), 230, 170), ((64, 5), 230, 170),
         ((100, 300), 230, 170), (None, 230, 170)]


@pytest.mark.parametrize("tile,n0,n1", TILES)
@pytest.mark.parametrize("levels,dim", [(64, 64), (1, 6)])  # fine values; then massive ties
def test_blocked_equals_full(tile, n0, n1, levels, dim):
    gen = torch.Generator().manual_seed(levels * 1000 + dim)
    d0, d1 = dyadic(n0, dim, levels, gen), dyadic(n1, dim, levels, gen)
    if levels == 1:  # exact duplicate rows and columns on top: the first index must win
        d0[20:30] = d0[10:20]
        d1[::7] = d1[3]
        sim = d0 @ d1.T
        assert (sim == sim.max(1, keepdim=True).values).sum(1).gt(1).float().mean() > 0.3
    ref = full_mnn(d0, d1)
    assert len(ref) > 0
    m, s = mnn(d0, d1, tile=tile)
    np.testing.assert_array_equal(m.numpy(), ref)
    np.testing.assert_array_equal(s.numpy(), (d0 @ d1.T)[ref[:, 0], ref[:, 1]].numpy())
    for ratio, maxd in [(0.9, None), (None, 1.2), (0.97, 1.3), (1.0, None)]:
        r = full_mnn(d0, d1, ratio, maxd)
        m, _ = mnn(d0, d1, ratio=ratio, max_distance=maxd, tile=tile)
        np.testing.assert_array_equal(m.numpy(), r, err_msg=f"ratio={ratio} max_d={maxd}")


def test_blocked_equals_full_unit_descriptors():
    """Real-valued unit descriptors, several default-sized tiles in both directions."""
    gen = torch.Generator().manual_seed(3)
    d0, d1 = unit(1100, 512, gen), unit(2500, 512, gen)
    d1[:1100:3] = d0[::3] + 0.05 * unit(367, 512, gen)  # plenty of true matches
    d1 = torch.nn.functional.normalize(d1, dim=1)
    for tile in (None, (512, 2048), (100, 300)):
        np.testing.assert_array_equal(mnn(d0, d1, tile=tile)[0].numpy(), full_mnn(d0, d1))
        np.testing.assert_array_equal(mnn(d0, d1, ratio=0.8, tile=tile)[0].numpy(),
                                      full_mnn(d0, d1, 0.8))


def test_ratio_and_distance_filter_and_symmetry():
    gen = torch.Generator().manual_seed(5)
    d0, d1 = unit(300, 128, gen), unit(280, 128, gen)
    d1[:200] = torch.nn.functional.normalize(d0[:200] + 0.3 * unit(200, 128, gen), dim=1)
    plain, _ = mnn(d0, d1)
    strict, _ = mnn(d0, d1, ratio=0.7)
    near, scores = mnn(d0, d1, max_distance=0.5)
    assert 0 < len(strict) < len(plain) and 0 < len(near) < len(plain)
    assert set(map(tuple, strict.tolist())) <= set(map(tuple, plain.tolist()))
    assert torch.all((2 - 2 * scores).sqrt() <= 0.5)
    # swapping the images swaps the matches (ratio test in both directions, as hloc)
    for kw in ({}, {"ratio": 0.7}):
        a, _ = mnn(d0, d1, **kw)
        b, _ = mnn(d1, d0, **kw)
        assert set(map(tuple, a.tolist())) == {(j, i) for i, j in b.tolist()}


def test_empty_and_bad_shapes():
    gen = torch.Generator().manual_seed(0)
    m, s = mnn(torch.empty(0, 8), unit(5, 8, gen))
    assert m.shape == (0, 2) and s.shape == (0,)
    m, s = mnn(unit(1, 8, gen), unit(1, 8, gen))
    assert m.tolist() == [[0, 0]]
    m, _ = mnn(unit(1, 8, gen), unit(1, 8, gen), ratio=0.5)  # no second neighbour: passes
    assert len(m) == 1
    with pytest.raises(ValueError):
        mnn(unit(3, 8, gen), unit(3, 9, gen))


# --------------------------------------------------------------------------- cache
def test_descriptor_cache_reads_each_image_once_when_it_fits(tmp_path):
    names = random_features(tmp_path / "f.h5", 8, 40)
    pairs = pairs_exhaustive(names)
    accesses = [(0, n) for p in pairs for n in p]
    with FeatureFile(tmp_path / "f.h5") as ff:
        one = ff.descriptors(names[-1]).nbytes  # the largest image
        for budget, expected in ((8 * one, 8), (0, len(accesses))):
            cache = DescriptorCache([ff], accesses, budget)
            for t, (_, n) in enumerate(accesses):
                np.testing.assert_array_equal(cache.get(t).numpy(), ff.descriptors(n).T)
            assert cache.reads == expected
        # a budget of 3 images: fewer reads than an LRU of the same size would do
        cache = DescriptorCache([ff], accesses, 3 * one)
        for t in range(len(accesses)):
            cache.get(t)
        lru: list[str] = []
        lru_reads = 0
        for _, n in accesses:
            if n in lru:
                lru.remove(n)
            else:
                lru_reads += 1
                lru = lru[-2:]
            lru.append(n)
        assert 8 < cache.reads < lru_reads


def test_match_job_same_result_for_any_cache_and_reversed_reading(tmp_path):
    names = random_features(tmp_path / "f.h5", 5, 60)
    pairs = pairs_exhaustive(names)
    r_big = match(pairs, tmp_path / "f.h5", tmp_path / "big.h5", device="cpu")
    r_none = match(pairs, tmp_path / "f.h5", tmp_path / "none.h5", device="cpu", cache_bytes=0,
                   tile=(16, 16))
    assert r_big.descriptor_reads == 5 and r_none.descriptor_reads == 2 * len(pairs)
    again = match([(b, a) for a, b in pairs], tmp_path / "f.h5", tmp_path / "big.h5")
    assert len(again.skipped) == len(pairs) and not again.matched  # done in either order
    big, none = read_matches(tmp_path / "big.h5"), read_matches(tmp_path / "none.h5")
    assert sorted(big) == sorted(pair_key(a, b) for a, b in pairs)
    for k in big:
        np.testing.assert_array_equal(big[k], none[k])
    with FeatureFile(tmp_path / "f.h5") as ff, MatchFile(tmp_path / "big.h5") as mf:
        a, b = pairs[3]
        d_a = torch.from_numpy(ff.descriptors(a).T.copy())
        d_b = torch.from_numpy(ff.descriptors(b).T.copy())
        fwd, sc = mf.get(a, b)
        np.testing.assert_array_equal(fwd, full_mnn(d_a, d_b))
        rev, sc_rev = mf.get(b, a)  # stored as a/b, asked as (b, a)
        np.testing.assert_array_equal(rev, full_mnn(d_b, d_a))
        np.testing.assert_array_equal(np.sort(sc_rev), np.sort(sc))
    # hloc's older flat "a_b" keys are read too, in both orders
    m0 = big[pair_key(a, b)]
    with h5py.File(tmp_path / "old.h5", "w") as f:
        g = f.create_group(pair_key(a, b, "_"))
        g["matches0"] = m0
        g["matching_scores0"] = np.ones(len(m0), np.float32)
    with MatchFile(tmp_path / "old.h5") as mf:
        np.testing.assert_array_equal(mf.get(a, b)[0], fwd)
        np.testing.assert_array_equal(mf.get(b, a)[0], rev)


def test_readers_in_order_and_ahead_agree_and_name_a_broken_entry(tmp_path):
    """The CPU reads in order, a GPU job in a thread ahead: same tensors, same failures."""
    names = random_features(tmp_path / "f.h5", 4, 30)
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f[names[2]]["descriptors"]  # keypoints but no descriptors
    pairs = pairs_exhaustive(names)
    accesses = [(0, n) for p in pairs for n in p]
    with FeatureFile(tmp_path / "f.h5") as ff:
        in_order = list(_read_in_order(DescriptorCache([ff], accesses), len(pairs)))
        ahead = list(_read_ahead(DescriptorCache([ff], accesses), len(pairs), 2,
                                 threading.Event()))
    assert len(in_order) == len(ahead) == len(pairs)
    for (k, a0, a1, err), (k2, b0, b1, err2), (x, y) in zip(in_order, ahead, pairs, strict=True):
        assert k == k2 and err == err2
        if names[2] in (x, y):
            assert names[2] in err and "no descriptors" in err
        else:
            assert err is None and torch.equal(a0, b0) and torch.equal(a1, b1)
    r = match(pairs, tmp_path / "f.h5", tmp_path / "m.h5", device="cpu")
    assert len(r.failed) == 3 and len(r.matched) == len(pairs) - 3


def test_match_records_attrs_and_refuses_other_settings(tmp_path):
    names = random_features(tmp_path / "f.h5", 3, 30)
    pairs = pairs_exhaustive(names)
    match(pairs[:2], tmp_path / "f.h5", tmp_path / "m.h5", device="cpu")
    with MatchFile(tmp_path / "m.h5") as mf:
        assert mf.attrs["features"]["model"] == "hed-vgg16"
        assert mf.attrs["features"]["settings"]["max_edge"] == 1600
        assert mf.attrs["settings"] == {"matcher": "mnn", "ratio": None, "max_distance": None}
    with pytest.raises(IncompatibleFeatures, match="ratio: None -> 0.9"):
        match(pairs, tmp_path / "f.h5", tmp_path / "m.h5", settings=MatchSettings(ratio=0.9))
    r = match(pairs, tmp_path / "f.h5", tmp_path / "m.h5", settings=MatchSettings(ratio=0.9),
              overwrite=True)
    assert len(r.matched) == 3
    with MatchFile(tmp_path / "m.h5") as mf:
        assert mf.attrs["settings"]["ratio"] == 0.9 and len(mf.keys()) == 3


# --------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="session")
def extracted(tmp_path_factory, d2, samples_dir) -> Path:
    """4 sample images extracted once (small max-edge: a few hundred keypoints each)."""
    d = tmp_path_factory.mktemp("extracted")
    (d / "images").mkdir()
    for n in SAMPLE_NAMES:
        shutil.copy(samples_dir / n, d / "images" / n)
    d2("extract", d / "images", "--max-edge", "256", "--out", d / "feats.h5", "-q",
           check=True)
    return d / "feats.h5"


def test_round_trip_extract_pairs_match(extracted, tmp_path, d2):
    (tmp_path / "feats.h5").symlink_to(extracted)
    p = d2("pairs", "exhaustive", "--features", "feats.h5", "--out", "pairs.txt",
               cwd=tmp_path, check=True)
    assert "6 pairs of 4 images" in p.stdout
    lines = (tmp_path / "pairs.txt").read_text().split("\n")
    assert len(lines) == 7 and lines[-1] == ""
    p = d2("match", "--pairs", "pairs.txt", cwd=tmp_path, check=True)  # default in/out
    assert "matched" in p.stdout and "pairs/s" in p.stderr + p.stdout
    with h5py.File(tmp_path / "matches.h5", "r") as f, FeatureFile(extracted) as ff:
        keys = list_entries(f)
        assert sorted(keys) == sorted(pair_key(a, b) for a, b in pairs_exhaustive(SAMPLE_NAMES))
        assert json.loads(f.attrs["features_json"])["model"] == DEFAULT_MODEL
        total = 0
        for a, b in pairs_exhaustive(SAMPLE_NAMES):
            g = f[pair_key(a, b)]
            m0, s0 = g["matches0"][()], g["matching_scores0"][()]
            assert m0.dtype == np.int16 and s0.dtype == np.float32
            assert m0.shape == (len(ff[a]),) and m0.min() >= -1 and m0.max() < len(ff[b])
            d_a = torch.from_numpy(ff.descriptors(a).T.copy())
            d_b = torch.from_numpy(ff.descriptors(b).T.copy())
            ref = full_mnn(d_a, d_b)
            np.testing.assert_array_equal(np.stack([np.flatnonzero(m0 >= 0),
                                                    m0[m0 >= 0]], 1), ref)
            total += len(ref)
        assert total > 6 * 20  # real images of one scene: real matches
    p = d2("match", "--pairs", "pairs.txt", "--json", cwd=tmp_path, check=True)
    s = json.loads(p.stdout)
    assert s["skipped"] == 6 and s["matched"] == 0 and s["failed"] == {}


def test_missing_name_fails_alone(extracted, tmp_path, d2):
    pairs = pairs_exhaustive(SAMPLE_NAMES[:3]) + [(SAMPLE_NAMES[0], "ghost.jpg")]
    (tmp_path / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    p = d2("match", "--pairs", tmp_path / "pairs.txt", "--features", extracted,
               "--out", tmp_path / "m.h5", "--json")
    assert p.returncode == 1, p.stderr
    assert "ghost.jpg" in p.stderr and str(extracted) in p.stderr
    assert "Traceback" not in p.stderr
    s = json.loads(p.stdout)
    assert s["matched"] == 3 and len(s["failed"]) == 1
    assert len(read_matches(tmp_path / "m.h5")) == 3


def test_mismatched_features_refused_unless_force(extracted, tmp_path, d2):
    ref = tmp_path / "ref.h5"
    ref.write_bytes(extracted.read_bytes())
    with h5py.File(ref, "r+") as f:
        settings = json.loads(f.attrs["settings_json"])
        settings["max_edge"] = 1024
        f.attrs["settings_json"] = json.dumps(settings)
    (tmp_path / "pairs.txt").write_text(f"{SAMPLE_NAMES[0]} {SAMPLE_NAMES[1]}\n")
    args = ["match", "--pairs", tmp_path / "pairs.txt", "--features", extracted,
            "--features-ref", ref, "--out", tmp_path / "m.h5"]
    p = d2(*args)
    assert p.returncode == 2 and "max_edge: 256 vs 1024" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.h5").exists()
    d2(*args, "--force", check=True)
    assert len(read_matches(tmp_path / "m.h5")) == 1
    # the file now records ref.h5; matching the original features into it is refused too
    p = d2(*args[:-4], "--out", tmp_path / "m.h5")
    assert p.returncode == 2 and "reference features" in p.stderr
    p = d2("match", "--pairs", tmp_path / "pairs.txt", "--ratio", "1.5",
               "--features", extracted)
    assert p.returncode == 2 and "ratio" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- kill -9
def _start(args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "d2cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, COLUMNS="200"))


def _parts(out: Path) -> list[Path]:
    return sorted(Path(str(out) + ".parts").glob("part-*.h5"))


def _wait_for_parts(proc: subprocess.Popen, out: Path, count: int, timeout: float = 120) -> None:
    """Until ``count`` part files are committed (or the run ended)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if len(_parts(out)) >= count:
            return
        time.sleep(0.002)


def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path, d2):
    names = random_features(tmp_path / "f.h5", 20, 450)
    pairs = pairs_exhaustive(names)  # 190 pairs, committed 8 at a time
    (tmp_path / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    base = ["match", "--pairs", "pairs.txt", "--features", "f.h5", "--commit-every", "8", "-q"]
    d2(*base, "--out", "ref.h5", cwd=tmp_path, check=True)
    expected = read_matches(tmp_path / "ref.h5")
    assert len(expected) == len(pairs)

    rng = random.Random(1234)
    out = tmp_path / "m.h5"
    for _ in range(3):
        # a random moment once it has written: after 1 to 4 more parts, then up to 20 ms
        # more (mostly in the middle of a pair or of the next part's pairs)
        proc = _start([*base, "--out", "m.h5"], tmp_path)
        _wait_for_parts(proc, out, len(_parts(out)) + rng.randint(1, 4))
        time.sleep(rng.uniform(0, 0.02))
        assert proc.poll() is None, "the run ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
        stored = set()
        for f in [out] * out.exists() + _parts(out):
            with h5py.File(f, "r") as h:  # every file left behind is complete and readable
                stored |= set(list_entries(h))
        assert 0 < len(stored) < len(pairs)
    p = d2(*base, "--out", "m.h5", "--json", cwd=tmp_path, check=True)
    s = json.loads(p.stdout)
    assert s["matched"] + s["skipped"] == len(pairs) and s["skipped"] >= 3 * 8
    got = read_matches(out)
    assert sorted(got) == sorted(expected)  # every pair exactly once, in one orientation
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    assert not Path(str(out) + ".parts").exists() and not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- bf16 screen
def relu_unit(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """D2-like descriptors: non-negative (post-ReLU), sparse-ish, L2-normalised rows."""
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen).clamp(min=0) ** 2, dim=1)


def naive_bf16_mnn(d0: torch.Tensor, d1: torch.Tensor) -> np.ndarray:
    return full_mnn(d0.bfloat16(), d1.bfloat16())


@pytest.mark.parametrize("tile", [None, (16, 40), (5, 7)])
def test_bf16_screen_golden_parity(tile, golden_dir):
    da = torch.from_numpy(np.load(golden_dir / "ss_caffe_a.npz")["descriptors"])
    db = torch.from_numpy(np.load(golden_dir / "ss_caffe_b.npz")["descriptors"])
    golden = np.load(golden_dir / "mnn_matches_a_b.npz")["matches"]
    m, s = mnn(da, db, tile=tile, precision="bf16")
    np.testing.assert_array_equal(m.numpy(), golden)
    np.testing.assert_allclose(s.numpy(), (da[golden[:, 0]] * db[golden[:, 1]]).sum(1), atol=1e-6)
    golden16 = np.load(golden_dir / "mnn_matches_a_b_fp16desc.npz")["matches"]
    m16, _ = mnn(da.half().float(), db.half().float(), tile=tile, precision="bf16")
    np.testing.assert_array_equal(m16.numpy(), golden16)


@pytest.mark.parametrize("tile", [None, (64, 100), (8, 7), (3, 1000)])
def test_bf16_screen_decides_near_ties_like_fp32(tile):
    """Second-best similarities closer than bf16's rounding: plain bf16 gets them wrong.

    (Gaps at fp32's own rounding level, ~1e-7, may go either way: fp32 sums in another
    order decide them differently too; these gaps are 1e-6 and up.)
    """
    gen = torch.Generator().manual_seed(11)
    d0 = relu_unit(700, 512, gen)
    # each of the first 500 rows of d1 is one of 250 d0 rows, moved twice at random: two
    # candidates per row whose similarities differ by less than bf16 resolves
    base = d0[torch.randperm(700, generator=gen)[:250]]
    near = [torch.nn.functional.normalize(base + 0.1 * relu_unit(250, 512, gen), dim=1)
            for _ in range(2)]
    d1 = torch.cat([near[0], near[1], relu_unit(160, 512, gen)])
    ref = full_mnn(d0, d1)
    assert len(ref) > 200
    naive = naive_bf16_mnn(d0, d1)
    assert len(set(map(tuple, naive)) ^ set(map(tuple, ref))) > 100  # the test can fail
    m, s = mnn(d0, d1, tile=tile, precision="bf16")
    np.testing.assert_array_equal(m.numpy(), ref)
    np.testing.assert_allclose(s.numpy(), (d0 @ d1.T)[ref[:, 0], ref[:, 1]].numpy(), atol=1e-6)
    for maxd in (0.3, 1.2):
        np.testing.assert_array_equal(mnn(d0, d1, max_distance=maxd, tile=tile,
                                          precision="bf16")[0].numpy(),
                                      full_mnn(d0, d1, max_distance=maxd))


def test_bf16_screen_exact_ties_go_to_the_first_index():
    gen = torch.Generator().manual_seed(12)
    d0, d1 = relu_unit(90, 64, gen), relu_unit(70, 64, gen)
    d0[40:50] = d0[30:40]  # duplicate rows: equal similarities in fp32 and bf16
    d1[::7] = d1[3]
    d1[5] = 0  # an all-zero column: every row is a candidate of it
    np.testing.assert_array_equal(mnn(d0, d1, precision="bf16", tile=(16, 20))[0].numpy(),
                                  full_mnn(d0, d1))


def test_bf16_screen_falls_back_to_exact():
    from d2cli.mnn import _mnn_bf16_screen
    gen = torch.Generator().manual_seed(13)
    # identical descriptors: every entry is a candidate, the screen gives up
    same = relu_unit(1, 32, gen).repeat(300, 1)
    assert _mnn_bf16_screen(same, same, (64, 64)) is None
    np.testing.assert_array_equal(mnn(same, same, precision="bf16")[0].numpy(),
                                  full_mnn(same, same))
    # negative entries (--no-relu, other features) and the ratio test run exact
    d0, d1 = unit(200, 64, gen), unit(150, 64, gen)
    np.testing.assert_array_equal(mnn(d0, d1, precision="bf16")[0].numpy(), full_mnn(d0, d1))
    r0, r1 = relu_unit(200, 64, gen), relu_unit(150, 64, gen)
    np.testing.assert_array_equal(mnn(r0, r1, ratio=0.95, precision="bf16")[0].numpy(),
                                  full_mnn(r0, r1, 0.95))


def test_screen_margin_bounds_the_bf16_error():
    from d2cli.mnn import screen_margin
    gen = torch.Generator().manual_seed(14)
    d0, d1 = relu_unit(500, 512, gen), relu_unit(400, 512, gen)
    err = ((d0.bfloat16() @ d1.bfloat16().T).double() - d0.double() @ d1.double().T).abs()
    assert err.max() <= screen_margin(d0, d1) / 2


def test_bf16_matching_job_writes_fp32_matches(tmp_path, golden_dir):
    da = np.load(golden_dir / "ss_caffe_a.npz")["descriptors"]
    db = np.load(golden_dir / "ss_caffe_b.npz")["descriptors"]
    write_features(tmp_path / "f.h5", {"a.png": da, "b.png": db})
    r = match([("a.png", "b.png")], tmp_path / "f.h5", tmp_path / "m.h5", device="cpu",
              precision="bf16")
    assert r.summary()["precision"] == "bf16" and r.num_matches == [113]
    with MatchFile(tmp_path / "m.h5") as mf:
        m, _ = mf.get("a.png", "b.png")
        # the precision of the products is not a setting: fp32 runs may resume this file
        assert "precision" not in mf.attrs["settings"]
    np.testing.assert_array_equal(m, np.load(golden_dir / "mnn_matches_a_b_fp16desc.npz")["matches"])


def test_auto_screens_only_large_pairs_on_fast_bf16_cpus():
    from d2cli.mnn import SCREEN_MIN_SIMILARITIES, matcher_precision, uses_bf16_screen
    from d2cli.precision import bf16_is_fast

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    big = int(SCREEN_MIN_SIMILARITIES ** 0.5) + 1
    fast = bf16_is_fast(cpu) is not None
    assert matcher_precision("auto", cpu) == ("bf16" if fast else "fp32")
    assert uses_bf16_screen("auto", cpu, big, big) is fast
    assert not uses_bf16_screen("auto", cpu, 100, 100)  # small pairs: the exact path is faster
    # GPUs: the exact fp32 product beats the screen (measured on an H200)
    assert matcher_precision("auto", cuda) == "fp32" and not uses_bf16_screen("auto", cuda, big, big)
    # asked for explicitly, bf16 screens at any size; fp32 never does
    assert uses_bf16_screen("bf16", cpu, 10, 10) and not uses_bf16_screen("fp32", cpu, big, big)


# --------------------------------------------------------------------------- the matcher seam
def test_a_new_matcher_is_one_entry_and_the_job_records_and_uses_it(tmp_path, monkeypatch):
    """A one-way nearest-neighbour matcher, written only against the interface: d2 match
    uses it, records its name, and refuses to mix its file with mnn's."""
    from d2cli.errors import UsageError
    from d2cli.matchers import MATCHERS

    def nearest(s: MatchSettings):
        def call(d0, d1, *, tile=None, precision="fp32"):
            sim = d0.float() @ d1.float().T
            best, j = sim.max(1)
            return torch.stack([torch.arange(len(d0)), j], 1), best
        return call

    monkeypatch.setitem(MATCHERS, "nearest", nearest)
    names = random_features(tmp_path / "f.h5", 2, 40)
    r = match([(names[0], names[1])], tmp_path / "f.h5", tmp_path / "m.h5", device="cpu",
              settings=MatchSettings(matcher="nearest"))
    assert r.num_matches == [40]  # one per row: not the mutual subset mnn keeps
    with MatchFile(tmp_path / "m.h5") as mf:
        assert mf.attrs["settings"]["matcher"] == "nearest"
        m, _ = mf.get(names[0], names[1])
    mutual = match([(names[0], names[1])], tmp_path / "f.h5", tmp_path / "mnn.h5", device="cpu")
    assert mutual.num_matches[0] < 40
    with MatchFile(tmp_path / "mnn.h5") as mf:
        assert {tuple(p) for p in mf.get(names[0], names[1])[0]} < {tuple(p) for p in m}
    with pytest.raises(IncompatibleFeatures, match=r"\(matcher: nearest -> mnn\)"):
        match([(names[0], names[1])], tmp_path / "f.h5", tmp_path / "m.h5", device="cpu")
    with pytest.raises(UsageError, match="unknown matcher 'lightglue' \\(one of mnn, nearest\\)"):
        match([(names[0], names[1])], tmp_path / "f.h5", tmp_path / "x.h5", device="cpu",
              settings=MatchSettings(matcher="lightglue"))
    assert not (tmp_path / "x.h5").exists()
