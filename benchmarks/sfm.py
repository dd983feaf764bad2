"""Reconstruction accuracy on real scenes (issue 4): ``d2 sfm`` against COLMAP SIFT.

* ``sacre_coeur/mapping`` (10 Internet photos, no ground truth): images registered.
* ``strecha/fountain-P11`` (11 images 3072x2048 with ground-truth cameras): images
  registered; after a similarity alignment of the camera centres to the ground truth
  (Umeyama, least squares on all registered centres), the RMS camera-centre error in scene
  units and as a fraction of the scene extent (the largest distance between two
  ground-truth centres), the rotation error of every camera, and the focal length error.

Both pipelines run in the same process on the same images, downscaled to the same
``--max-edge`` (D2-Net: the network input; SIFT: ``max_image_size``; keypoints are in
full-resolution pixels for both). COLMAP SIFT runs through pycolmap: ``extract_features``,
``match_exhaustive`` (which also verifies), ``incremental_mapping``, with the same camera
sharing as ``d2 colmap-import --camera-mode auto`` gives (one camera for the fountain's
equal-size images, one per Internet photo) and COLMAP's default options otherwise.

    .venv/bin/python benchmarks/sfm.py [--data ../shared/data] [--out bench-out/sfm]

prints the markdown table of ``docs/benchmarks.md`` ("Reconstruction (d2 sfm)") and writes
it with the raw numbers to ``--out``/results.json. Outputs are reused: a second run only
re-maps (delete ``--out`` to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pycolmap

from d2cli.extract import ExtractSettings
from d2cli.reconstruct import MapSettings, default_threads
from d2cli.refine import RefineConfig
from d2cli.sfm import SfmSettings, sfm

ROOT = Path(__file__).resolve().parents[1]
GT_FOCAL_FOUNTAIN = (2759.48 + 2764.16) / 2  # mean of fx, fy of K.txt


def read_strecha_cameras(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image name -> (R world-to-camera, camera centre), from the ``.camera`` files.

    Format (data README): K (3 lines), distortion, R camera-to-world (3 lines), the centre
    in world coordinates, the image size.
    """
    out = {}
    for f in sorted(folder.glob("*.camera")):
        rows = [list(map(float, ln.split())) for ln in f.read_text().splitlines() if ln.strip()]
        r_c2w = np.array(rows[4:7])
        out[f.name[: -len(".camera")]] = (r_c2w.T, np.array(rows[7]))
    return out


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum |s R src + t - dst|^2 (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1
    r = u @ e @ vt
    s = float(np.trace(np.diag(d) @ e) / (a ** 2).sum(1).mean())
    return s, r, mu_d - s * r @ mu_s


def model_numbers(rec: pycolmap.Reconstruction) -> dict[str, float]:
    return {"registered": rec.num_reg_images(), "images": rec.num_images(),
            "points3D": rec.num_points3D(),
            "track": float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
            "reproj_px": float(rec.compute_mean_reprojection_error())
            if rec.num_points3D() else 0.0}


def evaluate(rec: pycolmap.Reconstruction,
             gt: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Errors of the registered cameras after aligning their centres to the ground truth."""
    names = [n for n in gt if (im := rec.find_image_with_name(n)) is not None and im.has_pose]
    if len(names) < 3:
        return {}
    est = np.array([rec.find_image_with_name(n).projection_center() for n in names])
    ref = np.array([gt[n][1] for n in names])
    s, r, t = umeyama(est, ref)
    err = np.linalg.norm((s * est @ r.T + t) - ref, axis=1)
    rms = float(np.sqrt((err ** 2).mean()))
    centres = np.array([c for _, c in gt.values()])
    extent = float(max(np.linalg.norm(a - b) for a in centres for b in centres))
    rot = []
    for n in names:
        # x_gt = s R x_est + t  =>  cam_from_gt_world rotation = R_est R^T
        r_est = rec.find_image_with_name(n).cam_from_world().rotation.matrix() @ r.T
        cos = (np.trace(r_est @ gt[n][0].T) - 1) / 2
        rot.append(float(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
    # relative rotations of all camera pairs: free of the alignment, whose rotation the
    # nearly coplanar centres of a fountain-like sweep determine only loosely
    r_w2c = {n: rec.find_image_with_name(n).cam_from_world().rotation.matrix() for n in names}
    rel = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = (r_w2c[a] @ r_w2c[b].T) @ (gt[a][0] @ gt[b][0].T).T
            rel.append(float(np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1)))))
    focal = np.mean([rec.cameras[rec.find_image_with_name(n).camera_id].mean_focal_length()
                     for n in names])
    return {"rms_centre": rms, "extent": extent, "rms_fraction": rms / extent,
            "max_centre": float(err.max()), "rot_mean_deg": float(np.mean(rot)),
            "rot_max_deg": float(np.max(rot)), "rel_rot_mean_deg": float(np.mean(rel)),
            "rel_rot_max_deg": float(np.max(rel)), "focal": float(focal),
            "focal_error": float(focal / GT_FOCAL_FOUNTAIN - 1)}


def run_d2(images: Path, work: Path, max_edge: int, mapper: str, threads: int,
           refine: bool = False, precision: str = "auto") -> tuple[pycolmap.Reconstruction, float]:
    """d2 sfm; a second mapper on the same work folder reuses features, matches, database.
    ``refine``: in a copy of that folder (its features, matches and database reused), so
    the unrefined model stays beside it."""
    t0 = time.perf_counter()
    if refine:
        plain, work = work, work.with_name(work.name + "-refine")
        if not (work / "database.db").is_file() and (plain / "database.db").is_file():
            shutil.copytree(plain, work, ignore=shutil.ignore_patterns("sparse*", "sfm.json"),
                            dirs_exist_ok=True)
    settings = SfmSettings(extract=ExtractSettings(max_edge=max_edge, precision=precision),
                           mapping=MapSettings(mapper=mapper, num_threads=threads),
                           refine=RefineConfig() if refine else None)
    result = sfm(images, work, settings, device="cpu")
    steps = {k: v.get("seconds") for k, v in result.steps.items()}
    print(json.dumps({"d2 steps (s)": steps, "skipped": result.skipped}), flush=True)
    return pycolmap.Reconstruction(work / "sparse"), time.perf_counter() - t0


def run_sift(images: Path, work: Path, max_edge: int, single_camera: bool,
             threads: int) -> tuple[pycolmap.Reconstruction, float]:
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not db.exists():
        tmp = work / "database.tmp.db"
        tmp.unlink(missing_ok=True)
        pycolmap.extract_features(
            tmp, images, image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE if single_camera
            else pycolmap.CameraMode.PER_IMAGE,
            reader_options=pycolmap.ImageReaderOptions(camera_model="SIMPLE_RADIAL"),
            extraction_options=pycolmap.FeatureExtractionOptions(
                max_image_size=max_edge, num_threads=threads, use_gpu=False),
            device=pycolmap.Device.cpu)
        pycolmap.match_exhaustive(
            tmp, matching_options=pycolmap.FeatureMatchingOptions(num_threads=threads,
                                                                  use_gpu=False),
            device=pycolmap.Device.cpu)
        os.replace(tmp, db)
    out = work / "sparse"
    shutil.rmtree(out, ignore_errors=True)
    recs = pycolmap.incremental_mapping(
        db, images, out, options=pycolmap.IncrementalPipelineOptions(
            num_threads=threads, random_seed=0))
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    return best, time.perf_counter() - t0


def table(rows: list[dict]) -> str:
    head = ("| scene | method | registered | 3D points | track | reproj (px) | RMS centre error "
            "| RMS / extent | rotation error mean / max | relative rotation error mean / max "
            "| focal error | time (s) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        e = r.get("eval") or {}
        lines.append(
            f"| {r['scene']} | {r['method']} | {r['registered']}/{r['total']} | {r['points3D']} "
            f"| {r['track']:.2f} | {r['reproj_px']:.2f} | "
            + (f"{e['rms_centre']:.3f} | {100 * e['rms_fraction']:.2f} % | "
               f"{e['rot_mean_deg']:.2f}° / {e['rot_max_deg']:.2f}° | "
               f"{e['rel_rot_mean_deg']:.2f}° / {e['rel_rot_max_deg']:.2f}° | "
               f"{100 * e['focal_error']:+.1f} % |" if e else "– | – | – | – | – |")
            + f" {r['seconds']:.0f} |")
    return head + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "sfm")
    ap.add_argument("--max-edge", type=int, default=1600,
                    help="Both pipelines see images downscaled to this (fountain: 3072 px).")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--scenes", default="sacre_coeur,fountain-P11")
    ap.add_argument("--mappers", default="incremental,global",
                    help="d2 sfm mappers to run (SIFT: incremental, COLMAP's default).")
    ap.add_argument("--refine", action="store_true",
                    help="Also d2 sfm --refine (track refinement before mapping).")
    ap.add_argument("--precisions", default="auto",
                    help="d2 extraction precisions to run, e.g. fp32,auto (one work folder each).")
    args = ap.parse_args()
    pycolmap.logging.minloglevel = 3
    scenes = {
        "sacre_coeur": (args.data / "sacre_coeur" / "mapping", None, False, 10),
        "fountain-P11": (args.data / "strecha" / "fountain-P11" / "images",
                         args.data / "strecha" / "fountain-P11" / "gt_dense_cameras", True, 11),
    }
    rows = []
    for scene in args.scenes.split(","):
        images, gt_dir, single, total = scenes[scene]
        gt = read_strecha_cameras(gt_dir) if gt_dir else None
        work = args.out / scene
        precisions = args.precisions.split(",")
        runs = []
        for p in precisions:
            # one folder per precision: features of two precisions never share a file
            d2, tag = (work / "d2", "") if p == "auto" else (work / f"d2-{p}", f", {p}")
            if len(precisions) > 1 and p == "auto":
                tag = ", auto"
            runs += [(f"d2 sfm ({m}{tag})", run_d2,
                      (images, d2, args.max_edge, m, args.threads, False, p))
                     for m in args.mappers.split(",")]
            if args.refine:
                runs += [(f"d2 sfm --refine ({m}{tag})", run_d2,
                          (images, d2, args.max_edge, m, args.threads, True, p))
                         for m in args.mappers.split(",")]
        runs.append(("COLMAP SIFT", run_sift,
                     (images, work / "sift", args.max_edge, single, args.threads)))
        for method, fn, fn_args in runs:
            rec, seconds = fn(*fn_args)
            row = {"scene": scene, "method": method, "total": total, "seconds": seconds,
                   **model_numbers(rec)}
            if gt is not None:
                row["eval"] = evaluate(rec, gt)
            rows.append(row)
            print(json.dumps(row), flush=True)
    md = table(rows)
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"max_edge": args.max_edge, "threads": args.threads, "rows": rows}, indent=2))
    (args.out / "table.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
