#!/usr/bin/env python
"""Extraction speed and memory on this CPU, as ratios to the bare network forward pass.

For each size (640x480, 1024x768) and mode (single-scale, multiscale 0.5/1/2), a fresh
process loads the built-in model, then alternates, on the same input: the bare forward
pass of every pyramid level (the floor any implementation pays) and our full extractor
(pyramid + detection + refinement + descriptors). Peak RSS is the process high-water
mark (VmHWM), so each configuration runs in its own process.

    python benchmarks/extract.py [--repeats 2] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SIZES = [(640, 480), (1024, 768)]
MODES = {"SS": (1.0,), "MS": (0.5, 1.0, 2.0)}
SAMPLE = Path(__file__).resolve().parents[1] / "src/d2cli/data/sacre_coeur/93341989_396310999.jpg"


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def run_one(w: int, h: int, mode: str, repeats: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from d2cli.extract import Extractor, ExtractSettings

    rgb = np.asarray(Image.open(SAMPLE).convert("RGB").resize((w, h), Image.BILINEAR))
    ext = Extractor(None, ExtractSettings(scales=MODES[mode]), device="cpu")
    x, fi, fj = ext.prepare(rgb)
    xt = torch.from_numpy(x)[None]

    @torch.no_grad()
    def forward_only() -> None:
        for s in MODES[mode]:
            ext.net(F.interpolate(xt, scale_factor=s, mode="bilinear", align_corners=True))

    def full() -> int:
        return len(ext(rgb))

    forward_only()  # warm-up (oneDNN primitive caches)
    t_fwd, t_full, n = [], [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        forward_only()
        t_fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        n = full()
        t_full.append(time.perf_counter() - t)
    fwd, tot = min(t_fwd), min(t_full)
    return {"size": f"{w}x{h}", "mode": mode, "keypoints": n, "forward_s": fwd, "total_s": tot,
            "overhead": tot / fwd - 1, "peak_rss_gb": peak_rss_gb(),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one", nargs=3, metavar=("W", "H", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), int(args.one[1]), args.one[2], args.repeats)))
        return
    rows = []
    for w, h in SIZES:
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats),
                                  "--one", str(w), str(h), mode],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    print("| input | mode | keypoints | bare forward (s) | d2 extract (s/img) | overhead vs forward "
          "| peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['mode']} | {r['keypoints']} | {r['forward_s']:.2f} | "
              f"{r['total_s']:.2f} | {100 * r['overhead']:+.1f}% | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
