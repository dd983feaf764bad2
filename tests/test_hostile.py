"""Hostile and careless inputs (issue 29): each test makes the attack or the fault for real.

Real symlinks planted where d2 writes, real HDF5 files with external storage, external
links and declared shapes they do not hold, real colliding image names, real binary pairs
files; the real ``d2`` process runs on them. What must hold: no file outside the output is
read or written, nothing huge is allocated, one bad entry fails only its items, and the
error is one line naming the file and the entry (``--json``: one object), never exit 3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import as_in_a_terminal

from d2cli.errors import BadFile
from d2cli.io.atomic import write_text_atomic
from d2cli.io.features import FeatureFile, MatchFile
from d2cli.io.h5store import write_attrs
from d2cli.io.pairs import read_pairs

ATTRS = {"model": "hed-vgg16", "model_sha256": "ab" * 32, "settings": {"max_edge": 1600}}
CAMERA = ["--camera-model", "PINHOLE", "--camera-params", "500,500,320,240"]


def entry(f: h5py.File, name: str, n: int = 60, seed: int = 0, **override) -> h5py.Group:
    """One image in the extractor's layout; ``override`` replaces (None: drops) a dataset."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((128, n)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0)
    arrays = {"keypoints": (rng.random((n, 2)) * [630, 470]).astype(np.float32),
              "descriptors": d.astype(np.float16), "scores": np.ones(n, np.float32),
              "scales": np.ones(n, np.float32), "image_size": np.array([640, 480])}
    arrays.update(override)
    g = f.create_group(name)
    for k, v in arrays.items():
        if v is not None:
            g[k] = v
    return g


def features(path: Path, names: list[str], **per_name) -> Path:
    """A features file of ``names`` (similar descriptors: they match); ``per_name[name]``
    is a function ``(file, name) -> None`` that writes that entry instead."""
    with h5py.File(path, "w") as f:
        write_attrs(f, ATTRS)
        for k, n in enumerate(names):
            maker = per_name.get(n.replace("/", "_").replace(".", "_"))
            if maker is not None:
                maker(f, n)
            else:
                entry(f, n, seed=k % 2)
    return path


def json_of(proc) -> dict:
    out = json.loads(proc.stdout)
    assert isinstance(out, dict)
    return out


def assert_one_line(proc) -> None:
    assert proc.returncode != 3 and "Traceback" not in proc.stderr, proc.stderr
    assert len([x for x in proc.stderr.splitlines() if x.startswith("d2: error")]) <= 1


# ------------------------------------------------------------------ 1. temporary files
def test_planted_temporary_links_are_never_followed(tmp_path, d2):
    """Another user plants ``.pairs.txt.<pid>.tmp -> victim`` for the next pids (the old
    predictable name): the victim stays as it was and pairs.txt is d2's own plain file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "names.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    out = tmp_path / "pairs.txt"
    start = os.getpid()
    for pid in range(start, start + 400):
        os.symlink(victim, tmp_path / f".pairs.txt.{pid}.tmp")
    proc = d2("pairs", "exhaustive", "--image-list", tmp_path / "names.txt", "-o", out)
    assert proc.returncode == 0, proc.stderr
    write_text_atomic(out, "a.jpg b.jpg\n")  # the API, in this very process (pid planted)
    assert victim.read_text() == "precious\n"
    assert out.is_file() and not out.is_symlink() and out.read_text() == "a.jpg b.jpg\n"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".pairs.txt.")
                 and not p.is_symlink()]
    assert not leftovers


def test_a_planted_parts_folder_is_refused_and_nothing_there_is_touched(tmp_path, d2):
    feats = features(tmp_path / "feats.h5", ["a.jpg", "b.jpg"])
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.tmp").write_text("not d2's")
    with h5py.File(elsewhere / "part-00000001-L0-1.h5", "w") as f:
        f.create_group("foreign.jpg").create_dataset("matches0", data=np.zeros(3, np.int16))
    os.symlink(elsewhere, tmp_path / "matches.h5.parts")
    proc = d2("match", "-p", tmp_path / "pairs.txt", "-f", feats, "-o", tmp_path / "matches.h5",
              "--json")
    assert proc.returncode == 2, proc.stderr
    assert "matches.h5.parts" in json_of(proc)["error"]
    assert (elsewhere / "keep.tmp").read_text() == "not d2's"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.tmp", "part-00000001-L0-1.h5"]
    assert not (tmp_path / "matches.h5").exists()


# ------------------------------------------------------------------ 2. data in other files
def _external_storage(f: h5py.File, name: str, secret: Path) -> None:
    g = entry(f, name, descriptors=None)
    g.create_dataset("descriptors", shape=(128, 60), dtype=np.float16,
                     external=[(str(secret), 0, 128 * 60 * 2)])


def test_external_storage_links_and_virtual_datasets_are_refused(tmp_path, d2):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"TOP-SECRET" * 4000)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["d"] = np.ones((128, 60), np.float16)

    def external_link(f, name):
        entry(f, name, descriptors=None)["descriptors"] = h5py.ExternalLink(
            str(tmp_path / "other.h5"), "/d")

    def virtual(f, name):
        layout = h5py.VirtualLayout(shape=(128, 60), dtype=np.float16)
        layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "d", shape=(128, 60))
        entry(f, name, descriptors=None).create_virtual_dataset("descriptors", layout)

    feats = features(tmp_path / "feats.h5", ["a.jpg", "b.jpg", "ext.jpg", "link.jpg", "vds.jpg"],
                     ext_jpg=lambda f, n: _external_storage(f, n, secret),
                     link_jpg=external_link, vds_jpg=virtual)
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\na.jpg ext.jpg\na.jpg link.jpg\n"
                                        "a.jpg vds.jpg\n")
    proc = d2("match", "-p", tmp_path / "pairs.txt", "-f", feats, "-o", tmp_path / "m.h5",
              "--json")
    assert proc.returncode == 1, proc.stderr  # the clean pair is matched, the others fail
    failed = json_of(proc)["failed"]
    assert set(failed) == {"a.jpg ext.jpg", "a.jpg link.jpg", "a.jpg vds.jpg"}
    assert "ext.jpg/descriptors keeps its data in external files" in failed["a.jpg ext.jpg"]
    assert "external link" in failed["a.jpg link.jpg"]
    assert "virtual dataset" in failed["a.jpg vds.jpg"]
    assert b"TOP-SECRET" not in (tmp_path / "m.h5").read_bytes()
    with MatchFile(tmp_path / "m.h5") as mf:
        assert mf.keys() == ["a.jpg/b.jpg"]
    # colmap-import reads keypoints: the same entries fail there, the others are imported
    proc = d2("colmap-import", tmp_path / "db.db", "-f", feats, "-m", tmp_path / "m.h5",
              *CAMERA, "--no-verify", "--json")
    assert proc.returncode == 1, proc.stderr
    assert set(json_of(proc)["failed"]) == {"ext.jpg", "link.jpg", "vds.jpg"}
    assert json_of(proc)["database_stats"]["matched_pairs"] == 1


# ------------------------------------------------------------------ 3. colliding pair keys
def test_images_whose_pair_keys_collide_fail_by_name_instead_of_swapping_matches(tmp_path, d2):
    names = ["x.jpg", "y.jpg", "sub/a.jpg", "sub-a.jpg"]
    feats = features(tmp_path / "feats.h5", names)
    (tmp_path / "pairs.txt").write_text("x.jpg y.jpg\nx.jpg sub/a.jpg\nx.jpg sub-a.jpg\n")
    proc = d2("match", "-p", tmp_path / "pairs.txt", "-f", feats, "-o", tmp_path / "m.h5",
              "--json")
    assert proc.returncode == 1, proc.stderr
    failed = json_of(proc)["failed"]
    assert set(failed) == {"x.jpg sub/a.jpg", "x.jpg sub-a.jpg"}
    assert "sub/a.jpg" in failed["x.jpg sub-a.jpg"] and "sub-a.jpg" in failed["x.jpg sub-a.jpg"]
    with MatchFile(tmp_path / "m.h5") as mf:
        assert mf.keys() == ["x.jpg/y.jpg"]
    # a matches file made elsewhere (hloc) holds the ambiguous key: import fails that pair
    with h5py.File(tmp_path / "m.h5", "a") as f:
        f.create_group("x.jpg/sub-a.jpg").create_dataset("matches0", data=np.arange(60, dtype=np.int16))
    proc = d2("colmap-import", tmp_path / "db.db", "-f", feats, "-m", tmp_path / "m.h5", *CAMERA,
              "--no-verify", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json_of(proc)
    assert [k for k in out["failed"] if " " in k] and out["database_stats"]["matched_pairs"] == 1
    assert all("rename one of the two images" in v for k, v in out["failed"].items() if " " in k)


# ------------------------------------------------------------------ 7, 8. malformed contents
def _hostile_entries() -> dict:
    def huge(f, n):  # a million keypoints declared, a kilobyte stored
        g = entry(f, n, keypoints=None)
        g.create_dataset("keypoints", shape=(1_000_000, 2), dtype=np.float32, chunks=(1000, 2))

    def huge_descriptors(f, n):
        g = entry(f, n, descriptors=None)
        g.create_dataset("descriptors", shape=(512, 1 << 20), dtype=np.float32, chunks=(8, 1024))

    return {
        "nan_jpg": lambda f, n: entry(f, n, descriptors=np.full((128, 60), np.nan, np.float16)),
        "far_jpg": lambda f, n: entry(f, n, keypoints=np.full((60, 2), 1e9, np.float32)),
        "nankp_jpg": lambda f, n: entry(f, n, keypoints=np.full((60, 2), np.nan, np.float32)),
        "wide_jpg": lambda f, n: entry(f, n, image_size=np.array([2 ** 62, 480])),
        "huge_jpg": huge,
        "hugedesc_jpg": huge_descriptors,
        "scalar_jpg": lambda f, n: entry(f, n, descriptors=np.float16(1.0)),
        "intkp_jpg": lambda f, n: entry(f, n, keypoints=np.zeros((60, 2), np.int32)),
        "rank_jpg": lambda f, n: entry(f, n, keypoints=np.zeros((60, 2, 1), np.float32)),
        "strings_jpg": lambda f, n: entry(f, n, keypoints=np.array([b"x"] * 60)),
    }


BAD = ["nan.jpg", "far.jpg", "nankp.jpg", "wide.jpg", "huge.jpg", "hugedesc.jpg", "scalar.jpg",
       "intkp.jpg", "rank.jpg", "strings.jpg"]


def test_malformed_entries_fail_alone_with_their_name(tmp_path, d2):
    feats = features(tmp_path / "feats.h5", ["a.jpg", "b.jpg", *BAD], **_hostile_entries())
    with FeatureFile(feats) as ff:
        for name in BAD:
            with pytest.raises(BadFile, match=name):
                ff[name]
        assert len(ff["a.jpg"]) == 60
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n" + "".join(f"a.jpg {n}\n" for n in BAD))
    proc = d2("match", "-p", tmp_path / "pairs.txt", "-f", feats, "-o", tmp_path / "m.h5",
              "--json")
    assert_one_line(proc)
    out = json_of(proc)
    assert proc.returncode == 1 and "a.jpg b.jpg" not in out["failed"]
    # the pairs whose descriptors are bad fail in match (keypoints are import's business)
    for name in ("nan.jpg", "huge.jpg", "hugedesc.jpg", "scalar.jpg"):
        assert name in out["failed"][f"a.jpg {name}"]
    proc = d2("colmap-import", tmp_path / "db.db", "-f", feats, "-m", tmp_path / "m.h5", *CAMERA,
              "--no-verify", "--json")
    assert_one_line(proc)
    out = json_of(proc)
    assert proc.returncode == 1
    assert set(BAD) - {"nan.jpg"} <= set(out["failed"])  # NaN descriptors: not read by import
    assert out["database_stats"]["images"] == 3 and out["database_stats"]["matched_pairs"] >= 1
    assert out["database_stats"]["keypoints"] == 180


def test_bad_attributes_and_pairs_files_are_one_line_errors(tmp_path, d2):
    feats = features(tmp_path / "feats.h5", ["a.jpg", "b.jpg"])
    pairs = tmp_path / "pairs.txt"
    for content in ("a.jpg b.jpg\n".encode("utf-16"), os.urandom(200), b"a.jpg\x00 b.jpg\n"):
        pairs.write_bytes(content)
        with pytest.raises(BadFile, match="pairs.txt"):
            read_pairs(pairs)
        proc = d2("match", "-p", pairs, "-f", feats, "-o", tmp_path / "m.h5", "--json")
        assert proc.returncode == 2 and "pairs.txt" in json_of(proc)["error"], proc.stderr
    pairs.write_text("a.jpg b.jpg\n")
    with h5py.File(feats, "a") as f:
        f.attrs["settings_json"] = "{not json"
    proc = d2("match", "-p", pairs, "-f", feats, "-o", tmp_path / "m.h5", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "settings_json" in json_of(proc)["error"]


@pytest.mark.parametrize("content", ["a.jpg\nb.jpg\n".encode("utf-16"), b"\xff\xfe\x00\x81"],
                         ids=["utf-16", "binary"])
def test_binary_name_lists_and_queries_files_are_one_line_errors(tmp_path, d2, content):
    """--image-list, --query-list and a localize queries file: one reader of text lines."""
    listed = tmp_path / "list.txt"
    listed.write_bytes(content)
    feats = features(tmp_path / "feats.h5", ["a.jpg", "b.jpg"])
    for args in (["extract", "--image-list", listed, "--out", tmp_path / "f.h5"],
                 ["pairs", "exhaustive", "-f", feats, "--query-list", listed,
                  "-o", tmp_path / "p.txt"],
                 ["localize", "--reference", tmp_path, "--queries", listed, "-p", listed,
                  "-f", feats, "-m", feats, "-o", tmp_path / "poses.txt"]):
        proc = d2(*args, "--json")
        assert proc.returncode == 2, (args[0], proc.stderr)
        assert "list.txt:1: not a" in json_of(proc)["error"], (args[0], proc.stderr)
        assert_one_line(proc)


# ------------------------------------------------------------------ 9, 5. paths and special files
FAST = ["--max-edge", "160", "--device", "cpu", "--json"]


@pytest.fixture()
def photo_root(tmp_path, samples_dir) -> Path:
    """root/ with one photo; outside.jpg beside root/ (a file d2 must never read)."""
    import shutil

    root = tmp_path / "root"
    root.mkdir()
    src = sorted(samples_dir.glob("*.jpg"))[0]
    shutil.copy(src, root / "a.jpg")
    shutil.copy(src, tmp_path / "outside.jpg")
    return root


def test_image_list_names_leaving_the_root_fail_alone(photo_root, tmp_path, d2):
    outside = tmp_path / "outside.jpg"
    os.symlink(outside, photo_root / "link.jpg")
    (photo_root / "with space.jpg").write_bytes((photo_root / "a.jpg").read_bytes())
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my images\na.jpg\n../outside.jpg\n{outside}\nlink.jpg\nwith space.jpg\n")
    proc = d2("extract", "--image-list", lst, "--image-root", photo_root, "--out",
              tmp_path / "f.h5", *FAST)
    assert proc.returncode == 1, proc.stderr
    out = json_of(proc)
    assert out["extracted"] == 1
    assert set(out["failed"]) == {"../outside.jpg", str(outside), "link.jpg", "with space.jpg"}
    assert "leaves the image root" in out["failed"]["../outside.jpg"]
    assert "outside the image root" in out["failed"]["link.jpg"]
    # a folder with the same link and name: the same two fail, the photo is extracted
    proc = d2("extract", photo_root, "--out", tmp_path / "g.h5", *FAST)
    assert proc.returncode == 1, proc.stderr
    out = json_of(proc)
    assert out["extracted"] == 1 and len(out["failed"]) == 2
    with FeatureFile(tmp_path / "g.h5") as ff:
        assert ff.names == ["a.jpg"]


def test_a_fifo_given_as_an_image_fails_alone_without_being_opened(photo_root, tmp_path, d2):
    os.mkfifo(photo_root / "fifo.jpg")  # opening it would block until a writer comes
    proc = d2("extract", photo_root / "a.jpg", photo_root / "fifo.jpg", "--out",
              tmp_path / "f.h5", *FAST, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "is a FIFO" in json_of(proc)["failed"]["fifo.jpg"]
    (tmp_path / "list.txt").write_text("a.jpg\nfifo.jpg\n")
    proc = d2("extract", "--image-list", tmp_path / "list.txt", "--image-root", photo_root,
              "--out", tmp_path / "g.h5", *FAST, timeout=120)
    assert proc.returncode == 1 and list(json_of(proc)["failed"]) == ["fifo.jpg"], proc.stderr


# ------------------------------------------------------------------ 6, 10. databases
def _holds_flock(path: Path) -> bool:
    """Whether some process holds a flock on ``path`` (Linux /proc/locks)."""
    try:
        ino = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    return any(line.split()[1] == "FLOCK" and line.split()[5].endswith(f":{ino}")
               for line in Path("/proc/locks").read_text().splitlines())


def test_a_second_colmap_import_on_one_database_is_refused_while_the_first_runs(tmp_path, d2):
    import signal
    import subprocess
    import sys
    import time

    names = [f"im{i:03d}.jpg" for i in range(120)]
    feats = features(tmp_path / "feats.h5", names)
    (tmp_path / "pairs.txt").write_text("".join(f"{a} {b}\n" for i, a in enumerate(names)
                                                for b in names[i + 1:i + 6]))
    proc = d2("match", "-p", tmp_path / "pairs.txt", "-f", feats, "-o", tmp_path / "m.h5")
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "db.db"
    args = ["colmap-import", db, "-f", feats, "-m", tmp_path / "m.h5", *CAMERA, "--no-verify",
            "--json"]
    first = subprocess.Popen([sys.executable, "-m", "d2cli", *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _holds_flock(Path(str(db) + ".lock")):
            assert first.poll() is None and time.monotonic() < deadline, "never took the lock"
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # frozen while it writes: the lock stays held
        second = d2(*args)
        assert second.returncode == 2, second.stderr
        assert "being written by another d2 process" in json_of(second)["error"]
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert json.loads(out)["database_stats"]["images"] == 120
    again = d2(*args)  # once the first is done, the same import is welcome (and changes nothing)
    assert again.returncode == 0 and json_of(again)["new_pairs"] == 0, again.stderr


def test_a_read_only_database_is_named_so_and_reconstruct_still_reads_it(tmp_path, d2):
    import subprocess

    from d2cli.colmap import colmap_import
    from d2cli.match import match

    names = [f"im{i:02d}.jpg" for i in range(4)]
    feats = features(tmp_path / "feats.h5", names)
    match([(names[0], names[1])], feats, tmp_path / "m.h5")
    db = tmp_path / "db.db"
    colmap_import(db, feats, None, camera_model="PINHOLE", camera_params=[500, 500, 320, 240])
    if subprocess.run(["chattr", "+i", db], capture_output=True).returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("chattr +i is not available here (and root ignores file modes)")
        db.chmod(0o444)
    try:
        proc = d2("colmap-import", db, "-f", feats, "-m", "none.h5", "--json")
        assert proc.returncode == 2 and "not found" in json_of(proc)["error"]
        proc = d2("colmap-import", db, "-f", feats, "-m", tmp_path / "m.h5", "--json")
        assert proc.returncode == 2, proc.stderr
        assert "is read-only" in json_of(proc)["error"]
        proc = d2("reconstruct", db, "-o", tmp_path / "sparse", "--json")
        assert proc.returncode == 2, proc.stderr  # read, then: nothing to map (no pairs)
        assert "no verified image pair" in json_of(proc)["error"]
    finally:
        subprocess.run(["chattr", "-i", db], capture_output=True)
        db.chmod(0o644)


# ------------------------------------------------------------------ 5. signals while mapping
@pytest.fixture(scope="module")
def street_database(tmp_path_factory, d2) -> Path:
    """A verified database of the scale benchmark's synthetic street (mapping takes ~10 s)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synthetic_scene import SceneConfig, generate_scene

    cwd = tmp_path_factory.mktemp("street")
    scene = generate_scene(cwd, SceneConfig(num_images=150, keypoints=400, query_every=0, seed=5))
    d2("pairs", "sequential", "-f", "feats.h5", "-k", "5", "-o", "pairs.txt", cwd=cwd, check=True)
    d2("match", "-p", "pairs.txt", "-f", "feats.h5", "-o", "matches.h5", "-q", cwd=cwd, check=True)
    d2("colmap-import", "db.db", "-f", "feats.h5", "-m", "matches.h5", "--camera-model", "PINHOLE",
       "--camera-params", scene.camera_params, "-q", cwd=cwd, check=True)
    return cwd / "db.db"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_mapping_at_once_with_one_line_and_json(street_database, tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sparse"
    proc = subprocess.Popen([sys.executable, "-m", "d2cli", "reconstruct", str(street_database),
                             "-o", str(out), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while not _children(proc.pid):  # the mapper's process has started: mapping is on
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(1.0)
        mapper = _children(proc.pid)
        t = time.monotonic()
        # Ctrl-C reaches the whole foreground group, as a terminal sends it; SIGTERM d2 only
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        stopped = time.monotonic() - t
    finally:
        proc.kill()
    assert proc.returncode == 130, f"{stderr} (signal sent {stopped:.1f} s before the end)"
    assert stopped < 10, f"took {stopped:.1f} s to stop"
    assert "Traceback" not in stderr and "Aborted" not in stderr and len(stderr.splitlines()) == 1
    assert json.loads(stdout) == {"error": "interrupted; finished work is saved, re-run to resume",
                                  "interrupted": True, "exit_code": 130}
    deadline = time.monotonic() + 10  # the mapper is gone too (reaped by init once d2 exits)
    while any(Path(f"/proc/{p}").exists() for p in mapper) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [Path(f"/proc/{p}/cmdline").read_bytes() for p in mapper if Path(f"/proc/{p}").exists()]
    assert not left
    assert not out.exists() and not list(tmp_path.glob(".sparse.*"))  # no scratch left


# ------------------------------------------------------------------ 4. re-import
def test_importing_twice_equals_once_and_keeps_every_raw_match(tmp_path, d2):
    """Exhaustive pairs of a street: far-apart views verify with few or no inliers. Their raw
    matches stay in the database, and the same import again changes and verifies nothing."""
    import sys

    import pycolmap

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synthetic_scene import SceneConfig, generate_scene

    scene = generate_scene(tmp_path, SceneConfig(num_images=20, keypoints=300, query_every=0,
                                                 seed=5))
    d2("pairs", "exhaustive", "-f", "feats.h5", "-o", "pairs.txt", cwd=tmp_path, check=True)
    d2("match", "-p", "pairs.txt", "-f", "feats.h5", "-o", "m.h5", "-q", cwd=tmp_path, check=True)
    with h5py.File(tmp_path / "m.h5", "r+") as f:  # three pairs too weak to verify: 10 matches
        for key in sorted(f["db-000000.jpg"])[:3]:
            m0 = f["db-000000.jpg"][key]["matches0"]
            kept = m0[()]
            kept[np.flatnonzero(kept >= 0)[10:]] = -1
            m0[...] = kept
    args = ["colmap-import", "db.db", "-f", "feats.h5", "-m", "m.h5", "--camera-model", "PINHOLE",
            "--camera-params", scene.camera_params, "--json"]
    first = json_of(d2(*args, cwd=tmp_path, check=True))
    with MatchFile(tmp_path / "m.h5") as mf:
        in_file = {(a, b): len(mf.get(a, b)[0]) for a, b in read_pairs(tmp_path / "pairs.txt")}
    db = pycolmap.Database.open(tmp_path / "db.db")
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        in_db = {p: len(db.read_matches(ids[p[0]], ids[p[1]])) for p in in_file}
        few = sum(len(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches) < 15
                  for a, b in in_file)
    finally:
        db.close()
    assert in_db == in_file and few > 0  # every raw match kept, weak pairs included
    def dump() -> list[str]:  # every row of every table (the header's counters aside)
        import sqlite3

        with sqlite3.connect(tmp_path / "db.db") as con:
            return list(con.iterdump())

    before = dump()
    again = json_of(d2(*args, cwd=tmp_path, check=True))
    assert (again["new_pairs"], again["replaced_pairs"], again["verified_now"]) == (0, 0, 0)
    assert again["database_stats"] == first["database_stats"]
    assert dump() == before


def test_click_usage_errors_with_json_still_print_one_object(d2):
    for args in (["match", "--bogus", "--json"], ["match", "--commit-every", "abc", "--json"]):
        proc = d2(*args)
        assert proc.returncode == 2 and "Usage:" in proc.stderr
        out = json_of(proc)
        assert out["exit_code"] == 2 and out["error"]
    proc = d2("match", "--bogus")  # without --json: Click's message only
    assert proc.returncode == 2 and proc.stdout == ""


def test_names_in_a_features_file_never_reach_files_outside_the_image_root(tmp_path):
    """HDF5 accepts a group called '..': an entry '../secret.jpg' must not make d2 read
    tmp/secret.jpg (its EXIF on import, its pixels on refinement)."""
    from d2cli.errors import BadImage
    from d2cli.images import image_under

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"not for d2")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    (root / "ok.jpg").write_bytes(b"x")
    assert image_under(root, "ok.jpg") == root / "ok.jpg"
    for name in ("../secret.jpg", str(tmp_path / "secret.jpg"), "link.jpg"):
        with pytest.raises(BadImage, match="image root"):
            image_under(root, name)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        entry(f, "../secret.jpg")
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.names == ["../secret.jpg"]  # the name is real; its file is never opened


def test_a_planted_journal_link_is_not_followed(tmp_path):
    from d2cli.errors import OutputError
    from d2cli.io.journal import JsonJournal

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / "poses.txt.partial")
    with pytest.raises(OutputError, match="poses.txt.partial"):
        with JsonJournal(tmp_path / "poses.txt.partial", {"d2 localize": 1}) as j:
            j.append({"x": 1})
    assert victim.read_text() == "precious\n"
