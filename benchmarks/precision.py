#!/usr/bin/env python
"""What a reduced-precision trunk does to the keypoints (issue: GPU-batched extraction).

For each sample image: keypoints with the fp32 trunk vs the chosen precision (bf16 by
default; detection and refinement stay fp32): counts, the fraction of fp32 keypoints found
again within 0.5 px and 1 px, and the median descriptor change of those. The MMA effect is
measured with ``d2 eval hpatches ROOT --precision fp32 --precision bf16``.

    python benchmarks/precision.py [--device cpu|cuda] [--precision bf16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from d2cli.extract import Extractor, ExtractSettings
from d2cli.images import find_images, load_rgb

SAMPLES = Path(__file__).resolve().parents[1] / "src/d2cli/data/sacre_coeur"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--max-edge", type=int, default=1600)
    args = ap.parse_args()
    ref = Extractor(None, ExtractSettings(max_edge=args.max_edge, descriptor_dtype="float32",
                                          precision="fp32"), args.device)
    low = Extractor(None, ExtractSettings(max_edge=args.max_edge, descriptor_dtype="float32",
                                          precision=args.precision), args.device)
    print(f"| image | fp32 keypoints | {args.precision} keypoints | re-found ≤ 0.5 px | ≤ 1 px | "
          "median descriptor change |")
    print("| --- | --- | --- | --- | --- | --- |")
    tot = np.zeros(4)
    for path in find_images(SAMPLES):
        rgb = load_rgb(path)
        a, b = ref(rgb), low(rgb)
        d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=2)
        nearest = d.argmin(axis=1)
        dist = d[np.arange(len(a)), nearest]
        close = dist <= 1.0
        change = np.linalg.norm(a.descriptors[:, close] - b.descriptors[:, nearest[close]], axis=0)
        tot += [len(a), len(b), (dist <= 0.5).sum(), close.sum()]
        print(f"| {path.name} | {len(a)} | {len(b)} | {np.mean(dist <= 0.5):.1%} | "
              f"{np.mean(close):.1%} | {np.median(change):.4f} |")
    print(f"| all | {tot[0]:.0f} | {tot[1]:.0f} | {tot[2] / tot[0]:.1%} | {tot[3] / tot[0]:.1%} | |")
    print(f"\ndevice: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}")


if __name__ == "__main__":
    main()
