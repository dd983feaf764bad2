"""Pair lists: exhaustive, queries x references, sequential, from a COLMAP model, ``d2 pairs``."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from d2cli.errors import EmptyInput, MissingName, UsageError
from d2cli.io.h5store import write_attrs
from d2cli.io.pairs import read_pairs
from d2cli.pairs import (
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
    (["exhaustive", "--features", "nope.h5"], "nope.h5: no such file"),
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
