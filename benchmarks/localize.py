"""Localisation accuracy on Strecha fountain-P11 (ground-truth cameras), D2-Net vs COLMAP SIFT.

    python benchmarks/localize.py                 # print the markdown table
    python benchmarks/localize.py --write         # also put it in docs/benchmarks.md
    python benchmarks/localize.py --data DIR --max-edge 1024 --work /tmp/loc-bench

Protocol (issue 7): reconstruct a model from 8 of the 11 images, localise the other 3
against it with ``d2 localize`` (pycolmap absolute pose, 12 px), align the model to the
ground truth with a similarity estimated from the 8 mapped camera centres, and report the
localised queries' position error (metres: the ground truth's units) and rotation error.
The same run does it with COLMAP SIFT through pycolmap (extraction, exhaustive matching,
incremental mapping), whose keypoints and raw matches are exported to hloc-layout files so
that the very same ``localize`` code localises both.

Both use the ground-truth intrinsics (one shared PINHOLE camera, kept fixed), extract at
the same downscaled size (``--max-edge``, default 1024 of 3072 px, to stay within minutes on
2 CPU cores; keypoints are in full-resolution pixels either way) and localise with the
same raw (unverified) matches: mutual nearest neighbours for D2-Net, COLMAP's ratio-test
matches for SIFT.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pycolmap
from docs_section import write_section  # benchmarks/ is on sys.path

from d2cli.colmap import colmap_import, open_database, quiet_colmap
from d2cli.eval.pose import read_strecha_camera
from d2cli.extract import ExtractSettings, extract
from d2cli.io.features import pair_key
from d2cli.io.pairs import write_pairs
from d2cli.localize import localize, read_poses
from d2cli.match import match
from d2cli.pairs import pairs_exhaustive
from d2cli.reconstruct import reconstruct
from d2cli.refine import RefineConfig
from d2cli.refine.job import refine_database
from d2cli.weights import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "strecha" / "fountain-P11"
SECTION = "## Localisation (d2 localize)"
QUERIES = ("0002.jpg", "0005.jpg", "0008.jpg")  # spread along the arc; the 8 others map
SEED = 1
THREADS = 2


def rotation_error(R: np.ndarray, G: np.ndarray) -> float:
    """Angle of R G^T in degrees (the chord formula: exact near 0, where arccos is not)."""
    return float(np.rad2deg(2 * np.arcsin(min(1.0, np.linalg.norm(R - G) / np.sqrt(8)))))


def ground_truth(data: Path, names: list[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                         np.ndarray, tuple[int, int]]:
    """World-to-camera (R, t) per image, K (pixel centres at integers), image size."""
    gt, K, size = {}, None, None
    for n in names:
        cam = read_strecha_camera(data / "gt_dense_cameras" / f"{n}.camera")
        gt[n] = (cam.R, cam.t)
        K = cam.K
    with open(data / "gt_dense_cameras" / f"{names[0]}.camera") as f:
        size = tuple(int(v) for v in f.read().split()[-2:])
    return gt, K, size


def colmap_params(K: np.ndarray) -> list[float]:
    """PINHOLE fx fy cx cy in COLMAP's convention (top-left pixel centre at 0.5)."""
    return [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]


def evaluate(model: Path, poses_file: Path, gt: dict, mapped: list[str]) -> dict:
    rec = pycolmap.Reconstruction(model)
    reg = [n for n in mapped if (im := rec.find_image_with_name(n)) is not None and im.has_pose]
    out = {"registered": len(reg), "points3D": rec.num_points3D(), "queries": {}}
    if len(reg) < 3:
        return out
    src = np.stack([rec.find_image_with_name(n).projection_center() for n in reg])
    dst = np.stack([-gt[n][0].T @ gt[n][1] for n in reg])
    sim = pycolmap.estimate_sim3d(src, dst)
    Rs = sim.rotation.matrix()
    aligned = sim.scale * src @ Rs.T + sim.translation
    out["align_rms_m"] = float(np.sqrt(np.mean(np.sum((aligned - dst) ** 2, axis=1))))
    poses = read_poses(poses_file)
    for q in QUERIES:
        if q not in poses:
            continue
        R, t = poses[q]
        centre = sim.scale * Rs @ (-R.T @ t) + sim.translation
        Rg, tg = gt[q]
        out["queries"][q] = {"position_m": float(np.linalg.norm(centre - (-Rg.T @ tg))),
                             "rotation_deg": rotation_error(R @ Rs.T, Rg)}
    return out


def run_d2(data: Path, work: Path, names: list[str], mapped: list[str], K: np.ndarray,
           max_edge: int, queries: Path, model: str = DEFAULT_MODEL,
           refine: bool = False, precision: str = "auto") -> dict:
    """The d2 pipeline; ``refine``: in the same folder, reusing the features and matches
    of the plain run: track refinement of the map's database before mapping
    (map-refined.db, model-refined) and ``localize --refine``."""
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    feats, matches = work / "feats.h5", work / "matches.h5"
    if refine:
        r = refine_database(work / "map.db", feats, work / "feats-refined.h5",
                            work / "map-refined.db", image_dir=data / "images")
        reconstruct(work / "map-refined.db", work / "model-refined", num_threads=THREADS,
                    seed=SEED, intrinsics="fixed")
        loc = localize(work / "model-refined", queries, work / "pairs-loc.txt",
                       work / "feats-refined.h5", matches, work / "poses-refined.txt",
                       refine=RefineConfig(), image_dir=data / "images")
        return {"seconds": time.perf_counter() - t0, "result": loc,
                "refine_seconds": r.seconds}
    ex = extract([data / "images" / n for n in names], feats, model=model,
                 settings=ExtractSettings(max_edge=max_edge, precision=precision), device="cpu")
    if ex.failed:
        raise SystemExit(f"extraction failed: {ex.failed}")
    write_pairs(work / "pairs-map.txt", pairs_exhaustive(mapped))
    write_pairs(work / "pairs-loc.txt", pairs_exhaustive(names, queries=list(QUERIES), refs=mapped))
    write_pairs(work / "pairs.txt", pairs_exhaustive(mapped)
                + pairs_exhaustive(names, queries=list(QUERIES), refs=mapped))
    match(work / "pairs.txt", feats, matches, device="cpu")
    colmap_import(work / "map.db", feats, matches, pairs=work / "pairs-map.txt",
                  camera_mode="single", camera_model="PINHOLE", camera_params=colmap_params(K))
    reconstruct(work / "map.db", work / "model", num_threads=THREADS, seed=SEED, intrinsics="fixed")
    r = localize(work / "model", queries, work / "pairs-loc.txt", feats, matches,
                 work / "poses.txt")
    return {"seconds": time.perf_counter() - t0, "result": r}


def run_sift(data: Path, work: Path, names: list[str], mapped: list[str], K: np.ndarray,
             max_edge: int, queries: Path) -> dict:
    t0 = time.perf_counter()
    db = work / "sift.db"
    with quiet_colmap():
        pycolmap.extract_features(
            db, data / "images", image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=pycolmap.ImageReaderOptions(
                camera_model="PINHOLE", camera_params=",".join(map(str, colmap_params(K)))),
            extraction_options=pycolmap.FeatureExtractionOptions(
                max_image_size=max_edge, num_threads=THREADS, use_gpu=False),
            device=pycolmap.Device.cpu)
        pycolmap.match_exhaustive(db, matching_options=pycolmap.FeatureMatchingOptions(
            num_threads=THREADS, use_gpu=False), device=pycolmap.Device.cpu)
        opts = pycolmap.IncrementalPipelineOptions(
            num_threads=THREADS, random_seed=SEED, extract_colors=False, image_names=mapped,
            ba_refine_focal_length=False, ba_refine_principal_point=False,
            ba_refine_extra_params=False)
        (work / "images").mkdir(exist_ok=True)
        recs = pycolmap.incremental_mapping(db, work / "images", work / "sift-models", options=opts)
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    (work / "sift-model").mkdir(exist_ok=True)
    rec.write(work / "sift-model")
    # the database's keypoints and raw matches, as hloc-layout files for d2 localize
    feats, matches = work / "sift-feats.h5", work / "sift-matches.h5"
    with open_database(db) as d, h5py.File(feats, "w") as ff, h5py.File(matches, "w") as fm:
        ids = {im.name: im.image_id for im in d.read_all_images()}
        for n, i in ids.items():
            kp = d.read_keypoints(i)[:, :2].astype(np.float32) - 0.5  # COLMAP -> hloc pixels
            g = ff.create_group(n)
            g["keypoints"] = kp
            g["descriptors"] = np.zeros((1, len(kp)), np.float16)  # not needed to localise
            cam = d.read_camera(d.read_image(i).camera_id)
            g["image_size"] = np.array([cam.width, cam.height])
        for q in QUERIES:
            for m in mapped:
                pm = d.read_matches(ids[q], ids[m]) if d.exists_matches(ids[q], ids[m]) else \
                    np.zeros((0, 2), np.uint32)
                m0 = -np.ones(d.read_keypoints(ids[q]).shape[0], np.int32)
                m0[pm[:, 0].astype(np.int64)] = pm[:, 1].astype(np.int32)
                fm.create_group(pair_key(q, m))["matches0"] = m0
    write_pairs(work / "pairs-loc.txt", pairs_exhaustive(names, queries=list(QUERIES), refs=mapped))
    r = localize(work / "sift-model", queries, work / "pairs-loc.txt", feats, matches,
                 work / "sift-poses.txt")
    return {"seconds": time.perf_counter() - t0, "result": r}


def table(rows: list[tuple[str, dict, dict]], max_edge: int, size: tuple[int, int]) -> list[str]:
    lines = ["| method | mapped | 3D points | align RMS (8 cameras) | query | inliers | "
             "position error | rotation error |", "|---|---|---|---|---|---|---|---|"]
    for label, ev, run in rows:
        r = run["result"]
        for q in QUERIES:
            e = ev["queries"].get(q)
            inl = r.results[q].inliers if q in r.results else None
            lines.append(
                f"| {label} | {ev['registered']}/8 | {ev['points3D']} | "
                f"{ev.get('align_rms_m', float('nan')) * 100:.1f} cm | {q} | "
                f"{inl if inl is not None else 'failed'} | "
                + (f"{e['position_m'] * 100:.1f} cm | {e['rotation_deg']:.3f}° |" if e else
                   f"- | - ({r.failed.get(q, 'failed')}) |"))
    lines.append("")
    lines.append(f"Images downscaled to {max_edge} px on the long edge for extraction "
                 f"(originals {size[0]}x{size[1]}); " + "; ".join(
                     f"{label} pipeline {run['seconds']:.0f} s" for label, _, run in rows)
                 + f", {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}).")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--max-edge", type=int, default=1024)
    ap.add_argument("--work", type=Path, help="Keep the intermediate files here.")
    ap.add_argument("--write", action="store_true", help="Update docs/benchmarks.md.")
    ap.add_argument("--refine", action="store_true",
                    help="Also D2-Net with sfm track refinement and localize --refine.")
    ap.add_argument("--model", action="append",
                    help=f"D2-Net model(s) to compare, repeatable [default: {DEFAULT_MODEL}].")
    ap.add_argument("--precisions", default="auto",
                    help="Comma-separated trunk precisions of the D2 runs, e.g. fp32,auto.")
    args = ap.parse_args()
    names = sorted(p.name for p in (args.data / "images").glob("*.jpg"))
    if len(names) != 11 or not all(q in names for q in QUERIES):
        raise SystemExit(f"{args.data}: expected fountain-P11's 11 images")
    mapped = [n for n in names if n not in QUERIES]
    gt, K, size = ground_truth(args.data, names)
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"d2-localize-bench-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    queries = work / "queries.txt"
    p = colmap_params(K)
    queries.write_text("".join(f"{q} PINHOLE {size[0]} {size[1]} {p[0]} {p[1]} {p[2]} {p[3]}\n"
                               for q in QUERIES))
    rows = []
    variants = [(m, p) for m in args.model or [DEFAULT_MODEL] for p in args.precisions.split(",")]
    runs = [(f"D2-Net ({m}, {p})", functools.partial(run_d2, model=m, precision=p),
             work / f"d2-{m}-{p}", "model") for m, p in variants]
    if args.refine:  # after its plain run, in the same folder
        runs += [(f"D2-Net ({m}, {p}) + refine", functools.partial(run_d2, model=m, refine=True),
                  work / f"d2-{m}-{p}", "model-refined") for m, p in variants]
    for label, fn, wdir, model_dir in [*runs, ("COLMAP SIFT", run_sift, work, "sift-model")]:
        run = fn(args.data, wdir, names, mapped, K, args.max_edge, queries)
        ev = evaluate(wdir / model_dir, run["result"].out, gt, mapped)
        rows.append((label, ev, run))
        print(f"{label}: {time.strftime('%H:%M:%S')} done in {run['seconds']:.0f} s",
              file=sys.stderr)
    lines = [SECTION, "", "`python benchmarks/localize.py` on Strecha fountain-P11: a model from "
             "8 of the 11 images, the other 3 localised with `d2 localize` (12 px), model "
             "aligned to the ground truth by a similarity from the 8 mapped camera centres.",
             "Ground-truth intrinsics, fixed; seed " + str(SEED) + ".", "",
             *table(rows, args.max_edge, size), ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
