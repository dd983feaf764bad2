"""Pair lists: exhaustive, queries x references, sequential, from a COLMAP model, ``d2 pairs``."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from d2cli.errors import BadFile, EmptyInput, InputNotFound, MissingName, UsageError
from d2cli.io.h5store import write_attrs
from d2cli.io.pairs import (
    iter_pair_lines,
    iter_unique_pairs,
    normalize_pairs,
    pairs_file_equals,
    read_pair_lines,
    read_pairs,
    write_pairs,
)
from d2cli.pairs import (
    PairStrategy,
    iter_pairs_exhaustive,
    pairs_exhaustive,
    pairs_from_model,
    pairs_from_poses,
    pairs_sequential,
    save_pairs,
    select_names,
)

NAMES = ["db/a.jpg", "db/b.jpg", "db/c.jpg", "q/x.jpg", "q/y.jpg"]


def unordered(pairs) -> set[frozenset[str]]:
    return {frozenset(p) for p in pairs}


@pytest.fixture()
def feats(tmp_path) -> Path:
    """A features file with NAMES (nested groups, as the extractor writes '/' names)."""
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        write_attrs(f, {"model": "hed-vgg16"})
        for n in NAMES:
            g = f.create_group(n)
            g["keypoints"] = np.zeros((3, 2), np.float32)
            g["descriptors"] = np.zeros((8, 3), np.float16)
    return path


def test_exhaustive_all_pairs_once():
    pairs = pairs_exhaustive(NAMES)
    assert len(pairs) == 10 and len(unordered(pairs)) == 10
    assert all(a != b for a, b in pairs)
    assert pairs[0] == ("db/a.jpg", "db/b.jpg")


def test_exhaustive_queries_and_references():
    queries = select_names(NAMES, prefix="q/")
    assert queries == ["q/x.jpg", "q/y.jpg"]
    # only queries chosen: each query with every other image, queries not among themselves
    pairs = pairs_exhaustive(NAMES, queries=queries)
    assert pairs == [(q, r) for q in queries for r in NAMES[:3]]
    refs = select_names(NAMES, prefix="db/")
    assert pairs_exhaustive(NAMES, refs=refs) == pairs
    # overlapping sets: no self pair, no pair twice
    both = pairs_exhaustive(NAMES, queries=["db/a.jpg", "q/x.jpg"], refs=["db/a.jpg", "q/x.jpg"])
    assert both == [("db/a.jpg", "q/x.jpg")]


def test_select_names_list_and_errors(tmp_path):
    lst = tmp_path / "q.txt"
    lst.write_text("# queries\nq/y.jpg\n\nq/x.jpg\n")
    assert select_names(NAMES, list_file=lst) == ["q/x.jpg", "q/y.jpg"]  # in names order
    assert select_names(NAMES) is None
    lst.write_text("q/x.jpg\nq/typo.jpg\n")
    with pytest.raises(MissingName, match="q/typo.jpg"):
        select_names(NAMES, list_file=lst)
    with pytest.raises(EmptyInput, match="'zz/'"):
        select_names(NAMES, prefix="zz/", what="ref")


def test_sequential_in_name_order():
    names = ["f3.jpg", "f1.jpg", "f2.jpg", "f0.jpg"]
    assert pairs_sequential(names, 2) == [
        ("f0.jpg", "f1.jpg"), ("f0.jpg", "f2.jpg"), ("f1.jpg", "f2.jpg"), ("f1.jpg", "f3.jpg"),
        ("f2.jpg", "f3.jpg")]
    assert len(pairs_sequential(names, 10)) == 6
    with pytest.raises(UsageError):
        pairs_sequential(names, 0)


def test_save_pairs_drops_self_and_duplicates_and_refuses_whitespace(tmp_path):
    r = save_pairs([("a", "b"), ("b", "a"), ("a", "a"), ("b", "c")], tmp_path / "p.txt")
    assert r.pairs == 2 and r.images == 3
    assert read_pairs(tmp_path / "p.txt") == [("a", "b"), ("b", "c")]
    with pytest.raises(UsageError, match="whitespace"):
        save_pairs([("a b", "c")], tmp_path / "p2.txt")
    assert not (tmp_path / "p2.txt").exists()
    with pytest.raises(EmptyInput):
        save_pairs([("a", "a")], tmp_path / "p3.txt")


# --------------------------------------------------------------------------- COLMAP models
def make_model(path: Path) -> Path:
    """Six images on the x axis looking along +z; im6 looks sideways (90 degrees).

    Shared 3D points: im1-im2 x5, im1-im3 x3, im2-im3 x1, im4-im5 x2, im6 none;
    one point is seen twice in im4 and once in im5 (counts 2 for the pair, as hloc).
    """
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(
        model="SIMPLE_PINHOLE", width=100, height=100, params=[50, 50, 50], camera_id=1))
    sideways = pycolmap.Rotation3d(np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float))
    for i in range(1, 7):
        im = pycolmap.Image(name=f"im{i}.jpg", keypoints=np.zeros((40, 2)), camera_id=1,
                            image_id=i)
        rot = sideways if i == 6 else pycolmap.Rotation3d(np.eye(3))
        centre = np.array([float(i), 0, 0])
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(rot, -(rot.matrix() @ centre)))
    kp = dict.fromkeys(range(1, 7), 0)

    def point(*images: int) -> None:
        track = pycolmap.Track()
        for i in images:
            track.add_element(i, kp[i])
            kp[i] += 1
        rec.add_point3D(np.zeros(3), track)

    for images, times in (((1, 2), 5), ((1, 3), 3), ((2, 3), 1), ((4, 5), 1)):
        for _ in range(times):
            point(*images)
    point(4, 4, 5)
    path.mkdir()
    rec.write(path)
    return path


def test_from_model_covisibility(tmp_path):
    model = make_model(tmp_path / "sparse")
    assert unordered(pairs_from_model(model, 1)) == unordered(
        [("im1.jpg", "im2.jpg"), ("im3.jpg", "im1.jpg"), ("im4.jpg", "im5.jpg")])
    assert unordered(pairs_from_model(model, 5)) == unordered(
        [("im1.jpg", "im2.jpg"), ("im1.jpg", "im3.jpg"), ("im2.jpg", "im3.jpg"),
         ("im4.jpg", "im5.jpg")])


def test_from_poses_nearest_centres_and_angle(tmp_path):
    model = make_model(tmp_path / "sparse")
    near = pairs_from_poses(model, 1)
    # im5's nearest is im4 or im6 (both at 1); im6 looks 90 degrees away: excluded
    assert all("im6.jpg" not in p for p in near)
    assert unordered(near) == unordered(
        [("im1.jpg", "im2.jpg"), ("im2.jpg", "im3.jpg"), ("im3.jpg", "im4.jpg"),
         ("im4.jpg", "im5.jpg")])
    anyway = pairs_from_poses(model, 1, max_angle=None)
    assert frozenset(("im5.jpg", "im6.jpg")) in unordered(anyway)
    assert len(pairs_from_poses(model, 10)) == 10  # all pairs among im1..im5


# --------------------------------------------------------------------------- the CLI
def test_cli_exhaustive_default_features_and_queries(feats, tmp_path, d2):
    p = d2("pairs", "exhaustive", cwd=tmp_path, check=True)  # --features feats.h5 by default
    assert "10 pairs of 5 images" in p.stdout
    assert unordered(read_pairs(tmp_path / "pairs.txt")) == unordered(pairs_exhaustive(NAMES))
    p = d2("pairs", "exhaustive", "--query-prefix", "q/", "--out", "loc.txt", "--json",
           cwd=tmp_path, check=True)
    assert json.loads(p.stdout)["pairs"] == 6
    assert all(a.startswith("q/") and b.startswith("db/")
               for a, b in read_pairs(tmp_path / "loc.txt"))
    (tmp_path / "refs.txt").write_text("db/a.jpg\n")
    d2("pairs", "exhaustive", "--query-prefix", "q/", "--ref-list", "refs.txt", "-o", "two.txt",
       cwd=tmp_path, check=True)
    assert read_pairs(tmp_path / "two.txt") == [("q/x.jpg", "db/a.jpg"), ("q/y.jpg", "db/a.jpg")]


def test_cli_sequential_and_image_list(tmp_path, d2):
    (tmp_path / "list.txt").write_text("v/0003.png\nv/0001.png\nv/0002.png\n")
    d2("pairs", "sequential", "--image-list", "list.txt", "--overlap", "1", cwd=tmp_path,
       check=True)
    assert read_pairs(tmp_path / "pairs.txt") == [("v/0001.png", "v/0002.png"),
                                                  ("v/0002.png", "v/0003.png")]


def test_cli_from_model_and_poses(tmp_path, d2):
    make_model(tmp_path / "sparse")
    d2("pairs", "from-model", "sparse", "--num-matched", "1", cwd=tmp_path, check=True)
    assert len(read_pairs(tmp_path / "pairs.txt")) == 3
    p = d2("pairs", "from-poses", "sparse", "-k", "1", "--any-angle", "--json", cwd=tmp_path,
           check=True)
    assert json.loads(p.stdout)["method"] == "from-poses"
    assert frozenset(("im5.jpg", "im6.jpg")) in unordered(read_pairs(tmp_path / "pairs.txt"))


@pytest.mark.parametrize("args,message", [
    (["exhaustive", "--features", "nope.h5"], "nope.h5: features file not found"),
    (["exhaustive", "--query-list", "missing.txt"], "missing.txt: name list not found"),
    (["exhaustive", "--query-prefix", "zz"], "no query image matches prefix 'zz'"),
    (["exhaustive", "--image-list", "spaces.txt"], "contains whitespace"),
    (["sequential", "--overlap", "0"], "overlap must be >= 1"),
    (["from-model", "nowhere"], "nowhere: COLMAP model folder not found"),
    (["from-poses", "."], "no COLMAP model here"),
])
def test_cli_errors_are_one_line(feats, tmp_path, d2, args, message):
    (tmp_path / "spaces.txt").write_text("my photo.jpg\nother.jpg\n")
    p = d2("pairs", *args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pairs.txt").exists()


# --------------------------------------------------------------------------- at scale
def reference_normalize(pairs) -> list[tuple[str, str]]:
    """The definition: drop self pairs and later repeats of an unordered pair."""
    seen, out = set(), []
    for a, b in pairs:
        if a != b and frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_normalize_and_stream_keep_the_first_order_seen(seed):
    rng = np.random.default_rng(seed)
    names = [f"n{i}" for i in range(int(rng.integers(1, 12)))]
    pairs = [(str(a), str(b)) for a, b in rng.choice(names, (int(rng.integers(0, 200)), 2))]
    want = reference_normalize(pairs)
    assert normalize_pairs(pairs) == want
    assert list(iter_unique_pairs(iter(pairs))) == want
    assert normalize_pairs(iter(pairs)) == want  # a one-pass stream is enough


@pytest.mark.parametrize("seed", range(8))
def test_streamed_exhaustive_is_the_deduplicated_product(seed):
    rng = np.random.default_rng(seed)
    names = [f"im{i}.jpg" for i in range(int(rng.integers(1, 9)))]
    # queries and references that overlap, repeat names, or leave one side to default
    q = [str(x) for x in rng.choice(names, int(rng.integers(1, 7)))]
    r = [str(x) for x in rng.choice(names, int(rng.integers(1, 7)))]
    for queries, refs in ((q, r), (q, None), (None, r)):
        got = list(iter_pairs_exhaustive(names, queries, refs))
        full = [(a, b) for a in (queries if queries is not None else
                                 [n for n in names if n not in set(refs)])
                for b in (refs if refs is not None else [n for n in names if n not in set(q)])]
        assert got == reference_normalize(full) == pairs_exhaustive(names, queries, refs)
    assert list(iter_pairs_exhaustive(names)) == reference_normalize(
        (a, b) for i, a in enumerate(names) for b in names[i + 1:])


def test_pairs_file_read_a_line_at_a_time_keeps_line_numbers(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"# c\r\na b 0.5\r\n\r\nb a\nc c\nb c 1 2\r\nx\n")
    with pytest.raises(BadFile, match=r"p.txt:7: expected 'name0 name1', got 'x'"):
        read_pairs(p)
    p.write_bytes(b"a b\n\nb c d\n")
    with pytest.raises(BadFile, match=r"p.txt:3: .*numeric columns"):
        read_pair_lines(p)
    p.write_bytes(b"# c\r\na b 0.5\r\n\r\nb a\nc c\nb c 1 2\r\n")
    assert read_pair_lines(p) == [("a", "b"), ("b", "a"), ("c", "c"), ("b", "c")]
    assert read_pairs(p) == [("a", "b"), ("b", "c")]
    with pytest.raises(InputNotFound, match="pairs file not found"):
        iter_pair_lines(tmp_path / "none.txt")  # at once, not at the first pair


def test_save_pairs_streams_and_failures_leave_the_old_file(tmp_path):
    out = tmp_path / "p.txt"
    r = save_pairs(iter_pairs_exhaustive(NAMES), out, "exhaustive", unique=True)
    assert (r.pairs, r.images) == (10, 5)
    assert read_pair_lines(out) == pairs_exhaustive(NAMES)
    before = out.read_bytes()

    def bad_later():
        yield from iter_pairs_exhaustive(NAMES)
        yield ("db/a.jpg", "with space.jpg")

    with pytest.raises(UsageError, match="whitespace"):
        save_pairs(bad_later(), out, unique=True)
    with pytest.raises(EmptyInput, match="no pairs to write"):
        save_pairs(iter([("a", "a")]), out, "exhaustive")
    with pytest.raises(EmptyInput):
        save_pairs(iter_pairs_exhaustive(["only.jpg"]), out, unique=True)
    with pytest.raises(EmptyInput):
        save_pairs(iter([]), tmp_path / "new" / "p.txt")
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["p.txt"]
    assert write_pairs(tmp_path / "empty.txt", []) == 0  # write_pairs itself allows none
    assert (tmp_path / "empty.txt").read_text() == ""


def test_writing_exhaustive_pairs_holds_no_pair_list(tmp_path):
    names = [f"images/{i:05d}.jpg" for i in range(1000)]  # 499,500 pairs
    tracemalloc.start()
    try:
        r = save_pairs(iter_pairs_exhaustive(names), tmp_path / "p.txt", unique=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.pairs == 499_500 and r.images == 1000
    # a list of the pairs alone: 64 bytes each (tuple and pointer), 32 MB
    assert peak < 8e6, peak
    with open(tmp_path / "p.txt") as f:
        assert next(f) == "images/00000.jpg images/00001.jpg\n"


def test_pairs_file_equals_streams_and_sees_what_read_pairs_sees(tmp_path):
    p = tmp_path / "p.txt"
    write_pairs(p, pairs_exhaustive(NAMES))
    assert pairs_file_equals(p, lambda: iter_pairs_exhaustive(NAMES)) == 10
    assert pairs_file_equals(p, lambda: iter_pairs_exhaustive(NAMES[:4])) is None
    assert pairs_file_equals(p, lambda: iter_pairs_exhaustive(NAMES + ["z.jpg"])) is None
    # self and repeated lines, dropped by read_pairs: still the same pairs
    p.write_text("db/a.jpg db/a.jpg\n" + "".join(f"{a} {b}\n{b} {a}\n"
                                                  for a, b in pairs_exhaustive(NAMES)))
    assert pairs_file_equals(p, lambda: iter_pairs_exhaustive(NAMES)) == 10
    p.write_text("db/a.jpg db/b.jpg\nthree names here\n")
    with pytest.raises(BadFile):
        pairs_file_equals(p, lambda: iter_pairs_exhaustive(NAMES))


def test_strategy_stream_equals_its_list(tmp_path):
    names = ["c.jpg", "a.jpg", "b.jpg", "d.jpg"]
    for s in (PairStrategy(), PairStrategy("sequential", overlap=2)):
        made = s.make(names)
        assert list(s.pairs(names)) == made == list(s.source(names)())
        assert made == reference_normalize(made)
    assert PairStrategy().make(names) == pairs_exhaustive(sorted(names))
