"""Track refinement on a small scene, over mapping seeds: does it register as reliably?

    python benchmarks/refine_seeds.py [--max-edge 400] [--seeds 6] [--work /tmp/refine-seeds]

The six sample photos of the sfm tests (tests/conftest.py SUBSET, from
src/d2cli/data/sacre_coeur): one ``d2 sfm --refine`` (features, matches, database, and the
track-refined copy), then ``d2cli.reconstruct`` of the plain and the refined database with
each seed. Prints registered images, 3D points and mean reprojection error per seed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SACRE = ROOT / "src/d2cli/data/sacre_coeur"
SUBSET = ["02928139_3448003521.jpg", "17295357_9106075285.jpg", "44120379_8371960244.jpg",
          "51091044_3486849416.jpg", "71295362_4051449754.jpg", "93341989_396310999.jpg"]


def main() -> None:
    import pycolmap

    from d2cli.reconstruct import MapSettings, reconstruct

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-edge", default="400")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--work", default="/tmp/refine-seeds")
    args = ap.parse_args()
    work = Path(args.work) / args.max_edge
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in SUBSET:
        src = next(SACRE.rglob(name))
        if not (images / name).exists():
            shutil.copy(src, images / name)
    w = work / "sfm"
    if not (w / "database-refined.db").exists():
        subprocess.run([sys.executable, "-m", "d2cli", "sfm", str(images), "--out", str(w),
                        "--max-edge", args.max_edge, "--device", "cpu", "--refine", "--seed", "0",
                        "-q"], check=False)
    print(f"| database (--max-edge {args.max_edge}) | seed | registered | points | reproj (px) |\n"
          "| --- | --- | --- | --- | --- |")
    for db in ("database.db", "database-refined.db"):
        for seed in range(args.seeds):
            out = work / "models" / f"{db}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            try:
                reconstruct(w / db, out, settings=MapSettings(seed=seed, num_threads=2))
                rec = pycolmap.Reconstruction(out)
                cells = (rec.num_reg_images(), rec.num_points3D(),
                         f"{rec.compute_mean_reprojection_error():.2f}")
            except Exception as e:  # a seed that maps nothing is a result here
                cells = ("failed", type(e).__name__, "")
            print(f"| {db} | {seed} | " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
