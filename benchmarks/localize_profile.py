"""Where ``d2 localize``'s time goes on a scale scene (issue 24), and why it grows with N.

Input: a ``benchmarks/scale.py`` work folder (``--keep``) or one made by hand: the scene
(``generate_scene``), ``pairs-query.txt`` (``d2 pairs from-retrieval``), ``matches-query.h5``
(``d2 match``) and ``feats-all.h5`` (``d2 merge``). The reference model is the scene's
ground truth (true poses, true 3D points, true tracks), so that no mapping run is needed
and the model's own error does not enter.

Prints: the job's time split (cProfile of ``localize``), and for each query PnP's time
against the inlier ratio and against how many of its retrieved references are true
neighbours (within 20 m along the street). One run.

    python benchmarks/localize_profile.py bench-out/scale/n5000 [--queries 120]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pycolmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_scene import BLOCK, load_scene, make_block, rotation_to_quaternion  # noqa: E402

from d2cli import localize as L  # noqa: E402
from d2cli.colmap.keypoints import to_colmap  # noqa: E402
from d2cli.io.features import FeatureFile, MatchFile  # noqa: E402
from d2cli.references import ModelReference  # noqa: E402

NEAR_M = 20.0  # a retrieved reference within this many metres of the query is a true neighbour


def true_model(folder: Path) -> Path:
    """``folder/sparse-true``: the database cameras and the 3D points they observe (truth)."""
    out, txt = folder / "sparse-true", folder / "sparse-true-txt"
    if (out / "points3D.bin").exists():
        return out
    scene = load_scene(folder)
    cfg = scene.config
    txt.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    s_max = max(c.s for c in scene.cameras.values()) + 100
    xyz_of: dict[int, np.ndarray] = {}
    for b in range(-20, int(s_max / BLOCK) + 20):
        block = make_block(b, scene.points_per_metre, cfg, None)
        xyz_of.update(zip(block.ids.tolist(), block.xyz, strict=True))
    (txt / "cameras.txt").write_text(f"1 PINHOLE {cfg.width} {cfg.height} {cfg.focal:g} "
                                     f"{cfg.focal:g} {cfg.width / 2:g} {cfg.height / 2:g}\n")
    dense: dict[int, int] = {}
    tracks: dict[int, list[tuple[int, int]]] = {}
    with h5py.File(folder / "truth.h5") as truth, FeatureFile(folder / "feats.h5") as ff, \
            open(txt / "images.txt", "w") as f:
        for i, name in enumerate(scene.db_names, 1):
            cam = scene.cameras[name]
            xy = to_colmap(ff.keypoints(name)[:, :2].astype(np.float64))
            ids = []
            for j, p in enumerate(truth[name]["point_ids"][()].tolist()):
                k = -1 if p < 0 else dense.setdefault(p, len(dense) + 1)
                if k > 0:
                    tracks.setdefault(k, []).append((i, j))
                ids.append(k)
            q = rotation_to_quaternion(cam.R)
            f.write(f"{i} {' '.join(f'{v:.12g}' for v in q)} "
                    f"{' '.join(f'{v:.12g}' for v in cam.t)} 1 {name}\n")
            f.write(" ".join(f"{x:.4f} {y:.4f} {k}" for (x, y), k in zip(xy, ids, strict=True)) + "\n")
    true_id = {k: p for p, k in dense.items()}
    with open(txt / "points3D.txt", "w") as f:
        for k, track in tracks.items():
            x = xyz_of[true_id[k]]
            f.write(f"{k} {x[0]:.6f} {x[1]:.6f} {x[2]:.6f} 128 128 128 0.5 "
                    + " ".join(f"{a} {b}" for a, b in track) + "\n")
    pycolmap.Reconstruction(str(txt)).write(str(out))
    return out


def profile_job(folder: Path, model: Path) -> str:
    out = folder / "poses-profile.txt"
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    r = L.localize(model, folder / "queries.txt", folder / "pairs-query.txt",
                   folder / "feats-all.h5", folder / "matches-query.h5", out, overwrite=True)
    prof.disable()
    wall = time.perf_counter() - t0
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("cumulative").print_stats(
        "localize.py|references.py|pycolmap|features.py", 12)
    return (f"localize: {len(r.results)}/{r.queries} localised, {wall:.1f} s under cProfile "
            f"({wall / max(r.queries, 1) * 1e3:.0f} ms per query)\n" + stream.getvalue())


def pnp_by_ratio(folder: Path, model: Path, n_queries: int) -> list[dict[str, float]]:
    cams = json.loads((folder / "cameras.json").read_text())["images"]
    queries = L.read_queries(folder / "queries.txt")[:n_queries]
    refs, _ = L._references_of(queries, L.read_pairs(folder / "pairs-query.txt"))
    rows = []
    with FeatureFile(folder / "feats-all.h5") as ff, MatchFile(folder / "matches-query.h5") as mf:
        reference = ModelReference(ff, model)
        for q in queries:
            p2d, p3d, _, _ = L._correspondences(q.name, refs[q.name], ff, mf, reference)
            camera, _ = L._query_camera(q, ff, None)
            est = pycolmap.AbsolutePoseEstimationOptions()
            est.ransac.max_error, est.ransac.random_seed = 12.0, 0
            t0 = time.perf_counter()
            ret = pycolmap.estimate_and_refine_absolute_pose(
                to_colmap(p2d.astype(np.float64)), p3d, camera, est,
                pycolmap.AbsolutePoseRefinementOptions())
            dt = time.perf_counter() - t0
            s = cams[q.name]["s"]
            rows.append({"ms": dt * 1e3, "ratio": ret["num_inliers"] / len(p2d) if ret else 0.0,
                         "correspondences": len(p2d),
                         "near": sum(abs(cams[r]["s"] - s) < NEAR_M for r in refs[q.name])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--queries", type=int, default=120, help="queries in the PnP table")
    args = ap.parse_args()
    model = true_model(args.folder)
    print(profile_job(args.folder, model))
    rows = pnp_by_ratio(args.folder, model, args.queries)
    ratio = np.array([r["ratio"] for r in rows])
    ms = np.array([r["ms"] for r in rows])
    near = np.array([r["near"] for r in rows])
    print(f"PnP over {len(rows)} queries: median {np.median(ms):.0f} ms, mean {ms.mean():.0f} ms")
    print("| inlier ratio | queries | PnP ms (mean) | share of PnP time | true neighbours of 10 |")
    print("|---|---:|---:|---:|---:|")
    for lo, hi in ((0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 1.01)):
        sel = (ratio >= lo) & (ratio < hi)
        if sel.any():
            print(f"| {lo:.1f}-{min(hi, 1):.1f} | {sel.sum()} | {ms[sel].mean():.0f} | "
                  f"{ms[sel].sum() / ms.sum():.0%} | {near[sel].mean():.1f} |")


if __name__ == "__main__":
    main()
