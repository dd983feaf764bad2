"""Sharded and distributed extraction: --shard + d2 merge, and torchrun with gloo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2cli.errors import IncompatibleFeatures, UsageError
from d2cli.io import FeatureFile
from d2cli.shard import Shard, merge, parse_shard

FAST = ["--max-edge", "160", "--quiet"]


def read_all(path):
    with FeatureFile(path) as ff:
        return {n: ff[n].as_arrays() for n in ff.names}, ff.attrs


def assert_identical(a, b):
    assert sorted(a) == sorted(b)
    for n in a:
        for k in a[n]:
            assert np.array_equal(a[n][k], b[n][k]), (n, k)


@pytest.fixture(scope="module")
def images(tmp_path_factory, samples_dir):
    root = tmp_path_factory.mktemp("shard") / "images"
    shutil.copytree(samples_dir, root, ignore=shutil.ignore_patterns("*.md"))
    return root


@pytest.fixture(scope="module")
def single(images, tmp_path_factory, d2):
    out = tmp_path_factory.mktemp("single") / "feats.h5"
    d2("extract", images, "--out", out, *FAST, check=True)
    return read_all(out)[0]


def test_shards_are_disjoint_covering_and_stable():
    names = [f"img{i:04d}.jpg" for i in range(1000)]
    shards = [Shard(i, 4) for i in range(4)]
    owned = [set(s.select(names, key=str)) for s in shards]
    assert sum(map(len, owned)) == 1000 and set().union(*owned) == set(names)
    assert all(150 < len(o) < 350 for o in owned)  # roughly balanced
    assert set(shards[1].select(reversed(names + ["new.jpg"]), key=str)) >= owned[1]
    assert parse_shard("2/5") == Shard(2, 5)
    for bad in ("5/5", "-1/2", "a/b", "3"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_two_shards_and_merge_equal_a_single_run(d2, images, single, tmp_path):
    out = tmp_path / "feats.h5"
    for i in range(2):
        d2("extract", images, "--out", out, "--shard", f"{i}/2", *FAST, check=True)
    parts = [tmp_path / "feats.shard0-of-2.h5", tmp_path / "feats.shard1-of-2.h5"]
    assert all(p.exists() for p in parts) and not out.exists()
    assert 0 < len(read_all(parts[0])[0]) < len(single)
    proc = d2("merge", *parts, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["entries"] == len(single)
    assert_identical(read_all(out)[0], single)
    # merging again (or a part twice) is harmless: identical duplicates are accepted
    merge([*parts, parts[0]], out)
    assert_identical(read_all(out)[0], single)


def test_merge_refuses_other_settings(d2, images, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    d2("extract", images, "--out", a, "--shard", "0/3", *FAST, check=True)
    d2("extract", images, "--out", b, "--shard", "1/3", "--max-edge", "128", "--quiet",
       check=True)
    parts = [tmp_path / "a.shard0-of-3.h5", tmp_path / "b.shard1-of-3.h5"]
    with pytest.raises(IncompatibleFeatures):
        merge(parts, tmp_path / "m.h5")
    proc = d2("merge", *parts, "--out", tmp_path / "m.h5")
    assert proc.returncode == 2 and "refusing to merge" in proc.stderr


def test_torchrun_gloo_two_ranks_equals_single_run(images, single, tmp_path):
    out = tmp_path / "feats.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "d2cli", "extract", str(images), "--out", str(out),
           "--device", "cpu", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})  # as the single run
    assert proc.returncode == 0, proc.stderr[-3000:]
    feats, attrs = read_all(out)
    assert_identical(feats, single)
    assert not list(tmp_path.glob("feats.shard*"))


def test_killed_shard_resumes(d2, images, single, tmp_path):
    out = tmp_path / "feats.h5"
    part = tmp_path / "feats.shard1-of-2.h5"
    cmd = [sys.executable, "-m", "d2cli", "extract", str(images), "--out", str(out),
           "--shard", "1/2", "--commit-every", "1", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts_dir = Path(str(part) + ".parts")
    deadline = time.time() + 120
    while proc.poll() is None and not list(parts_dir.glob("*.h5")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    d2("extract", images, "--out", out, "--shard", "1/2", *FAST, check=True)
    d2("extract", images, "--out", out, "--shard", "0/2", *FAST, check=True)
    d2("merge", tmp_path / "feats.shard0-of-2.h5", part, "--out", out, "--remove-parts",
       check=True)
    assert_identical(read_all(out)[0], single)
    assert not part.exists()


@pytest.fixture(scope="module")
def feats_and_pairs(images, tmp_path_factory, d2):
    work = tmp_path_factory.mktemp("match")
    feats = work / "feats.h5"
    d2("extract", images, "--out", feats, *FAST, check=True)
    d2("pairs", "exhaustive", "--features", feats, "--out", work / "pairs.txt", check=True)
    single = work / "single.h5"
    d2("match", "--pairs", work / "pairs.txt", "--features", feats, "--out", single, "--quiet",
       check=True)
    return work, feats, single


def read_matches(path):
    import h5py

    from d2cli.io.h5store import list_entries
    with h5py.File(path) as f:
        return {k: {d: f[k][d][()] for d in f[k]} for k in list_entries(f)}


def test_match_shards_and_merge_equal_a_single_run(feats_and_pairs, d2):
    work, feats, single = feats_and_pairs
    out = work / "matches.h5"
    for i in range(3):
        d2("match", "--pairs", work / "pairs.txt", "--features", feats, "--out", out,
           "--shard", f"{i}/3", "--quiet", check=True)
    parts = sorted(work.glob("matches.shard*-of-3.h5"))
    assert len(parts) == 3
    d2("merge", *parts, "--out", out, check=True)
    assert_identical(read_matches(out), read_matches(single))


def test_torchrun_gloo_match_equals_single_run(feats_and_pairs):
    work, feats, single = feats_and_pairs
    out = work / "tr.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29518", "-m", "d2cli", "match", "--pairs", str(work / "pairs.txt"),
           "--features", str(feats), "--out", str(out), "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_identical(read_matches(out), read_matches(single))
    assert not list(work.glob("tr.shard*"))
