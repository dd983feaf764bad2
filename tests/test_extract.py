"""``d2 extract`` end to end: file layout, resume, failures, locking, kill -9."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import as_in_a_terminal

from d2cli.extract import ExtractSettings, extract
from d2cli.io import FeatureFile
from d2cli.io.h5store import H5Store
from d2cli.weights import DEFAULT_MODEL

FAST = ["--max-edge", "240", "--quiet"]


@pytest.fixture()
def images(tmp_path, samples_dir) -> Path:
    """Six sample photos in a nested folder (names with '/')."""
    root = tmp_path / "images"
    for i, src in enumerate(sorted(samples_dir.glob("*.jpg"))[:6]):
        dst = root / ("sub" if i % 2 else "") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


def read_all(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with FeatureFile(path) as ff:
        return {n: ff[n].as_arrays() for n in ff.names}


def assert_same_features(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        for k in a[name]:
            assert np.array_equal(a[name][k], b[name][k]), (name, k)


def test_layout_and_attributes(d2, images, tmp_path):
    out = tmp_path / "feats.h5"
    proc = d2("extract", images, "--out", out, "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["extracted"] == 6 and summary["failed"] == {}
    with h5py.File(out) as f:
        assert json.loads(f.attrs["settings_json"])["max_edge"] == 240
        assert f.attrs["model"] == DEFAULT_MODEL and len(f.attrs["model_sha256"]) == 64
        assert f.attrs["image_root"] == str(images.resolve())
        name = next(n for n in read_all(out) if n.startswith("sub/"))
        g = f[name]
        n = g["keypoints"].shape[0]
        assert n > 50
        assert g["keypoints"].dtype == np.float32 and g["keypoints"].shape == (n, 2)
        assert g["descriptors"].dtype == np.float16 and g["descriptors"].shape == (512, n)
        assert g["scores"].shape == (n,) and g["scales"].shape == (n,)
        assert g["image_size"].dtype == np.int64
        w, h = g["image_size"][()]
        kp = g["keypoints"][()]
        assert kp[:, 0].max() < w and kp[:, 1].max() < h  # original-image pixels
        assert w > 240 or h > 240  # the network saw a resized copy
        norms = np.linalg.norm(g["descriptors"][()].astype(np.float32), axis=0)
        assert np.allclose(norms, 1, atol=2e-3)
        # the global descriptor for retrieval: GeM of the stored local descriptors
        from d2cli.retrieval import pooled

        assert f.attrs["global_descriptor"] == "gem"
        gd = g["global_descriptor"][()]
        assert gd.dtype == np.float32 and gd.shape == (512,)
        np.testing.assert_array_equal(gd, pooled(g["descriptors"][()]))


def test_resume_skips_and_overwrite_redoes(d2, images, tmp_path):
    out = tmp_path / "f.h5"
    first = sorted(images.rglob("*.jpg"))[:2]
    assert d2("extract", *first, "--image-root", images, "--out", out, *FAST).returncode == 0
    proc = d2("extract", images, "--out", out, "--json", *FAST)
    s = json.loads(proc.stdout)
    assert (s["skipped"], s["extracted"]) == (2, 4)
    proc = d2("extract", images, "--out", out, "--json", "--overwrite", *FAST)
    assert json.loads(proc.stdout)["extracted"] == 6
    assert len(read_all(out)) == 6


def test_other_settings_are_refused_unless_overwrite(d2, images, tmp_path):
    out = tmp_path / "f.h5"
    d2("extract", images, "--out", out, *FAST, check=True)
    proc = d2("extract", images, "--out", out, "--max-edge", "200", "--quiet")
    assert proc.returncode == 2
    assert "max_edge: 240 -> 200" in proc.stderr and "Traceback" not in proc.stderr
    proc = d2("extract", images, "--out", out, "--max-edge", "200", "--quiet", "--overwrite",
              "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["extracted"] == 6


def test_bad_images_are_reported_and_others_done(d2, images, tmp_path):
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (images / "notes.png").write_text("hello")
    data = next(images.glob("*.jpg")).read_bytes()
    (images / "truncated.jpg").write_bytes(data[:2000])
    out = tmp_path / "f.h5"
    proc = d2("extract", images, "--out", out, *FAST)
    assert proc.returncode == 1
    for bad in ("broken.jpg", "notes.png", "truncated.jpg"):
        assert bad in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(read_all(out)) == 6


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "d2_tf"], "d2 weights fetch d2_tf"),
    (["--scales", "0,1"], "scales"),
    (["--scales", "x"], "--scales expects numbers"),
])
def test_setup_errors_exit_2_with_one_line(d2, images, tmp_path, args, message):
    proc = d2("extract", images, "--out", tmp_path / "f.h5", *args, *FAST,
              )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_missing_empty_corrupt_and_unwritable(d2, images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["extract", tmp_path / "nope", "--out", tmp_path / "a.h5"], "no such file"),
        (["extract", empty, "--out", tmp_path / "b.h5"], "no images found"),
        (["extract", images, "--out", empty], "is a directory"),
        (["extract", images, "--model", tmp_path / "bad.pth", "--out", tmp_path / "c.h5"],
         "not a loadable checkpoint"),
    ]
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append((["extract", images, "--out", ro / "f.h5"], "cannot write"))
    for args, message in cases:
        proc = d2(*args, *FAST)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_output_file_is_a_clear_error(d2, images, tmp_path):
    out = tmp_path / "f.h5"
    out.write_bytes(b"this is not hdf5")
    proc = d2("extract", images, "--out", out, *FAST)
    assert proc.returncode == 2 and "not a readable HDF5 file" in proc.stderr


def test_second_writer_is_refused(images, tmp_path):
    out = tmp_path / "f.h5"
    with H5Store(out, attrs={}):
        from d2cli.errors import OutputLocked
        with pytest.raises(OutputLocked):
            extract([images], out, settings=ExtractSettings(max_edge=240))


def test_python_api_and_image_list(images, tmp_path):
    names = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg"))[:3]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names) + "\n\n")
    res = extract(out=tmp_path / "f.h5", image_list=lst, image_root=images,
                  settings=ExtractSettings(max_edge=240, max_keypoints=50), workers=0)
    assert sorted(res.extracted) == names
    feats = read_all(tmp_path / "f.h5")
    assert all(len(f["scores"]) <= 50 for f in feats.values())


def _spawn(images: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "d2cli", "extract", str(images), "--out", str(out),
           "--commit-every", "1", *FAST]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_in_a_terminal)


def _parts(out: Path) -> set[str]:
    d = Path(str(out) + ".parts")
    return {p.name for p in d.glob("*")} if d.exists() else set()


@pytest.fixture()
def all_images(tmp_path, samples_dir) -> Path:
    root = tmp_path / "all"
    shutil.copytree(samples_dir, root / "a", ignore=shutil.ignore_patterns("*.md"))
    shutil.copytree(samples_dir, root / "b", ignore=shutil.ignore_patterns("*.md"))
    return root  # 20 images: enough work for several kills on a fast machine


def test_sigkill_at_random_moments_then_resume(all_images, tmp_path, d2):
    """Real kill -9 while extracting; the re-run completes the same file as one clean run."""
    images = all_images
    clean = tmp_path / "clean.h5"
    d2("extract", images, "--out", clean, *FAST, check=True)
    expected = read_all(clean)
    out = tmp_path / "killed.h5"
    rng = random.Random(0)
    kills = 0
    for _ in range(5):
        before = _parts(out)
        proc = _spawn(images, out)
        deadline = time.time() + 120
        while proc.poll() is None and not (_parts(out) - before) and time.time() < deadline:
            time.sleep(0.05)  # wait until this run has written something
        time.sleep(rng.uniform(0.0, 0.5))  # then kill at a random moment
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.exists():
            read_all(out)  # the final file is readable at any moment
    assert kills >= 3
    proc = d2("extract", images, "--out", out, *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"] > 0
    assert_same_features(read_all(out), expected)
    assert not Path(str(out) + ".parts").exists()


def test_ctrl_c_keeps_finished_images(images, tmp_path, d2):
    out = tmp_path / "f.h5"
    proc = _spawn(images, out)
    deadline = time.time() + 120
    parts = Path(str(out) + ".parts")
    while time.time() < deadline and not (parts.exists() and len(list(parts.glob("*.h5"))) >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "re-run to resume" in err and "Traceback" not in err
    done = read_all(out)
    assert 2 <= len(done) <= 6
    proc = d2("extract", images, "--out", out, "--json", *FAST)
    assert json.loads(proc.stdout)["skipped"] == len(done)


@pytest.fixture()
def same_size(tmp_path, samples_dir) -> Path:
    from PIL import Image
    root = tmp_path / "same"
    root.mkdir()
    for src in sorted(samples_dir.glob("*.jpg"))[:4]:
        Image.open(src).convert("RGB").resize((200, 150)).save(root / (src.stem + ".png"))
    return root


def test_batches_and_memory_cap_splits_match_one_by_one(same_size, tmp_path):
    from d2cli.extract import Extractor
    one = extract([same_size], tmp_path / "one.h5", batch_size=1, workers=0)
    # a cap below one image's need forces every batch of 4 to be split down to singles
    batched = extract([same_size], tmp_path / "b.h5", batch_size=4, memory_cap_gb=1e-6)
    assert one.keypoints == batched.keypoints
    a, b = read_all(tmp_path / "one.h5"), read_all(tmp_path / "b.h5")
    for name in a:
        assert np.allclose(a[name]["keypoints"], b[name]["keypoints"], atol=1e-3)
    ext = Extractor(None, ExtractSettings(), "cpu", memory_cap_gb=1e-6)
    calls = []
    orig = ext._trunk
    ext._trunk = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    x = [np.zeros((3, 64, 64), np.float32)] * 4
    assert len(ext.run_batch(x)) == 4 and calls == [1, 1, 1, 1]


def test_bf16_trunk_on_cpu_is_close_to_fp32(golden_dir, tmp_path):
    from d2cli.extract import Extractor
    from d2cli.images import load_rgb
    rgb = load_rgb(golden_dir / "b.png")
    f32 = Extractor(None, ExtractSettings(), "cpu")(rgb)
    bf16 = Extractor(None, ExtractSettings(precision="bf16"), "cpu")(rgb)
    assert abs(len(bf16) - len(f32)) <= 0.3 * len(f32)
    # most fp32 keypoints are found again within a pixel
    d = np.linalg.norm(f32.keypoints[:, None] - bf16.keypoints[None], axis=2).min(axis=1)
    assert (d < 1.0).mean() > 0.6
    res = extract([golden_dir / "b.png"], tmp_path / "f.h5",
                  settings=ExtractSettings(precision="bf16"))
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.attrs["settings"]["precision"] == "bf16"
    assert res.extracted == ["b.png"]
