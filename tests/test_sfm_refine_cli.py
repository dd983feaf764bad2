"""Featuremetric keypoint refinement from the command line (issue 20): d2 sfm --refine
(refined copies beside the originals, the model mapped from them, re-runs skipping), Ctrl-C and
SIGKILL during refinement resuming bit for bit, and d2 refine between colmap-import and
reconstruct. Real processes."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import SUBSET, as_in_a_terminal

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
                                text=True, preexec_fn=as_in_a_terminal)
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
