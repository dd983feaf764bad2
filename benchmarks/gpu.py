#!/usr/bin/env python
"""GPU throughput of d2 extract and d2 match (issue: GPU-batched extraction).

Prints one markdown table for 1600x1200 real photos (a sample image resized): for
single-scale (SS) and multiscale (MS), each precision and batch size: images/s end to end
(network input -> keypoints, scores, descriptors on the host), peak GPU memory, and the
trunk alone (img/s and TFLOP/s at 1.109 MFLOP per input pixel, the VGG16 conv1_1..conv4_3
cost). ``auto`` is the default precision (bf16 on GPUs from Ampere on); its row names what it
chose. Then matching on real D2 descriptors of the sample photos: pairs/s at 8k keypoints
for fp32, auto (fp32 on GPUs) and the bf16 screen (bf16 products, fp32 decision), whether
each gives the fp32 matches, and the fraction of the GPU's own fp32 matmul rate.

    python benchmarks/gpu.py [--device cuda] [--size 1600x1200] [--seconds 4]
Runs on the CPU too (small --size) as a smoke test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from real_descriptors import descriptor_sets  # benchmarks/ is on sys.path

from d2cli.extract import Extractor, ExtractSettings
from d2cli.mnn import mnn, uses_bf16_screen
from d2cli.settings import MULTI_SCALE, SINGLE_SCALE

SAMPLE = Path(__file__).resolve().parents[1] / "src/d2cli/data/sacre_coeur/93341989_396310999.jpg"
FLOP_PER_PIXEL = 1.109e6


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, seconds: float, min_reps: int = 2) -> float:
    """Seconds per call: one warm-up, then repeat until `seconds` have passed."""
    fn()
    sync(dev)
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    sync(dev)
    return (time.perf_counter() - t0) / reps


def bench_extract(ext: Extractor, rgb: np.ndarray, b: int, dev: torch.device, seconds: float) -> str:
    """The table cells of one (mode, precision, batch) configuration."""
    h, w = rgb.shape[:2]
    scales = ext.settings.scales
    x, fi, fj = ext.prepare(rgb)
    xs = [x] * b
    xt = torch.from_numpy(np.stack(xs)).to(dev)
    pixels = sum(int(h * s) * int(w * s) for s in scales)

    @torch.no_grad()
    def trunk() -> None:
        for s in scales:
            ext._trunk(F.interpolate(xt, scale_factor=s, mode="bilinear", align_corners=True))

    def e2e() -> int:
        return sum(len(ext.finish(k, fi, fj, (w, h))) for k in ext.run_batch(xs))

    try:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t_e2e = timed(e2e, dev, seconds)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
        t_trunk = timed(trunk, dev, seconds)
        n = e2e() // b
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory | | | | | |"
    tflops = FLOP_PER_PIXEL * pixels * b / t_trunk / 1e12
    return (f"{b / t_e2e:.2f} | {b / t_trunk:.2f} | {tflops:.1f} | {t_trunk / t_e2e:.0%} | {n} | "
            f"{peak / b:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="1600x1200")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--precisions", default="fp32,tf32,bf16,auto")
    ap.add_argument("--match-keypoints", type=int, default=8000)
    args = ap.parse_args()
    dev = torch.device(args.device)
    w, h = map(int, args.size.split("x"))
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB").resize((w, h), Image.BILINEAR))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, input {w}x{h}\n")
    print("| mode | precision | batch | end-to-end img/s | trunk img/s | trunk TFLOP/s | "
          "e2e / trunk | keypoints / img | peak GPU memory / img (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, scales in (("SS", SINGLE_SCALE), ("MS", MULTI_SCALE)):
        for precision in args.precisions.split(","):
            ext = Extractor(None, ExtractSettings(scales=scales, precision=precision), str(dev))
            for b in map(int, args.batches.split(",")):
                row = bench_extract(ext, rgb, b, dev, args.seconds)
                chosen = ext.settings.precision
                label = precision if chosen == precision else f"{precision} ({chosen})"
                print(f"| {mode} | {label} | {b} | {row}", flush=True)
    # matching
    k = args.match_keypoints
    d0, d1 = (d.to(dev) for d in descriptor_sets(2, k))
    t_mm = timed(lambda: d0 @ d1.t(), dev, args.seconds)
    flop = 2 * k * k * 512
    ref = mnn(d0, d1, precision="fp32")[0]
    print(f"\n| matching {k}x{k} (real descriptors) | pairs/s | GFLOP/s | torch.mm fp32 GFLOP/s "
          "| fraction | same matches as fp32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for precision in ("fp32", "auto", "bf16"):
        t_mnn = timed(lambda p=precision: mnn(d0, d1, precision=p), dev, args.seconds)
        same = torch.equal(mnn(d0, d1, precision=precision)[0], ref)
        label = (f"auto ({'bf16 screen' if uses_bf16_screen('auto', dev, k, k) else 'fp32'})"
                 if precision == "auto" else "bf16 screen" if precision == "bf16" else precision)
        print(f"| mnn {label} | {1 / t_mnn:.1f} | {flop / t_mnn / 1e9:.0f} | "
              f"{flop / t_mm / 1e9:.0f} | {t_mm / t_mnn:.0%} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
