"""What a new user hits from shell scripts (issue 20): total failures, names in errors,
strict pairs files, big images, image lists, re-runs and piped output. Real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FAST = ["--max-edge", "200", "--device", "cpu"]


@pytest.fixture()
def two(tmp_path, samples_dir) -> Path:
    root = tmp_path / "two"
    root.mkdir()
    for src in sorted(samples_dir.glob("*.jpg"))[:2]:
        shutil.copy(src, root / src.name)
    return root


def test_every_image_failing_is_exit_2_with_no_output_and_json_says_why(d2, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(bad / "tiny.png")
    out = tmp_path / "f.h5"
    proc = d2("extract", bad, "--out", out, *FAST, "--json")
    assert proc.returncode == 2, proc.stderr
    err = json.loads(proc.stdout)
    assert err["exit_code"] == 2 and "all 2 images failed" in err["error"]
    assert str(bad / "tiny.png") in err["error"]  # the 1x1 image is named
    assert not out.exists() and "Traceback" not in proc.stderr


def test_image_list_names_resolve_next_to_the_list(d2, two, tmp_path):
    lst = two / "list.txt"
    lst.write_text("".join(p.name + "\n" for p in sorted(two.glob("*.jpg"))))
    proc = d2("extract", "--image-list", lst, "--out", tmp_path / "f.h5", *FAST, "--json",
              cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["extracted"] == 2
    nowhere = tmp_path / "nowhere.txt"
    nowhere.write_text("missing1.jpg\nmissing2.jpg\n")
    proc = d2("extract", "--image-list", nowhere, "--out", tmp_path / "g.h5", *FAST)
    assert proc.returncode == 2 and "all 2 images failed" in proc.stderr
    assert not (tmp_path / "g.h5").exists()


def test_pixel_limit_is_an_option_and_no_pillow_warning(d2, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.full((1200, 1500, 3), 128, np.uint8)).save(big / "wide.png")
    proc = d2("extract", big, "--out", tmp_path / "f.h5", *FAST, "--max-pixels", "1000000")
    assert proc.returncode == 2
    assert "wide.png: 1500x1200 is 2 MP, over the limit of 1 MP (--max-pixels" in proc.stderr
    proc = d2("extract", big, "--out", tmp_path / "f.h5", *FAST, "--max-pixels", "0")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "site-packages" not in proc.stderr


def test_third_name_on_a_pairs_line_is_refused(d2, two, tmp_path):
    feats = tmp_path / "f.h5"
    assert d2("extract", two, "--out", feats, *FAST).returncode == 0
    a, b = sorted(p.name for p in two.glob("*.jpg"))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{a} {b} 0.93\n")  # a score column is fine
    proc = d2("match", "--pairs", pairs, "--features", feats, "--out", tmp_path / "m.h5")
    assert proc.returncode == 0, proc.stderr
    again = d2("match", "--pairs", pairs, "--features", feats, "--out", tmp_path / "m.h5")
    assert again.returncode == 0 and "all 1 pairs already matched" in again.stdout
    pairs.write_text(f"{a} {b} {a}\n")
    proc = d2("match", "--pairs", pairs, "--features", feats, "--out", tmp_path / "n.h5")
    assert proc.returncode == 2 and f"pairs.txt:1: expected 'name0 name1'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_weights_list_piped_is_one_line_per_model(d2):
    proc = d2("weights", "list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["name", "kind", "available"]
    assert any(ln.startswith("d2cli-v1\tbuilt-in\tyes\t") for ln in lines[1:])
    assert all(len(ln.split("\t")) == 7 for ln in lines[:-1] if "\t" in ln)
