#!/usr/bin/env python
"""Extraction speed and memory on this CPU: fp32 and auto precision side by side.

For each size (640x480, 1024x768) and mode (single-scale, multiscale 0.5/1/2), a fresh
process loads the default model, then alternates, on the same input:

- the **bare fp32 forward pass** of every pyramid level (the fp32 floor);
- the **bare trunk at the auto precision** (what ``--precision auto`` runs: bf16 +
  channels_last on CPUs with AVX512-BF16 or AMX, else fp32), its TFLOP/s and its fraction
  of this CPU's bf16 peak;
- **d2 extract** end to end (resize, trunk, detection, refinement, descriptors) with
  ``--precision fp32`` and with ``--precision auto``; best of ``--repeats``.

The peak is measured, not looked up: the best bf16 ``torch.mm`` rate on 4096^3 matrices
(oneDNN) in the same run, the rate this CPU's bf16 units reach on the best-shaped work.
With ``--reference DIR`` (a checkout of github.com/mihaidusmanu/d2-net, not part of this
project) the reference's ``process_multiscale`` runs on the same input in its own process.
Peak RSS is each process's high-water mark (VmHWM).

    python benchmarks/extract.py [--repeats 2] [--reference DIR] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from docs_section import write_section  # benchmarks/ is on sys.path
from timing import best_times

SIZES = [(640, 480), (1024, 768)]
MODES = {"SS": (1.0,), "MS": (0.5, 1.0, 2.0)}
SAMPLE = Path(__file__).resolve().parents[1] / "src/d2cli/data/sacre_coeur/93341989_396310999.jpg"
SECTION = "## Extraction (d2 extract)"


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def sample(w: int, h: int):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(SAMPLE).convert("RGB").resize((w, h), Image.BILINEAR))


def run_one(w: int, h: int, mode: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from d2cli.extract import Extractor, ExtractSettings
    from d2cli.model import trunk_flops

    rgb = sample(w, h)
    scales = MODES[mode]
    fp32 = Extractor(None, ExtractSettings(scales=scales, precision="fp32"), device="cpu")
    auto = Extractor(None, ExtractSettings(scales=scales), device="cpu")
    x, _, _ = fp32.prepare(rgb)
    xt = torch.from_numpy(x)[None]
    levels = [F.interpolate(xt, scale_factor=s, mode="bilinear", align_corners=True)
              for s in scales]
    flops = sum(trunk_flops(*lv.shape[-2:]) for lv in levels)

    @torch.no_grad()
    def forward(ext: Extractor) -> None:
        for lv in levels:
            ext._trunk(lv)

    t = best_times({"forward_fp32": lambda: forward(fp32), "forward_auto": lambda: forward(auto),
              "extract_fp32": lambda: fp32(rgb), "extract_auto": lambda: auto(rgb)}, repeats)
    return {"size": f"{w}x{h}", "mode": mode, "precision": auto.settings.precision,
            "precision_note": auto.precision_note, "keypoints_fp32": len(fp32(rgb)),
            "keypoints_auto": len(auto(rgb)), "flops": flops, **t,
            "peak_rss_gb": peak_rss_gb(), "threads": torch.get_num_threads()}


def run_reference(w: int, h: int, mode: str, repeats: int, ref_dir: str) -> dict:
    """The reference code's pyramid + detection on the same input (its own process)."""
    import torch

    from d2cli.images import preprocess
    from d2cli.model import read_state_dict
    from d2cli.weights import resolve_model

    sys.path.insert(0, ref_dir)
    from lib.model_test import D2Net  # the reference, github.com/mihaidusmanu/d2-net
    from lib.pyramid import process_multiscale

    model = D2Net(model_file=None, use_relu=True, use_cuda=False)
    model.load_state_dict(read_state_dict(resolve_model(None).path))
    model.eval()
    rgb = sample(w, h)

    @torch.no_grad()
    def reference() -> int:
        x = torch.from_numpy(preprocess(rgb, "caffe")[None])
        return len(process_multiscale(x, model, scales=list(MODES[mode]))[1])

    t = best_times({"reference": reference}, repeats)
    return {"keypoints_reference": reference(), **t, "peak_rss_gb": peak_rss_gb()}


def bf16_peak() -> dict:
    """The best bf16 and fp32 torch.mm rates (GFLOP/s) on 4096^3 matrices."""
    import torch

    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    t = best_times({"bf16": lambda: torch.mm(a16, b16), "fp32": lambda: torch.mm(a, b)}, 3)
    return {k: 2 * n**3 / v / 1e9 for k, v in t.items()}


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reference", help="checkout of github.com/mihaidusmanu/d2-net to time")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--one", nargs=3, metavar=("W", "H", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--ref-one", nargs=3, metavar=("W", "H", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), int(args.one[1]), args.one[2], args.repeats)))
        return
    if args.ref_one:
        w, h, mode = args.ref_one
        print(json.dumps(run_reference(int(w), int(h), mode, args.repeats, args.reference)))
        return
    if args.peak:
        print(json.dumps(bf16_peak()))
        return
    peak = child("--peak")
    print(peak, file=sys.stderr)
    rows = []
    for w, h in SIZES:
        for mode in MODES:
            r = child("--repeats", str(args.repeats), "--one", str(w), str(h), mode)
            if args.reference:
                ref = child("--repeats", "1", "--reference", args.reference,
                            "--ref-one", str(w), str(h), mode)
                r.update(reference=ref["reference"], keypoints_reference=ref["keypoints_reference"],
                         ref_rss_gb=ref["peak_rss_gb"])
            rows.append(r)
            print(r, file=sys.stderr, flush=True)
    prec = rows[0]["precision"]
    lines = [
        SECTION, "",
        f"`python benchmarks/extract.py{' --reference REF' if args.reference else ''}` on this "
        f"project's CPU ({os.cpu_count()} cores, torch {rows[0]['threads']} threads), default "
        f"model, a sample photo resized to each size, one run; auto = **{prec}** here "
        f"({rows[0]['precision_note']}). Each configuration runs in a fresh process that "
        "alternates the bare fp32 forward pass of every pyramid level, the bare trunk at the "
        "auto precision and d2 extract end to end at both precisions (best of "
        f"{args.repeats}). The bf16 peak is this CPU's best bf16 `torch.mm` rate in the same "
        f"run: {peak['bf16'] / 1e3:.2f} TFLOP/s (fp32: {peak['fp32'] / 1e3:.2f}).", "",
        "| input | mode | keypoints fp32 / auto | bare fp32 forward (s) | d2 extract fp32 (s) "
        "| auto trunk (s) | d2 extract auto (s) | auto vs fp32 | post-processing vs auto trunk "
        "| auto trunk TFLOP/s (of bf16 peak) |"
        + (" reference (s) | auto vs reference |" if args.reference else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- | --- |" if args.reference else ""),
    ]
    for r in rows:
        tf = r["flops"] / r["forward_auto"] / 1e12
        line = (f"| {r['size']} | {r['mode']} | {r['keypoints_fp32']} / {r['keypoints_auto']} | "
                f"{r['forward_fp32']:.2f} | {r['extract_fp32']:.2f} | {r['forward_auto']:.2f} | "
                f"**{r['extract_auto']:.2f}** | {r['extract_fp32'] / r['extract_auto']:.1f}x | "
                f"{100 * (r['extract_auto'] / r['forward_auto'] - 1):+.1f}% | "
                f"{tf:.2f} ({tf * 1e3 / peak['bf16']:.0%}) |")
        if args.reference:
            line += f" {r['reference']:.2f} | {r['reference'] / r['extract_auto']:.1f}x |"
        lines.append(line)
    lines += ["", "Peak RSS (GB, the process high-water mark: both extractors loaded): "
              + ", ".join(f"{r['size']} {r['mode']} {r['peak_rss_gb']:.2f}"
                          + (f" (reference {r['ref_rss_gb']:.2f})" if args.reference else "")
                          for r in rows) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
