#!/usr/bin/env python
"""Regenerate the ``d2 eval`` tables and plots of docs/benchmarks.md.

Runs the commands exactly as a user would (``d2 ...`` in a subprocess) on the shared
real data, keeps their JSON output under the work directory and prints the markdown
tables of docs/benchmarks.md:

1. ``random-init.pth``: the D2-Net network with PyTorch's default initialisation
   (``torch.manual_seed(0)``), the "random weights" row: what the architecture alone gives;
2. ``d2 eval hpatches DATA/hpatches -m hed-vgg16 -m random-init.pth --both-scales
   --baseline sift --plot docs/hpatches-mma.png``;
3. ``d2 eval pose DATA/strecha/fountain-P11 --both-scales --baseline sift --max-edge 800
   --plot docs/pose-auc.png`` (built-in model single- and multiscale, COLMAP SIFT);
4. ``d2 eval pose DATA/strecha/fountain-P11 -m random-init.pth --max-edge 800 --no-plot``.

    python benchmarks/eval.py [--data ../shared/data] [--work /tmp/d2-eval-bench] [--device cpu]

Features and matches are cached in the work directory: a second run only re-reads them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def d2(*args: str | Path) -> dict:
    cmd = [sys.executable, "-m", "d2cli", *map(str, args), "--json", "--quiet"]
    print("$ d2 " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {proc.stderr.strip()}")
    print(f"  {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return json.loads(proc.stdout)


def random_init(path: Path) -> Path:
    import torch

    from d2cli.model import D2Net

    if not path.exists():
        torch.manual_seed(0)
        state = D2Net().state_dict()
        torch.save({"model": state}, path)
    return path


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def hpatches_table(s: dict) -> str:
    rows = ["| method | features / image (min-max) | matches / pair | MMA@1 | @2 | @3 | @5 "
            "| @10 |", "|---|---|---|---|---|---|---|---|"]
    for m in s["methods"]:
        f = m["features_per_image"]
        mma = m["mma"]["overall"]
        rows.append(f"| {m['label']} | {f['mean']:.0f} ({f['min']}-{f['max']}) | "
                    f"{m['matches_per_pair']['overall']:.0f} | "
                    + " | ".join(pct(mma[t - 1]) for t in (1, 2, 3, 5, 10)) + " |")
    return "\n".join(rows)


def pose_table(runs: list[dict]) -> str:
    rows = ["| method | AUC@5° | AUC@10° | AUC@20° | matches / pair | inliers / pair "
            "| median error | no pose |", "|---|---|---|---|---|---|---|---|"]
    for s in runs:
        for m in s["methods"]:
            a = m["auc"]
            med = m["median_error"]
            rows.append(f"| {m['label']} | {pct(a['@5'])} | {pct(a['@10'])} | {pct(a['@20'])} "
                        f"| {m['matches_per_pair']:.0f} | {m['inliers_per_pair']:.0f} | "
                        f"{'-' if med is None else f'{med:.2f}°'} | {m['failed_estimates']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/d2-eval-bench"))
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pose-max-edge", type=int, default=800)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rnd = random_init(args.work / "random-init.pth")
    common = ["--device", args.device]

    hp = d2("eval", "hpatches", args.data / "hpatches", "-m", "hed-vgg16", "-m", rnd,
            "--both-scales", "--baseline", "sift", "--work-dir", args.work / "hpatches",
            "--plot", args.docs / "hpatches-mma.png", *common)
    fountain = args.data / "strecha" / "fountain-P11"
    # 3072x2048 images: D2-Net and SIFT both see them at --max-edge (800 keeps the
    # multiscale run of 11 images near 10 minutes on a shared 2-core CPU)
    pose_args = ["--max-edge", str(args.pose_max_edge), "--work-dir", args.work / "pose", *common]
    pose = d2("eval", "pose", fountain, "--both-scales", "--baseline", "sift",
              "--plot", args.docs / "pose-auc.png", *pose_args)
    pose_rnd = d2("eval", "pose", fountain, "-m", rnd, "--no-plot", *pose_args)
    for name, s in (("hpatches", hp), ("pose", pose), ("pose-random", pose_rnd)):
        (args.work / f"{name}.json").write_text(json.dumps(s, indent=2))

    print(f"HPatches: {hp['sequences']['total']} sequence(s), {hp['pairs']['overall']} pairs\n")
    print(hpatches_table(hp))
    print(f"\nPose: {pose['evaluated_pairs']} pairs, RANSAC {pose['ransac_max_error_px']} px, "
          f"<= {pose['ransac_max_trials']} trials\n")
    print(pose_table([pose, pose_rnd]))


if __name__ == "__main__":
    main()
