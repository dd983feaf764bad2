#!/usr/bin/env python
"""On a GPU: the channels-last bf16 detection path equals detection on the same values as an
fp32 NCHW map (tests/test_detect.py checks this on the CPU; cuda has its own kernels).

    python benchmarks/gpu_detect_check.py [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from d2cli.detect import detect


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    dev = torch.device(ap.parse_args().device)
    g = torch.Generator(device="cpu").manual_seed(0)
    ok = True
    for quantise in (False, True):
        D = torch.relu(torch.randn(512, 96, 128, generator=g)) * 8
        if quantise:  # exact ties across channels and plateaus in space
            D = torch.round(D)
        nhwc = D.to(dev).bfloat16()[None].contiguous(memory_format=torch.channels_last)[0]
        a, b = detect(nhwc), detect(nhwc.float().contiguous())
        same = torch.equal(a.cells, b.cells) and torch.equal(a.step, b.step)
        ok &= same
        print(f"{dev} quantise={quantise}: {len(a.cells)} detections, "
              f"{'same as the fp32 NCHW map' if same else 'DIFFERENT'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
