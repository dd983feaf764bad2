"""What a new user's shell scripts feed the CLI (issue 20): every image failing, names in
errors, image lists, pixel limits, big JPEGs decoded reduced, strict pairs lines. Real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SUBSET
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
    assert proc.returncode == 2 and "pairs.txt:1: expected 'name0 name1'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_reduced_decoding_of_a_big_jpeg_is_bounded_and_lands_in_original_pixels(
        d2, tmp_path, samples_dir):
    from d2cli.extract import ExtractSettings, extract
    from d2cli.images import load_rgb, load_rgb_reduced
    from d2cli.io.features import FeatureFile

    src = load_rgb(samples_dir / SUBSET[0])
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(src).resize((3200, 2136), Image.BICUBIC).save(big / "aerial.jpg", quality=92)
    Image.fromarray(src).save(big / "small.png")
    rgb, size = load_rgb_reduced(big / "aerial.jpg", (400, 267))
    assert size == (3200, 2136) and rgb.shape == (267, 400, 3)  # 1/8: libjpeg's DCT scaling

    # 3.2 MP full decode is over a 1 MP limit; the reduced decode is 0.1 MP and passes
    common = ["--max-edge", "400", "--max-pixels", "1000000", "--device", "cpu", "--json"]
    proc = d2("extract", big / "aerial.jpg", "--out", tmp_path / "full.h5", *common)
    assert proc.returncode == 2 and "over the limit of 1 MP" in proc.stdout
    proc = d2("extract", big, "--out", tmp_path / "red.h5", *common, "--decode", "reduced")
    assert proc.returncode == 0, proc.stderr
    full = extract([big / "aerial.jpg", big / "small.png"], tmp_path / "full.h5", device="cpu",
                   settings=ExtractSettings(max_edge=400))
    assert not full.failed
    with FeatureFile(tmp_path / "red.h5") as r, FeatureFile(tmp_path / "full.h5") as f:
        assert r.attrs["settings"]["decode"] == "reduced"
        fr, ff = r["aerial.jpg"], f["aerial.jpg"]
        assert list(fr.image_size) == [3200, 2136] == list(ff.image_size)
        assert 0.7 < len(fr.keypoints) / len(ff.keypoints) < 1.4
        # keypoints in original pixels: within one network pixel (8 px) of the full decode's
        d = np.linalg.norm(fr.keypoints[:, None] - ff.keypoints[None], axis=2).min(1)
        assert np.median(d) < 8
        # formats without DCT scaling decode in full: the very same features
        assert np.array_equal(r["small.png"].keypoints, f["small.png"].keypoints)
        assert np.array_equal(r["small.png"].descriptors, f["small.png"].descriptors)
    # the decode mode is a setting: resuming the file with another one is refused
    proc = d2("extract", big, "--out", tmp_path / "red.h5", *common)
    assert proc.returncode == 2 and "decode: reduced -> full" in proc.stdout
