"""``d2 eval hpatches`` and ``d2 eval pose`` on small data made here.

HPatches: two 6-image sequences cut from the bundled sample photos at 320x240, a viewpoint
one warped by homographies we choose (written as H_1_k) and an illumination one with
photometric changes only. Pose: a textured three-plane corner rendered by ray casting
from four cameras we choose, written in the Strecha ``.camera`` format (camera-to-world R,
centre C). The expected numbers come from independent computations in this file (a full
similarity-matrix MNN, the protocol's formulas, relative poses from the cameras), never
from the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d2cli.errors import BadFile, EmptyInput, InputNotFound
from d2cli.eval.hpatches import evaluate_hpatches, find_sequences, match_errors, pair_accuracy
from d2cli.eval.methods import SiftSettings, d2_method, sift_method
from d2cli.eval.pose import (
    evaluate_pose,
    pose_auc,
    pose_errors,
    read_pose_pairs,
    read_strecha,
    read_strecha_camera,
)
from d2cli.extract import ExtractSettings
from d2cli.io.features import FeatureFile
from d2cli.precision import resolve_precision
from d2cli.weights import DEFAULT_MODEL

# the CLI decides auto precision before labelling: bf16 on CPUs with AVX512-BF16 or AMX
D2_LABEL = DEFAULT_MODEL + {"fp32": ""}.get(resolve_precision("auto", torch.device("cpu")),
                                            " bf16")

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "d2cli" / "data" / "sacre_coeur"
W, H = 320, 240
D2_SETTINGS = ExtractSettings(descriptor_dtype="float32")


# --------------------------------------------------------------------------- synthetic data
def sample_rgb(name: str, size: tuple[int, int] = (W, H)) -> np.ndarray:
    with Image.open(SAMPLES / name) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR))


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample img (h, w, 3) at float pixel coordinates (pixel centres at integers)."""
    h, w = img.shape[:2]
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    im = img.astype(np.float64)
    top = im[y0, x0] * (1 - fx) + im[y0, x0 + 1] * fx
    bot = im[y0 + 1, x0] * (1 - fx) + im[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def warp(img: np.ndarray, Hm: np.ndarray) -> np.ndarray:
    """Image k = image 1 seen through H (image-1 pixels -> image-k pixels)."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    src = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(Hm).T
    out = bilinear(img, src[..., 0] / src[..., 2], src[..., 1] / src[..., 2])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def homography(k: int) -> np.ndarray:
    """A zoom-in + rotation + mild perspective about the image centre; keeps it inside."""
    c = np.array([[1, 0, (W - 1) / 2], [0, 1, (H - 1) / 2], [0, 0, 1]])
    a = np.radians(4.0 * (k - 1)) * (-1) ** k
    s = 1.0 + 0.08 * (k - 1)
    R = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0],
                  [1e-4 * (k - 1), -0.6e-4 * (k - 1), 1]])
    return c @ R @ np.linalg.inv(c)


def make_hpatches(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    v = root / "v_synth"
    v.mkdir()
    base = sample_rgb("93341989_396310999.jpg")
    Image.fromarray(base).save(v / "1.ppm")
    for k in range(2, 7):
        Hk = homography(k)
        Image.fromarray(warp(base, Hk)).save(v / f"{k}.ppm")
        np.savetxt(v / f"H_1_{k}", Hk)
    i = root / "i_synth"
    i.mkdir()
    base = sample_rgb("10265353_3838484249.jpg")
    for k in range(1, 7):
        gain, gamma = 1.0 - 0.12 * (k - 1), 1.0 + 0.15 * (k - 1) * (-1) ** k
        img = 255.0 * (base / 255.0) ** gamma * gain
        Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8)).save(i / f"{k}.ppm")
        if k > 1:
            np.savetxt(i / f"H_1_{k}", np.eye(3))
    return root


def look_at(C: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world rotation (columns: camera x, y, z in world) looking at target."""
    z = target - C
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], 1)


POSE_K = np.array([[300.0, 0, (W - 1) / 2], [0, 300.0, (H - 1) / 2], [0, 0, 1]])
CORNER = 4.0  # the three planes x=0, y=0, z=0, each 4 x 4 units


def render_corner(K: np.ndarray, R_c2w: np.ndarray, C: np.ndarray,
                  textures: list[np.ndarray]) -> np.ndarray:
    """Ray-cast the textured corner: each pixel shows the nearest plane it hits."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T @ R_c2w.T
    best = np.full((H, W), np.inf)
    out = np.full((H, W, 3), 127.0)
    for axis, tex in enumerate(textures):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -C[axis] / rays[..., axis]
        p = C + rays * t[..., None]
        u, v = [p[..., a] for a in range(3) if a != axis]
        ok = (t > 0) & (t < best) & (u >= 0) & (u <= CORNER) & (v >= 0) & (v <= CORNER)
        th, tw = tex.shape[:2]
        col = bilinear(tex, u / CORNER * (tw - 1), v / CORNER * (th - 1))
        out[ok] = col[ok]
        best[ok] = t[ok]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def corner_cameras(n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    target = np.array([1.2, 1.2, 1.0])
    cams = []
    for i in range(n):
        a = np.radians(45 + 9 * (i - (n - 1) / 2))
        C = np.array([5.5 * np.cos(a), 5.5 * np.sin(a), 3.2 + 0.15 * i])
        cams.append((look_at(C, target), C))
    return cams


def write_camera(path: Path, K: np.ndarray, R: np.ndarray, C: np.ndarray,
                 size: tuple[int, int]) -> None:
    rows = [" ".join(f"{x:.10g}" for x in r) + " " for r in K]
    rows += ["0 0 0 "] + [" ".join(f"{x:.10g}" for x in r) + " " for r in R]
    rows += [" ".join(f"{x:.10g}" for x in C) + " ", f"{size[0]} {size[1]}"]
    path.write_text("\n".join(rows))


def make_strecha(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "gt_dense_cameras").mkdir()
    textures = [sample_rgb(n, (320, 320)) for n in
                ("03903474_1471484089.jpg", "17295357_9106075285.jpg", "44120379_8371960244.jpg")]
    for i, (R, C) in enumerate(corner_cameras()):
        name = f"{i:04d}.png"
        Image.fromarray(render_corner(POSE_K, R, C, textures)).save(root / "images" / name)
        write_camera(root / "gt_dense_cameras" / f"{name}.camera", POSE_K, R, C, (W, H))
    return root


def relative_pose(c0: tuple[np.ndarray, np.ndarray], c1: tuple[np.ndarray, np.ndarray]
                  ) -> np.ndarray:
    """T_0to1 from two (camera-to-world R, centre C), written out independently."""
    T = []
    for R, C in (c0, c1):
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = R.T, -R.T @ C
        T.append(M)
    return T[1] @ np.linalg.inv(T[0])


def write_pose_pairs(path: Path, pairs: list[tuple[str, str, np.ndarray]]) -> None:
    lines = []
    for a, b, T in pairs:
        vals = list(POSE_K.ravel()) + list(POSE_K.ravel()) + list(T.ravel())
        lines.append(f"{a} {b} " + " ".join(f"{x:.12g}" for x in vals))
    path.write_text("\n".join(lines) + "\n")


def rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hp_root(tmp_path_factory) -> Path:
    return make_hpatches(tmp_path_factory.mktemp("hp") / "hpatches")


@pytest.fixture(scope="module")
def strecha_root(tmp_path_factory) -> Path:
    return make_strecha(tmp_path_factory.mktemp("st") / "corner")


@pytest.fixture(scope="module")
def hp_run(hp_root, tmp_path_factory, d2):
    """One CLI run with the SIFT baseline; later tests reuse its work dir."""
    out = tmp_path_factory.mktemp("hp-out")
    proc = d2("eval", "hpatches", hp_root, "--baseline", "sift", "--work-dir", out / "work",
              "--plot", out / "mma.png", "--device", "cpu", "--json", check=True)
    return out, json.loads(proc.stdout)


# --------------------------------------------------------------------------- oracle
def oracle_mnn(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """The D2-Net notebook's matcher on the full similarity matrix: (M, 2)."""
    sim = d0.T.astype(np.float64) @ d1.astype(np.float64)
    nn12, nn21 = sim.argmax(1), sim.argmax(0)
    keep = nn21[nn12] == np.arange(len(nn12))
    return np.stack([np.flatnonzero(keep), nn12[keep]], 1)


def oracle_hpatches(features: Path, root: Path) -> dict:
    acc = {"i": [], "v": []}
    nmatch = {"i": [], "v": []}
    with FeatureFile(features) as ff:
        for seq in ("i_synth", "v_synth"):
            f1 = ff[f"{seq}/1.ppm"]
            for k in range(2, 7):
                fk = ff[f"{seq}/{k}.ppm"]
                m = oracle_mnn(f1.descriptors, fk.descriptors)
                Hk = np.loadtxt(root / seq / f"H_1_{k}")
                p = np.c_[f1.keypoints[m[:, 0]], np.ones(len(m))] @ Hk.T
                err = np.hypot(*(fk.keypoints[m[:, 1]] - p[:, :2] / p[:, 2:]).T)
                acc[seq[0]].append([np.mean(err <= t) if len(m) else 0.0 for t in range(1, 16)])
                nmatch[seq[0]].append(len(m))
        counts = [len(ff[n].keypoints) for n in ff.names]
    return {"acc": {k: np.array(v) for k, v in acc.items()}, "matches": nmatch,
            "features": counts}


# --------------------------------------------------------------------------- HPatches
def test_hpatches_mma_matches_the_protocol(hp_run, hp_root):
    out, s = hp_run
    assert s["sequences"] == {"total": 2, "i": 1, "v": 1, "other": 0}
    assert s["pairs"] == {"overall": 10, "i": 5, "v": 5}
    assert [m["label"] for m in s["methods"]] == [D2_LABEL, "COLMAP SIFT"]
    for m in s["methods"]:
        ref = oracle_hpatches(Path(m["features_file"]), hp_root)
        overall = np.concatenate([ref["acc"]["i"], ref["acc"]["v"]]).sum(0) / 10
        np.testing.assert_allclose(m["mma"]["overall"], overall, atol=1e-9)
        np.testing.assert_allclose(m["mma"]["i"], ref["acc"]["i"].mean(0), atol=1e-9)
        np.testing.assert_allclose(m["mma"]["v"], ref["acc"]["v"].mean(0), atol=1e-9)
        assert m["matches_per_pair"]["v"] == pytest.approx(np.mean(ref["matches"]["v"]))
        assert m["features_per_image"]["mean"] == pytest.approx(np.mean(ref["features"]))
        assert m["features_per_image"]["min"] == min(ref["features"])
        # the warps are exact: a working pipeline matches most points to within 10 px
        assert m["mma"]["v"][9] > 0.5, m["label"]
        assert m["mma"]["i"][9] > 0.5, m["label"]
    with Image.open(out / "mma.png") as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_hpatches_rerun_uses_the_cache(hp_run, hp_root, d2):
    out, first = hp_run
    proc = d2("eval", "hpatches", hp_root, "--baseline", "sift", "--work-dir", out / "work",
              "--plot", out / "mma2.png", "--json", check=True)
    again = json.loads(proc.stdout)
    for a, b in zip(first["methods"], again["methods"], strict=True):
        assert (b["extracted"], b["reused_features"]) == (0, 12)
        assert (b["matched"], b["reused_matches"]) == (0, 10)
        assert a["mma"] == b["mma"]


def test_hpatches_inverse_homographies_fail_and_changed_images_redo(hp_run, hp_root,
                                                                    tmp_path):
    """Same images (hard links: the cache stays valid), H_1_k inverted: accuracy collapses."""
    out, first = hp_run
    root = tmp_path / "inv"
    for seq in ("v_synth", "i_synth"):
        (root / seq).mkdir(parents=True)
        for k in range(1, 7):
            os.link(hp_root / seq / f"{k}.ppm", root / seq / f"{k}.ppm")
        for k in range(2, 7):
            Hk = np.loadtxt(hp_root / seq / f"H_1_{k}")
            np.savetxt(root / seq / f"H_1_{k}", np.linalg.inv(Hk))
    method = d2_method(None, D2_SETTINGS)
    res = evaluate_hpatches(root, [method], work_dir=out / "work", device="cpu")
    ms = res.methods[0]
    assert ms.run.extracted == 0 and not res.cache_dropped
    good = first["methods"][0]["mma"]
    assert ms.mma("v")[2] < 0.5 * good["v"][2]
    np.testing.assert_allclose(ms.mma("i"), good["i"], atol=1e-12)  # H = I: unchanged

    # an image changes on disk: the cached features cannot be trusted any more
    shutil.rmtree(root / "v_synth")
    img = np.asarray(Image.open(root / "i_synth" / "3.ppm"))
    os.unlink(root / "i_synth" / "3.ppm")
    Image.fromarray(255 - img).save(root / "i_synth" / "3.ppm")
    shutil.copytree(out / "work", tmp_path / "work-stale")
    res = evaluate_hpatches(root, [method], work_dir=tmp_path / "work-stale", device="cpu")
    assert res.cache_dropped and res.methods[0].run.extracted == 6


def test_hpatches_folder_problems(tmp_path, d2, hp_root, hp_run):
    proc = d2("eval", "hpatches", tmp_path / "missing")
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    proc = d2("eval", "hpatches", tmp_path / "empty")
    assert proc.returncode == 2 and "no HPatches sequences" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    root = tmp_path / "mixed"
    shutil.copytree(hp_root / "v_synth", root / "v_synth")
    shutil.copytree(hp_root / "v_synth", root / "v_broken")
    (root / "v_broken" / "H_1_4").unlink()
    shutil.copytree(hp_root / "v_synth", root / "v_badh")
    (root / "v_badh" / "H_1_2").write_text("1 2 3\n4 5 6\n")
    shutil.copytree(hp_root / "v_synth", root / "v_artisans")  # the protocol removes it
    _, seqs, skipped, excluded = find_sequences(root)
    assert [s.name for s in seqs] == ["v_synth"]
    assert "H_1_4" in skipped["v_broken"] and "3x3" in skipped["v_badh"]
    assert excluded == ["v_artisans"]
    _, seqs, _, excluded = find_sequences(root, all_sequences=True)
    assert [s.name for s in seqs] == ["v_artisans", "v_synth"] and not excluded

    # copies keep size and mtime: the features cached by hp_run stay valid
    shutil.copytree(hp_run[0] / "work", tmp_path / "w")
    proc = d2("eval", "hpatches", root, "--work-dir", tmp_path / "w", "--no-plot")
    assert proc.returncode == 1, proc.stderr  # ran, but two sequences were skipped
    assert "v_broken" in proc.stderr and "v_badh" in proc.stderr
    assert "MMA@1" in proc.stdout and "Traceback" not in proc.stderr


def test_match_errors_and_accuracy_by_hand():
    kp0 = np.array([[10.0, 20.0], [30.0, 40.0], [0.0, 0.0]])
    Hm = np.array([[2.0, 0, 1], [0, 2.0, -1], [0, 0, 1]])
    kp1 = np.array([[21.0, 39.0 + 3.0], [61.0 + 1.0, 79.0], [5.0, 5.0]])
    err = match_errors(kp0, kp1, np.array([[0, 0], [1, 1]]), Hm)
    np.testing.assert_allclose(err, [3.0, 1.0])
    np.testing.assert_allclose(pair_accuracy(err, (1, 2, 3)), [0.5, 0.5, 1.0])
    assert np.isinf(match_errors(kp0, kp1, np.zeros((0, 2), int), Hm)).all()
    assert pair_accuracy(match_errors(kp0, kp1, np.zeros((0, 2), int), Hm), (1, 15)).sum() == 0


# --------------------------------------------------------------------------- pose
def test_pose_auc_and_errors_by_hand():
    # errors 2, 4, inf, inf: recall steps of 1/4; area to 5 deg = 0.25 + 0.75 + 0.5 = 1.5
    assert pose_auc([2.0, 4.0, np.inf, np.inf], (5,)) == pytest.approx([0.3])
    assert pose_auc([0.0, 0.0], (5, 10)) == pytest.approx([1.0, 1.0])
    assert pose_auc([np.inf], (20,)) == [0.0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot_z(10), [1.0, 0, 0]
    assert pose_errors(np.eye(3), np.array([1.0, 0, 0]), T) == pytest.approx((10.0, 0.0))
    assert pose_errors(rot_z(10), np.array([-2.0, 0, 0]), T)[1] == pytest.approx(0.0, abs=1e-6)
    assert pose_errors(rot_z(10), np.array([0.0, 3.0, 0]), T)[1] == pytest.approx(90.0)


def test_strecha_camera_convention(strecha_root):
    """The reader turns camera-to-world R and centre C into world-to-camera poses."""
    cams = corner_cameras()
    _, items, pairs = read_strecha(strecha_root)
    assert [it.name for it in items] == [f"{i:04d}.png" for i in range(4)]
    assert len(pairs) == 6
    for p in pairs:
        i0, i1 = int(p.name0[:4]), int(p.name1[:4])
        np.testing.assert_allclose(p.T_0to1, relative_pose(cams[i0], cams[i1]), atol=1e-8)
    _, _, near = read_strecha(strecha_root, max_gap=1)
    assert [(p.name0, p.name1) for p in near] == [("0000.png", "0001.png"),
                                                  ("0001.png", "0002.png"),
                                                  ("0002.png", "0003.png")]
    # a camera file for a 2x larger image: K is scaled to the stored image exactly
    R, C = cams[0]
    K2 = POSE_K.copy()
    K2[:2] = (K2[:2] + [[0, 0, 0.5], [0, 0, 0.5]]) * 2 - [[0, 0, 0.5], [0, 0, 0.5]]
    write_camera(strecha_root.parent / "big.camera", K2, R, C, (2 * W, 2 * H))
    cam = read_strecha_camera(strecha_root.parent / "big.camera", (W, H))
    np.testing.assert_allclose(cam.K, POSE_K, atol=1e-12)
    bad = strecha_root.parent / "bad.camera"
    bad.write_text("1 2 3\n")
    with pytest.raises(BadFile, match="26 numbers"):
        read_strecha_camera(bad)


def test_pose_eval_strecha_and_pairs_file(strecha_root, tmp_path, d2):
    work = tmp_path / "work"
    proc = d2("eval", "pose", strecha_root, "--baseline", "sift", "--work-dir", work,
              "--plot", tmp_path / "pose.png", "--device", "cpu", "--json", check=True)
    s = json.loads(proc.stdout)
    assert s["evaluated_pairs"] == 6 and [m["label"] for m in s["methods"]] == [
        D2_LABEL, "COLMAP SIFT"]
    for m in s["methods"]:
        assert len(m["pairs"]) == 6
        assert all(p["inliers"] <= p["matches"] for p in m["pairs"])
        errs = [max(p["r_err"], p["t_err"]) if p["r_err"] is not None else np.inf
                for p in m["pairs"]]
        assert m["auc"]["@20"] == pytest.approx(pose_auc(errs, (20,))[0])
        # rendered views with exact cameras: every method recovers most poses well
        assert m["auc"]["@20"] > 0.5, m
    with Image.open(tmp_path / "pose.png") as im:
        assert im.format == "PNG"

    # the same pairs through a pairs file (poses computed here): the same results
    cams = corner_cameras()
    names = [f"{i:04d}.png" for i in range(4)]
    good = [(names[a], names[b], relative_pose(cams[a], cams[b]))
            for a in range(4) for b in range(a + 1, 4)]
    write_pose_pairs(tmp_path / "pairs.txt", good)
    methods = [d2_method(None, D2_SETTINGS), sift_method(SiftSettings())]
    res = evaluate_pose(strecha_root / "images", methods, pairs_file=tmp_path / "pairs.txt",
                        work_dir=work, device="cpu")
    assert all(ms.run.extracted == 0 for ms in res.methods)  # cached by the CLI run
    for ms, m in zip(res.methods, s["methods"], strict=True):
        assert [p.r_err for p in ms.pairs] == pytest.approx([p["r_err"] for p in m["pairs"]],
                                                            abs=1e-4)  # text round-off

    # ground truth off by 30 degrees: no pose is within 20 degrees any more
    wrong = []
    for a, b, T in good:
        T = T.copy()
        T[:3, :3] = rot_z(30) @ T[:3, :3]
        wrong.append((a, b, T))
    write_pose_pairs(tmp_path / "wrong.txt", wrong)
    res = evaluate_pose(strecha_root / "images", methods[:1], pairs_file=tmp_path / "wrong.txt",
                        work_dir=work, device="cpu")
    assert res.methods[0].auc()[2] == 0.0


def test_pose_input_problems(strecha_root, tmp_path, d2):
    with pytest.raises(InputNotFound):
        read_pose_pairs(tmp_path / "none.txt", strecha_root / "images")
    (tmp_path / "short.txt").write_text("a.png b.png 1 2 3\n")
    with pytest.raises(BadFile, match="short.txt:1"):
        read_pose_pairs(tmp_path / "short.txt", strecha_root / "images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInput, match="camera"):
        read_strecha(tmp_path / "empty")
    proc = d2("eval", "pose", tmp_path / "empty")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    # a pair naming a missing image is reported, the others are evaluated
    cams = corner_cameras()
    write_pose_pairs(tmp_path / "pairs.txt", [
        ("0000.png", "0001.png", relative_pose(cams[0], cams[1])),
        ("0000.png", "gone.png", np.eye(4))])
    proc = d2("eval", "pose", strecha_root / "images", "--pairs", tmp_path / "pairs.txt",
              "--work-dir", tmp_path / "w", "--no-plot", "--max-keypoints", "400")
    assert proc.returncode == 1, proc.stderr
    assert "gone.png" in proc.stderr and "AUC@5" in proc.stdout


def test_method_labels_name_scales_and_precision():
    from d2cli.extract import ExtractSettings
    assert d2_method(None, ExtractSettings(precision="fp32")).label == DEFAULT_MODEL
    assert d2_method(None, ExtractSettings()).label == f"{DEFAULT_MODEL} auto"
    assert d2_method(None, ExtractSettings(scales=(0.5, 1, 2), precision="bf16")).label == \
        f"{DEFAULT_MODEL} MS bf16"


def test_hpatches_refine_adds_a_refined_curve_on_the_same_matches(hp_run, hp_root, d2):
    """--refine: the cached features and matches, each pair's verified ones refined; more
    accurate at 1 px; the outcome of every verified match in the summary."""
    out, _ = hp_run
    proc = d2("eval", "hpatches", hp_root, "--refine", "--work-dir", out / "work", "--no-plot",
              "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    plain, refined = s["methods"]
    assert refined["label"] == plain["label"] + " + refine"
    assert refined["matches_per_pair"] == plain["matches_per_pair"]  # same matches
    assert refined["extracted"] == 0 and refined["seconds_refine"] > 0
    assert refined["mma"]["overall"][0] > plain["mma"]["overall"][0]
    total = round(plain["matches_per_pair"]["overall"] * s["pairs"]["overall"])
    outcomes = refined["refined_matches"]
    assert outcomes["moved"] > 0 and 0 < sum(outcomes.values()) < total  # verified ones only
