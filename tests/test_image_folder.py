"""Where a features file's images live (io.features.image_folder): one rule for every step."""

from __future__ import annotations

import shutil

import h5py
import pytest
from test_hostile import CAMERA, entry

from d2cli.errors import InputNotFound
from d2cli.io.features import FeatureFile, image_folder, require_image_folder
from d2cli.io.h5store import write_attrs


def _features(path, root):
    with h5py.File(path, "w") as f:
        write_attrs(f, {"model": "hed-vgg16", "image_root": str(root)})
        for n in ("a.jpg", "b.jpg"):
            entry(f, n)
    return path


def test_given_folder_then_recorded_root_then_none(tmp_path):
    root, other = tmp_path / "images", tmp_path / "elsewhere"
    root.mkdir(), other.mkdir()
    feats = _features(tmp_path / "feats.h5", root)
    with FeatureFile(feats) as ff:
        assert image_folder(ff) == root
        assert image_folder(ff, other) == other
        with pytest.raises(InputNotFound, match="missing: image folder not found"):
            image_folder(ff, tmp_path / "missing")
        root.rmdir()  # the images moved: no folder, and no silent "."
        assert image_folder(ff) is None
        with pytest.raises(InputNotFound, match=f"refinement reads the images, and the image "
                           f"folder {root} is not there: pass --image-dir"):
            require_image_folder(ff, None, "refinement")
        assert require_image_folder(ff, other, "refinement") == other


def test_refine_with_the_recorded_folder_gone_names_it(tmp_path, d2):
    """The refine job used to fall back to the working directory and blame one image."""
    root = tmp_path / "images"
    root.mkdir()
    feats = _features(tmp_path / "feats.h5", root)
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n")
    for args in (["match", "-p", tmp_path / "pairs.txt", "-f", feats, "-o", tmp_path / "m.h5"],
                 ["colmap-import", tmp_path / "db.db", "-f", feats, "-m", tmp_path / "m.h5",
                  "--no-verify", *CAMERA]):
        proc = d2(*args, "-q")
        assert proc.returncode == 0, proc.stderr
    shutil.rmtree(root)
    proc = d2("refine", tmp_path / "db.db", "-f", feats, "-q")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"d2: error: refinement reads the images, and the image folder {root} is not there: "
        "pass --image-dir"]
