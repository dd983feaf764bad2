"""What a new user hits from shell scripts (issue 20): total failures, names in errors,
strict pairs files, big images, image lists, re-runs and piped output. Real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SUBSET
from PIL import Image

from d2cli.io.pairs import normalize_pairs, read_pairs
from d2cli.pairs import pairs_from_retrieval, read_global_descriptors

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


def test_weights_list_piped_is_one_line_per_model(d2):
    proc = d2("weights", "list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["name", "kind", "available"]
    assert any(ln.startswith("d2cli-v1\tbuilt-in\tyes\t") for ln in lines[1:])
    assert all(len(ln.split("\t")) == 7 for ln in lines[:-1] if "\t" in ln)


@pytest.fixture(scope="module")
def six(subset_photos, tmp_path_factory) -> Path:
    """The SUBSET photos and a list of them beside them."""
    root = tmp_path_factory.mktemp("six")
    for n in SUBSET:
        shutil.copy(subset_photos / n, root / n)
    (root / "list.txt").write_text("".join(n + "\n" for n in SUBSET))
    return root


def test_sfm_sequential_pairs_from_an_image_list_then_export(d2, six, tmp_path):
    import pycolmap

    w = tmp_path / "w"
    proc = d2("sfm", "--image-list", six / "list.txt", "--out", w, "--max-edge", "400",
              "--pairs-from", "sequential", "--overlap", "3", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["steps"]["pairs"]["method"] == "sequential"
    assert s["steps"]["pairs"]["pairs"] == 5 + 4 + 3 and s["steps"]["match"]["pairs"] == 12
    assert s["steps"]["reconstruct"]["registered"] >= 3
    txt = tmp_path / "txt"
    assert d2("export", w / "sparse", "--out", txt).returncode == 0
    rec, back = pycolmap.Reconstruction(w / "sparse"), pycolmap.Reconstruction(txt)
    assert (txt / "points3D.txt").is_file() and back.num_points3D() == rec.num_points3D()
    ply = tmp_path / "points.ply"
    proc = d2("export", w / "sparse", "--out", ply, "--format", "ply", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["points3D"] == rec.num_points3D()
    assert f"element vertex {rec.num_points3D()}".encode() in ply.read_bytes()[:200]


def test_sfm_changing_the_pair_strategy_leaves_exactly_the_new_pairs_in_the_database(
        d2, six, tmp_path):
    from d2cli.colmap import database_stats

    w = tmp_path / "w"
    base = ["sfm", six, "--out", w, "--max-edge", "400", "--device", "cpu", "--json"]
    proc = d2(*base)  # exhaustive: 15 pairs
    assert proc.returncode == 0, proc.stderr
    assert database_stats(w / "database.db")["matched_pairs"] == 15
    proc = d2(*base, "--pairs-from", "sequential", "--overlap", "2")  # 5 + 4 pairs
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["steps"]["import"]["removed_pairs"] == 15 - 9
    stats = database_stats(w / "database.db")
    assert stats["matched_pairs"] == 9 and stats["verified_pairs"] <= 9
    assert s["steps"]["match"]["pairs"] == 9  # the matches file keeps all 15 for later


def test_sfm_retrieval_pairs_need_every_image_in_the_descriptors(d2, six, tmp_path):
    import h5py

    desc = tmp_path / "global.h5"
    rng = np.random.default_rng(0)
    with h5py.File(desc, "w") as f:
        for n in SUBSET[:5]:
            f.create_dataset(f"{n}/global_descriptor", data=rng.normal(size=64).astype("f4"))
    args = ["sfm", six, "--out", tmp_path / "w", "--max-edge", "200", "--device", "cpu",
            "--pairs-from", "retrieval", "--descriptors", desc, "--num-matched", "2"]
    proc = d2(*args)
    assert proc.returncode == 2 and f"no global descriptor for 1 image(s), e.g. {SUBSET[5]}" \
        in proc.stderr
    with h5py.File(desc, "a") as f:
        f.create_dataset(f"{SUBSET[5]}/global_descriptor", data=rng.normal(size=64).astype("f4"))
    d2(*args)  # mapping random pairs may fail; the pairs are written before it
    names, d = read_global_descriptors(desc)
    expected = pairs_from_retrieval(names, d, 2)
    assert read_pairs(tmp_path / "w" / "pairs.txt") == normalize_pairs(expected)
    assert 6 <= len(expected) <= 12  # 2 per image, unordered duplicates dropped


def test_sfm_retrieval_pairs_from_d2s_own_descriptors(d2, six, tmp_path):
    """--pairs-from retrieval with no file: the features file's global descriptors."""
    from d2cli.pairs import read_feature_global_descriptors

    w = tmp_path / "w"
    proc = d2("sfm", six, "--out", w, "--max-edge", "200", "--device", "cpu",
              "--pairs-from", "retrieval", "--num-matched", "2", "--json")
    # mapping 6 images on 2-NN pairs may fail (exit 1, one line); the pairs are the point
    assert proc.returncode != 3 and "Traceback" not in proc.stderr, proc.stderr
    names, d = read_feature_global_descriptors(w / "feats.h5")
    assert len(names) == 6
    expected = normalize_pairs(pairs_from_retrieval(names, d, 2))
    assert read_pairs(w / "pairs.txt") == expected


# --max-edge 640: over mapping seeds 0-5 x 1 and 2 threads the refined database of the six
# registered all 6 (140-381 points) 12 times; at 400 px it registered 2-6 or failed (exit 2)
REFINE_EDGE = "640"


def test_sfm_refine_writes_refined_copies_and_keeps_the_originals(d2, six, tmp_path):
    import h5py
    import pycolmap

    from d2cli.colmap import database_stats
    from d2cli.reconstruct import MODEL_FILES

    w = tmp_path / "w"
    args = ["sfm", six, "--out", w, "--max-edge", REFINE_EDGE, "--device", "cpu", "--refine",
            "--seed", "0", "--json"]
    proc = d2(*args)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    r = json.loads((w / "refine.json").read_text())["summary"]
    assert r["keypoints_moved"] > 0 and 0 < r["median_shift"] <= 10  # max_shift 10 px
    with h5py.File(w / "feats.h5") as a, h5py.File(w / "feats-refined.h5") as b:
        original = {n: a[n]["keypoints"][()] for n in SUBSET}
        refined = {n: b[n]["keypoints"][()] for n in SUBSET}
        for n in SUBSET:
            assert np.array_equal(a[n]["descriptors"][()], b[n]["descriptors"][()])
    shift = [np.abs(refined[n] - original[n]).max() for n in SUBSET]
    assert 0 < min(shift) and max(shift) <= 10
    # the original database keeps the original keypoints, the refined copy the refined ones,
    # with the very same images and pairs
    assert database_stats(w / "database.db") == database_stats(w / "database-refined.db")
    for db_name, kps in (("database.db", original), ("database-refined.db", refined)):
        db = pycolmap.Database.open(w / db_name)
        try:
            for im in db.read_all_images():
                got = db.read_keypoints(im.image_id)[:, :2]
                assert np.allclose(got, kps[im.name] + 0.5, atol=1e-4), (db_name, im.name)
        finally:
            db.close()
    # the model is mapped from the refined database: its 2-D points are the refined keypoints
    assert s["steps"]["reconstruct"]["database"] == str(w / "database-refined.db")
    assert all((w / "sparse" / f).is_file() for f in MODEL_FILES)
    rec = pycolmap.Reconstruction(w / "sparse")
    assert rec.num_reg_images() >= 5 and rec.num_points3D() >= 50, rec.summary()
    assert s["steps"]["reconstruct"]["registered"] == rec.num_reg_images()
    for im in rec.images.values():
        xy = np.array([p.xy for p in im.points2D])
        assert np.allclose(xy, refined[im.name] + 0.5, atol=1e-4), im.name
    model = {f: (w / "sparse" / f).read_bytes() for f in MODEL_FILES}
    kept = (w / "feats-refined.h5").stat().st_mtime_ns
    # a re-run finds everything done: refinement and mapping are skipped, nothing rewritten
    again = d2(*args)
    assert again.returncode == 0, again.stderr
    skipped = json.loads(again.stdout)["skipped"]
    assert "refine" in skipped and "reconstruct" in skipped, skipped
    assert (w / "feats-refined.h5").stat().st_mtime_ns == kept
    assert {f: (w / "sparse" / f).read_bytes() for f in MODEL_FILES} == model


def test_sfm_refine_interrupted_and_killed_resumes_to_the_same_keypoints(six, tmp_path):
    """Ctrl-C during refinement -> 130, then SIGKILL: the journal keeps the finished pairs
    and the third run ends with the keypoints of an uninterrupted run, bit for bit."""
    import os
    import signal
    import subprocess
    import sys

    import h5py

    env = dict(os.environ, COLUMNS="200", D2CLI_PROGRESS_SECONDS="0")
    w = tmp_path / "w"
    args = [sys.executable, "-m", "d2cli", "sfm", str(six), "--out", str(w), "--max-edge", "400",
            "--device", "cpu", "--refine"]  # no --json: it silences the progress lines
    ref = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert (w / "feats-refined.h5").is_file(), ref.stderr
    with h5py.File(w / "feats-refined.h5") as f:
        expected = {n: f[n]["keypoints"][()] for n in SUBSET}
    for f in ("feats-refined.h5", "database-refined.db", "refine.json"):
        (w / f).unlink()
    shutil.rmtree(w / "sparse", ignore_errors=True)

    def interrupt(sig: int, after: int) -> tuple[int, str]:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("refine: ") and int(line.split()[1].split("/")[0]) >= after:
                proc.send_signal(sig)
                break
        seen.append(proc.stderr.read())
        return proc.wait(timeout=120), "".join(seen)

    rc, err = interrupt(signal.SIGINT, 1)
    assert rc == 130 and "Traceback" not in err, err
    assert not (w / "feats-refined.h5").exists()
    journal = w / "feats-refined.h5.partial"
    kept = len(journal.read_text().splitlines()) - 1
    assert kept >= 1
    rc, err = interrupt(signal.SIGKILL, kept + 2)
    assert rc == -signal.SIGKILL, err
    assert len(journal.read_text().splitlines()) - 1 >= kept + 1
    again = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env,
                           timeout=600)
    s = json.loads(again.stdout)
    assert s["steps"]["refine"]["resumed_pairs"] >= kept + 1, again.stderr
    assert not journal.exists()
    with h5py.File(w / "feats-refined.h5") as f:
        for n in SUBSET:
            assert np.array_equal(f[n]["keypoints"][()], expected[n])


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


def test_refine_command_between_import_and_reconstruct(d2, six, tmp_path):
    """The step-by-step pipeline: extract, match, colmap-import, d2 refine, reconstruct."""
    import h5py
    import pycolmap

    from d2cli.reconstruct import MODEL_FILES

    w = tmp_path / "w"
    proc = d2("sfm", six, "--out", w, "--max-edge", REFINE_EDGE, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    proc = d2("refine", w / "database.db", "--features", w / "feats.h5", "--device", "cpu",
              "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["keypoints_moved"] > 0 and s["features"] == str(w / "feats-refined.h5")
    assert (w / "database-refined.db").is_file()
    with h5py.File(w / "feats-refined.h5") as f:
        assert json.loads(f.attrs["refine_json"])["source"] == "image"
        refined = {n: f[n]["keypoints"][()] for n in SUBSET}
    with h5py.File(w / "feats.h5") as f:
        assert all(not np.array_equal(f[n]["keypoints"][()], refined[n]) for n in SUBSET)
    sparse = tmp_path / "sparse"
    proc = d2("reconstruct", w / "database-refined.db", "--out", sparse, "--seed", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert all((sparse / f).is_file() for f in MODEL_FILES)
    rec = pycolmap.Reconstruction(sparse)
    assert rec.num_reg_images() >= 5 and rec.num_points3D() >= 50, rec.summary()
    assert json.loads(proc.stdout)["registered"] == rec.num_reg_images()
    for im in rec.images.values():  # mapped from the refined keypoints
        xy = np.array([p.xy for p in im.points2D])
        assert np.allclose(xy, refined[im.name] + 0.5, atol=1e-4), im.name
    # bad input: one line, exit 2
    proc = d2("refine", tmp_path / "missing.db", "--features", w / "feats.h5")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "missing.db" in proc.stderr and "Traceback" not in proc.stderr
