"""``d2 colmap-import``, ``d2 reconstruct`` and ``d2 sfm`` on real features of the sample photos.

One session fixture extracts 6 of the 10 built-in Sacre-Coeur photos (at --max-edge 1024,
about their native size: at 640 the built-in model finds too few matches to map them) and
matches them exhaustively with the real ``d2 match`` job; every test then builds real
pycolmap databases and models from those files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from d2cli.colmap import DEFAULT_FOCAL_FACTOR, colmap_import
from d2cli.errors import IncompatibleFeatures, UsageError
from d2cli.extract import ExtractSettings, extract
from d2cli.io.features import FeatureFile, MatchFile, matches_to_arrays, pair_key
from d2cli.io.h5store import H5Store
from d2cli.io.pairs import write_pairs
from d2cli.match import match
from d2cli.pairs import pairs_exhaustive, save_pairs
from d2cli.reconstruct import MODEL_FILES, reconstruct

# Six photos whose pairs had the most inliers with hed-vgg16 (ids 1, 4, 6, 7, 9, 10
# of the 10). Each has its own camera (six sizes, no EXIF), so intrinsics stay fixed ("auto").
# Over 6 verification x 2 mapping seeds, incremental mapping registered all 6 (169-511
# points) 10 times and 3 twice; global mapping registered all 6 (190-378 points) 12 times.
# Verification and mapping are seeded (repeatable on one machine, not bit-exact across BLAS builds).
SUBSET = ["02928139_3448003521.jpg", "17295357_9106075285.jpg", "44120379_8371960244.jpg",
          "51091044_3486849416.jpg", "71295362_4051449754.jpg", "93341989_396310999.jpg"]
MAX_EDGE = 1024
MIN_REGISTERED_INCREMENTAL = 3  # of 6
MIN_REGISTERED_GLOBAL = 5  # of 6
# mean reprojection error, px; the cameras keep COLMAP's guessed focal length. Observed with
# d2cli-v1: incremental 1.27 (782 points), global 2.24 (361 points); hed-vgg16: 1.37 / 1.55
# (215 / 219 points). GLOMAP's global positioning keeps more loosely fitting points.
MAX_REPROJ_PX = {"sample_model": 2.0, "global_model": 3.0}


@pytest.fixture(scope="session")
def work(tmp_path_factory, samples_dir) -> Path:
    """feats.h5, pairs.txt and matches.h5 of the subset, made by the real jobs."""
    w = tmp_path_factory.mktemp("colmap")
    ex = extract([samples_dir / n for n in SUBSET], w / "feats.h5",
                 settings=ExtractSettings(max_edge=MAX_EDGE), device="cpu")
    assert not ex.failed
    with FeatureFile(w / "feats.h5") as ff:
        names = sorted(ff.names)
    assert names == sorted(SUBSET)
    save_pairs(pairs_exhaustive(names), w / "pairs.txt")
    mt = match(w / "pairs.txt", w / "feats.h5", w / "matches.h5", device="cpu")
    assert not mt.failed and len(mt.matched) == 15
    return w


@pytest.fixture(scope="session")
def verified_db(work) -> tuple[Path, object]:
    db = work / "verified.db"
    return db, colmap_import(db, work / "feats.h5", work / "matches.h5")


@pytest.fixture(scope="session")
def sample_model(work, verified_db) -> tuple[Path, object]:
    out = work / "sparse"
    return out, reconstruct(verified_db[0], out, num_threads=2)


@pytest.fixture(scope="session")
def global_model(work, verified_db) -> tuple[Path, object]:
    out = work / "sparse-global"
    return out, reconstruct(verified_db[0], out, mapper="global", num_threads=2)


def dump(db_path: Path) -> dict:
    """Everything a database holds that an import writes, in comparable form."""
    with pycolmap.Database.open(db_path) as db:
        images = sorted((im.image_id, im.name, im.camera_id) for im in db.read_all_images())
        cams = sorted((c.camera_id, int(c.model), c.width, c.height, tuple(c.params),
                       c.has_prior_focal_length) for c in db.read_all_cameras())
        kps = {i: db.read_keypoints(i).tobytes() for i, _, _ in images}
        pair_ids, _ = db.read_num_matches()
        matches = {int(p): db.read_matches(*pycolmap.pair_id_to_image_pair(int(p))).tobytes()
                   for p in pair_ids}
        gids, geoms = db.read_two_view_geometries()
        tvg = {int(p): (int(g.config), g.inlier_matches.tobytes())
               for p, g in zip(gids, geoms, strict=True)}
        counts = (db.num_rigs(), db.num_frames(), db.num_keypoints(), db.num_matches(),
                  db.num_inlier_matches())
    return {"images": images, "cameras": cams, "keypoints": kps, "matches": matches,
            "geometries": tvg, "counts": counts}


# --------------------------------------------------------------------------- import
def test_import_writes_colmap_conventions(work, verified_db):
    db_path, result = verified_db
    assert result.images == 6 and len(result.new_images) == 6 and not result.failed
    assert result.pairs == 15 and result.new_pairs == 15 and result.verified_now == 15
    with pycolmap.Database.open(db_path) as db, FeatureFile(work / "feats.h5") as ff, \
            MatchFile(work / "matches.h5") as mf:
        assert db.num_images() == 6
        assert db.num_frames() == 6  # all or nothing: every image has its frame
        # auto mode: the six photos have six different sizes, no EXIF -> six cameras
        assert db.num_cameras() == 6
        ids = {}
        for name in SUBSET:
            im = db.read_image_with_name(name)
            ids[name] = im.image_id
            cam = db.read_camera(im.camera_id)
            w, h = ff[name].image_size
            assert (cam.width, cam.height) == (w, h)
            assert cam.model == pycolmap.CameraModelId.SIMPLE_RADIAL
            assert cam.params[0] == pytest.approx(DEFAULT_FOCAL_FACTOR * max(w, h))
            assert not cam.has_prior_focal_length
            kp = db.read_keypoints(im.image_id)
            assert kp.dtype == np.float32 and kp.shape == (len(ff[name]), 2)
            np.testing.assert_array_equal(kp, ff.keypoints(name) + np.float32(0.5))
        usable = 0
        for a, b in pairs_exhaustive(sorted(SUBSET)):
            want, _ = mf.get(a, b)
            got = db.read_matches(ids[a], ids[b])
            assert got.dtype == np.uint32 and got.max() < 2**31  # no wrapped -1
            np.testing.assert_array_equal(got, want.astype(np.uint32))
            g = db.read_two_view_geometry(ids[a], ids[b])
            assert int(g.config) != int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED)
            if int(g.config) != int(pycolmap.TwoViewGeometryConfiguration.DEGENERATE):
                usable += 1
                # inliers are a subset of the raw matches
                raw = {tuple(r) for r in got}
                assert all(tuple(r) in raw for r in g.inlier_matches)
                assert len(g.inlier_matches) < len(got)
        assert usable >= 10  # observed 15 of 15


def test_import_twice_is_once(work, verified_db, tmp_path):
    db = tmp_path / "db.db"
    first = colmap_import(db, work / "feats.h5", work / "matches.h5", verify=False)
    once = dump(db)
    second = colmap_import(db, work / "feats.h5", work / "matches.h5", verify=False)
    assert not second.changed and second.new_images == [] and second.keypoints_written == 0
    assert second.new_pairs == 0 and second.verified_now == 0
    assert dump(db) == once
    assert first.changed and once["counts"][2] > 0
    # the verified database is unchanged by a second import too (no new verification)
    before = dump(verified_db[0])
    again = colmap_import(verified_db[0], work / "feats.h5", work / "matches.h5")
    assert not again.changed and dump(verified_db[0]) == before


def test_verification_in_growing_batches_equals_one_call(work, verified_db, tmp_path,
                                                        monkeypatch):
    """Batches sized by time (1 pair first, then as many as the last rate fits in the
    target) verify every pair exactly as the calls of the session's import did."""
    from d2cli.colmap import verification

    calls: list[int] = []
    real = pycolmap.verify_matches

    def counting(db_path, pairs_path, **kw):
        calls.append(len(Path(pairs_path).read_text().splitlines()))
        return real(db_path, pairs_path, **kw)

    monkeypatch.setattr(verification, "VERIFY_FIRST_BATCH", 1)
    monkeypatch.setattr(verification, "VERIFY_MAX_BATCH", 4)
    monkeypatch.setattr(verification, "VERIFY_SECONDS", 1e-6)  # every next call: the minimum
    monkeypatch.setattr(verification.pycolmap, "verify_matches", counting)
    db = tmp_path / "db.db"
    result = colmap_import(db, work / "feats.h5", work / "matches.h5")
    assert calls == [1] * 15 and result.verified_now == 15
    assert dump(db)["geometries"] == dump(verified_db[0])["geometries"]
    calls.clear()
    monkeypatch.setattr(verification, "VERIFY_SECONDS", 1e6)  # grows to the cap at once
    db2 = tmp_path / "db2.db"
    colmap_import(db2, work / "feats.h5", work / "matches.h5")
    assert calls == [1, 4, 4, 4, 2]
    assert dump(db2)["geometries"] == dump(verified_db[0])["geometries"]


def test_new_images_are_added_to_an_existing_database(work, tmp_path):
    """A first import of some pairs, then all: ids of the first stay, nothing duplicated."""
    db = tmp_path / "db.db"
    names = sorted(SUBSET)
    write_pairs(tmp_path / "few.txt", [(names[0], names[1])])
    colmap_import(db, work / "feats.h5", work / "matches.h5", pairs=tmp_path / "few.txt",
                  verify=False)
    first = dump(db)
    colmap_import(db, work / "feats.h5", work / "matches.h5", verify=False)
    both = dump(db)
    assert both["images"] == first["images"]  # all images come with the first import
    assert both["keypoints"] == first["keypoints"]
    assert len(both["matches"]) == 15 and len(first["matches"]) == 1
    assert set(first["matches"]).issubset(both["matches"])


def test_no_verify_stores_raw_matches_with_a_config(work, tmp_path):
    db = tmp_path / "raw.db"
    result = colmap_import(db, work / "feats.h5", work / "matches.h5", verify=False)
    assert result.verified_now == 15
    with pycolmap.Database.open(db) as d:
        pair_ids, geoms = d.read_two_view_geometries()
        assert len(geoms) == 15
        for pid, g in zip(pair_ids, geoms, strict=True):
            # no EXIF prior: UNCALIBRATED; never UNDEFINED, which the mapper would skip
            assert int(g.config) == int(pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED)
            raw = d.read_matches(*pycolmap.pair_id_to_image_pair(int(pid)))
            np.testing.assert_array_equal(g.inlier_matches, raw)
        assert d.num_inlier_matches() == d.num_matches()


def test_unknown_names_self_pairs_and_duplicates(work, tmp_path, d2):
    names = sorted(SUBSET)
    a, b, c = names[:3]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{a} {b}\n{b} {a}\n{a} {a}\n{a} ghost.jpg\n{b} {c}\n")
    db = tmp_path / "db.db"
    proc = d2("colmap-import", db, "-f", work / "feats.h5", "-m", work / "matches.h5",
              "--pairs", pairs, "--no-verify", "--json")
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert s["dropped_pairs"] == 2  # b a (duplicate of a b) and a a
    assert s["pairs"] == 2 and list(s["failed"]) == ["ghost.jpg"]
    assert "ghost.jpg" in s["failed"]["ghost.jpg"]
    with pycolmap.Database.open(db) as d:
        assert d.num_matched_image_pairs() == 2

    # a matches file holding a pair with an image that the features file lacks
    mixed = tmp_path / "mixed.h5"
    shutil.copy(work / "matches.h5", mixed)
    with MatchFile(work / "matches.h5") as mf:
        attrs = dict(mf.attrs)
    with H5Store(mixed, attrs=attrs) as store:
        store.add(pair_key(a, "sub/phantom.jpg"),
                  matches_to_arrays(np.array([[0, 0]]), np.ones(1, np.float32), 5, 5))
    proc = d2("colmap-import", tmp_path / "db2.db", "-f", work / "feats.h5", "-m", mixed,
              "--no-verify")
    assert proc.returncode == 1
    assert "sub-phantom.jpg" in proc.stderr and "not in features file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cameras_single_per_image_params_and_exif(work, tmp_path, samples_dir):
    feats, matches = work / "feats.h5", work / "matches.h5"
    with pytest.raises(UsageError, match="one size"):  # six sizes cannot share one camera
        colmap_import(tmp_path / "s.db", feats, matches, camera_mode="single", verify=False)
    with pytest.raises(UsageError, match="takes 4 parameters"):
        colmap_import(tmp_path / "p.db", feats, None, camera_params=[1.0, 2.0])
    r = colmap_import(tmp_path / "k.db", feats, None, camera_model="pinhole",
                      camera_params=[900, 910, 500, 400])
    with pycolmap.Database.open(tmp_path / "k.db") as d:
        cams = d.read_all_cameras()
        assert len(cams) == 6 and r.keypoints_written == 6
        for cam in cams:
            assert cam.model == pycolmap.CameraModelId.PINHOLE and cam.has_prior_focal_length
            np.testing.assert_allclose(cam.params, [900, 910, 500, 400])

    # EXIF: a copy of one photo with a 28 mm (35 mm-equivalent) focal length, another twice
    # without EXIF at the same size: auto mode gives them separate cameras, and the EXIF
    # one a focal prior
    images = tmp_path / "images"
    images.mkdir()
    src = Image.open(samples_dir / SUBSET[0])
    exif = Image.Exif()
    exif[271], exif[272] = "TestMake", "TestCam"
    ifd = exif.get_ifd(0x8769)
    ifd[37386], ifd[41989] = 4.2, 28
    src.save(images / "exif.jpg", exif=exif)
    src.save(images / "plain1.jpg")
    src.save(images / "plain2.jpg")
    with FeatureFile(feats) as ff:
        f0 = ff[SUBSET[0]].as_arrays()
    with H5Store(tmp_path / "f.h5", attrs={"image_root": str(images)}) as store:
        for n in ("exif.jpg", "plain1.jpg", "plain2.jpg"):
            store.add(n, f0)
    colmap_import(tmp_path / "e.db", tmp_path / "f.h5", None)
    with pycolmap.Database.open(tmp_path / "e.db") as d:
        by_name = {im.name: d.read_camera(im.camera_id) for im in d.read_all_images()}
    assert by_name["plain1.jpg"].camera_id == by_name["plain2.jpg"].camera_id
    cam = by_name["exif.jpg"]
    assert cam.camera_id != by_name["plain1.jpg"].camera_id
    assert cam.has_prior_focal_length and not by_name["plain1.jpg"].has_prior_focal_length
    expected = pycolmap.infer_camera_from_image(images / "exif.jpg").mean_focal_length()
    assert cam.mean_focal_length() == pytest.approx(expected)
    assert 700 < expected < 1000  # 28 mm-equivalent on a 1063 px edge, not 1.2 * 1063


def test_other_keypoints_are_refused_before_writing(work, tmp_path):
    db = tmp_path / "db.db"
    colmap_import(db, work / "feats.h5", None)
    before = dump(db)
    with FeatureFile(work / "feats.h5") as ff:
        arrays = {n: ff[n].as_arrays() for n in ff.names}
    arrays[SUBSET[0]]["keypoints"] = arrays[SUBSET[0]]["keypoints"] + 1
    with H5Store(tmp_path / "other.h5") as store:
        for n, a in arrays.items():
            store.add(n, a)
    with pytest.raises(IncompatibleFeatures, match=SUBSET[0]):
        colmap_import(db, tmp_path / "other.h5", None)
    assert dump(db) == before
    colmap_import(db, tmp_path / "other.h5", None, overwrite=True)
    with pycolmap.Database.open(db) as d:
        kp = d.read_keypoints(d.read_image_with_name(SUBSET[0]).image_id)
    np.testing.assert_array_equal(kp, arrays[SUBSET[0]]["keypoints"] + np.float32(0.5))


@pytest.mark.parametrize("args, message", [
    (["colmap-import", "{t}/db.db", "-f", "{t}/none.h5"], "features file not found"),
    (["colmap-import", "{t}/db.db", "-f", "{w}/feats.h5", "-m", "{w}/matches.h5",
      "--camera-model", "FOO"], "unknown camera model"),
    (["colmap-import", "{t}/db.db", "-f", "{w}/feats.h5", "-m", "{w}/matches.h5",
      "--camera-params", "1,x"], "--camera-params"),
    (["reconstruct", "{t}/none.db"], "database not found"),
    (["reconstruct", "{t}/empty.db"], "no images"),
    (["reconstruct", "{w}/verified.db", "-o", "{t}/sp", "--option", "mapper.nope=1"],
     "no option mapper.nope"),
])
def test_setup_errors_exit_2_with_one_line(d2, work, verified_db, tmp_path, args, message):
    pycolmap.Database.open(tmp_path / "empty.db").close()
    proc = d2(*[a.format(t=tmp_path, w=work) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("missing", ["features", "matches", "image folder"])
def test_overwrite_with_a_missing_input_keeps_the_database(d2, work, verified_db, tmp_path,
                                                           missing):
    """Inputs are opened before --overwrite deletes anything: a typo costs no database."""
    db = tmp_path / "db.db"
    shutil.copy(verified_db[0], db)
    before = db.read_bytes()
    feats = tmp_path / "none.h5" if missing == "features" else work / "feats.h5"
    matches = tmp_path / "none.h5" if missing == "matches" else work / "matches.h5"
    extra = ["--image-dir", tmp_path / "no-images"] if missing == "image folder" else []
    proc = d2("colmap-import", db, "-f", feats, "-m", matches, "--overwrite", *extra)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert ("image folder not found" if missing == "image folder"
            else f"{missing} file not found") in proc.stderr
    assert db.read_bytes() == before


# --------------------------------------------------------------------------- reconstruct
@pytest.mark.parametrize("which, min_registered", [
    ("sample_model", MIN_REGISTERED_INCREMENTAL), ("global_model", MIN_REGISTERED_GLOBAL)])
def test_reconstruct_sample_subset(request, which, min_registered):
    out, result = request.getfixturevalue(which)
    s = result.summary()
    rec = pycolmap.Reconstruction(out)
    assert s["images"] == 6 and s["mapper"] == ("global" if which == "global_model"
                                                else "incremental")
    assert s["registered"] >= min_registered
    assert 0 < s["mean_reprojection_error"] < MAX_REPROJ_PX[which]
    assert s["points3D"] >= 5 * s["registered"] and s["mean_track_length"] >= 2.0
    # one camera per photo: self-calibration is off, the cameras keep COLMAP's guess
    assert s["intrinsics"].startswith("fixed")
    for cam in rec.cameras.values():
        assert cam.params[0] == pytest.approx(DEFAULT_FOCAL_FACTOR * max(cam.width, cam.height))
    assert all((out / f).is_file() for f in MODEL_FILES)
    assert rec.num_reg_images() == s["registered"] and rec.num_points3D() == s["points3D"]
    assert sorted(result.unregistered + result.best.registered_names) == sorted(SUBSET)
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))  # the scratch folder is gone


def test_reconstruct_cli_json_and_no_usable_pairs(d2, work, verified_db, tmp_path):
    proc = d2("reconstruct", verified_db[0], "--out", tmp_path / "sp", "--threads", "2",
              "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["registered"] >= MIN_REGISTERED_INCREMENTAL and s["mapper"] == "incremental"
    assert pycolmap.Reconstruction(tmp_path / "sp").num_reg_images() == s["registered"]

    # geometries written without a config are ignored by pycolmap: say so, do not map
    db = tmp_path / "undef.db"
    colmap_import(db, work / "feats.h5", work / "matches.h5", verify=False)
    with pycolmap.Database.open(db) as d:
        pair_ids, geoms = d.read_two_view_geometries()
        for pid, g in zip(pair_ids, geoms, strict=True):
            i, j = pycolmap.pair_id_to_image_pair(int(pid))
            d.delete_two_view_geometry(i, j)
            d.write_two_view_geometry(i, j, pycolmap.TwoViewGeometry(
                inlier_matches=g.inlier_matches))
    proc = d2("reconstruct", db, "--out", tmp_path / "sp2")
    assert proc.returncode == 2
    assert "UNDEFINED" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_reference_model_triangulation(work, global_model, tmp_path):
    ref_dir, _ = global_model
    ref = pycolmap.Reconstruction(ref_dir)
    db = tmp_path / "tri.db"
    r = colmap_import(db, work / "feats.h5", work / "matches.h5", reference_model=ref_dir)
    assert r.images == ref.num_images() and not r.failed
    with pycolmap.Database.open(db) as d:  # ids of the model are kept
        for im in ref.images.values():
            assert d.read_image_with_name(im.name).image_id == im.image_id
            assert d.read_image_with_name(im.name).camera_id == im.camera_id
        assert d.num_frames() == ref.num_frames() and d.num_rigs() == ref.num_rigs()
    again = colmap_import(db, work / "feats.h5", work / "matches.h5", reference_model=ref_dir)
    assert not again.changed

    out = tmp_path / "tri"
    t = reconstruct(db, out, reference_model=ref_dir, num_threads=2)
    assert t.mapper == "triangulation"
    tri = pycolmap.Reconstruction(out)
    assert tri.num_reg_images() == ref.num_reg_images()
    assert tri.num_points3D() >= 0.5 * ref.num_points3D()
    assert tri.compute_mean_reprojection_error() < MAX_REPROJ_PX["sample_model"]
    for im in ref.images.values():  # poses and intrinsics are not touched
        if im.has_pose:
            np.testing.assert_allclose(tri.images[im.image_id].cam_from_world().matrix(),
                                       im.cam_from_world().matrix(), atol=1e-9)
    for cam in ref.cameras.values():
        np.testing.assert_allclose(tri.cameras[cam.camera_id].params, cam.params)

    # a database whose ids differ from the model's is refused, and left as it was
    other = tmp_path / "other.db"
    with pycolmap.Database.open(other) as d:
        cam = d.write_camera(pycolmap.Camera.create_from_model_name(0, "PINHOLE", 1.0, 2, 2))
        d.write_image(pycolmap.Image(name="aaa-first.jpg", camera_id=cam))
    colmap_import(other, work / "feats.h5", None)  # the photos get ids 2..7
    before = dump(other)
    with pytest.raises(IncompatibleFeatures, match="not made from the reference model"):
        colmap_import(other, work / "feats.h5", work / "matches.h5", reference_model=ref_dir)
    assert dump(other) == before
    # and triangulating it against the model is refused by the same check
    with pytest.raises(IncompatibleFeatures, match=r"not made from the reference model .* "
                       "run d2 colmap-import --reference-model first"):
        reconstruct(other, tmp_path / "tri-other", reference_model=ref_dir, num_threads=2)
    assert not (tmp_path / "tri-other").exists()


# --------------------------------------------------------------------------- sfm
def test_sfm_resumes_from_finished_steps(d2, work, samples_dir, tmp_path):
    """Features and matches already in work/: sfm maps; a second run does nothing."""
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(work / "feats.h5", w / "feats.h5")
    shutil.copy(work / "matches.h5", w / "matches.h5")
    images = [samples_dir / n for n in SUBSET]
    proc = d2("sfm", *images, "--out", w, "--max-edge", MAX_EDGE, "--threads", "2",
              "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["skipped"] == ["extract", "match"]
    assert s["steps"]["extract"]["skipped"] == 6 and s["steps"]["match"]["skipped"] == 15
    rec = s["steps"]["reconstruct"]
    assert rec["registered"] >= MIN_REGISTERED_INCREMENTAL and rec["images"] == 6
    assert pycolmap.Reconstruction(w / "sparse").num_reg_images() == rec["registered"]

    proc = d2("sfm", *images, "--out", w, "--max-edge", MAX_EDGE, "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["skipped"] == ["extract", "pairs", "match", "import", "reconstruct"]
    assert again["steps"]["reconstruct"]["registered"] == rec["registered"]
