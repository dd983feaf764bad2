"""Matching speed on this machine, fp32 and auto precision, against its own ``torch.mm``.

    python benchmarks/match.py                  # print the markdown table
    python benchmarks/match.py --write          # also put it in docs/benchmarks.md

For 500, 1k, 2k, 8k and 20k keypoints per image (real D2 descriptors of the sample photos,
``real_descriptors.py``; the bf16 screen's cost depends on their near-ties):

- ``torch.mm``: GFLOP/s of one plain product of the same two matrices (2 * N0 * N1 * 512
  flops) in fp32 and in bf16, the machine's own throughput on these shapes;
- ``mnn``: the matcher on the same tensors, ``precision="fp32"`` (every product in fp32)
  and ``precision="auto"`` (bf16 products where that is faster, decided in fp32; pairs
  under ``SCREEN_MIN_SIMILARITIES`` run exact): milliseconds, the speed-up and whether
  both give the same matches;
- ``d2 match job``: pairs/s of the whole job, :func:`d2cli.match.match` on an HDF5
  features file (read, match, write the matches file), exhaustive pairs of a few images,
  best of a few runs, at both precisions.

The kernels are timed alternately and the best of several runs is kept, so other
processes on a shared machine disturb all alike. Then one 30k x 30k pair runs in a
fresh process per precision, which reports the memory it added.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from docs_section import DOC, write_section  # benchmarks/ is on sys.path
from real_descriptors import descriptor_sets
from timing import best_times

from d2cli.io.h5store import write_attrs
from d2cli.match import match
from d2cli.mnn import matcher_precision, mnn
from d2cli.pairs import pairs_exhaustive

DIM = 512
# keypoints per image -> (timed repeats of each kernel, images in the job's features file,
# timed runs of the job)
CASES = {500: (30, 12, 3), 1000: (20, 10, 3), 2000: (15, 8, 3), 8000: (5, 5, 2),
         20000: (3, 2, 1)}
SECTION = "## Matching (d2 match)"


def job_pairs_per_second(n: int, images: int, runs: int) -> dict[str, float]:
    """Best of ``runs`` complete jobs at each precision, each into a new matches file."""
    with tempfile.TemporaryDirectory() as d:
        feats = Path(d) / "feats.h5"
        names = [f"im{i}.jpg" for i in range(images)]
        with h5py.File(feats, "w") as f:
            write_attrs(f, {"model": "d2cli-v1", "settings": {"descriptor_dtype": "float16"}})
            for name, desc in zip(names, descriptor_sets(images, n, seed=1), strict=True):
                g = f.create_group(name)
                g["keypoints"] = np.zeros((n, 2), np.float32)
                g["descriptors"] = desc.T.contiguous().numpy().astype(np.float16)  # (D, N)
        pairs = pairs_exhaustive(names)
        best = {"fp32": float("inf"), "auto": float("inf")}
        for run in range(runs):
            for precision in best:
                t = time.perf_counter()
                r = match(pairs, feats, Path(d) / f"matches-{precision}{run}.h5", device="cpu",
                          precision=precision)
                best[precision] = min(best[precision], time.perf_counter() - t)
                assert len(r.matched) == len(pairs)
        return {k: len(pairs) / v for k, v in best.items()}


def memory_kib(field: str) -> int:
    """VmRSS / VmHWM (peak) of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def big_pair(n: int, precision: str) -> dict:
    """One n x n pair; memory added by the matcher = peak RSS during the call - RSS before."""
    d0, d1 = descriptor_sets(2, n, seed=2)
    mnn(d0[:600], d1[:600], precision=precision)  # load the BLAS kernels before measuring
    before = memory_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    except OSError:
        pass  # then the peak may be an older one: an overestimate
    t = time.perf_counter()
    m, _ = mnn(d0, d1, precision=precision)
    seconds = time.perf_counter() - t
    peak = max(memory_kib("VmHWM"), memory_kib("VmRSS"))
    return {"n": n, "seconds": seconds, "matches": len(m), "added_bytes": (peak - before) * 1024,
            "descriptor_bytes": d0.nbytes + d1.nbytes, "full_matrix_bytes": n * n * 4,
            "gflops": 2 * n * n * DIM / seconds / 1e9}


def run_table() -> list[str]:
    rows = ["| keypoints / image | torch.mm fp32 GFLOP/s | torch.mm bf16 GFLOP/s "
            "| mnn fp32 (ms) | mnn auto (ms) | auto vs fp32 | same matches "
            "| d2 match job fp32 pairs/s | d2 match job auto pairs/s |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for n, (repeats, images, runs) in CASES.items():
        d0, d1 = descriptor_sets(2, n)
        h0, h1 = d0.bfloat16(), d1.bfloat16()
        t = best_times({"mm": lambda d0=d0, d1=d1: torch.mm(d0, d1.T),
                        "mm16": lambda h0=h0, h1=h1: torch.mm(h0, h1.T),
                        "fp32": lambda d0=d0, d1=d1: mnn(d0, d1, precision="fp32"),
                        "auto": lambda d0=d0, d1=d1: mnn(d0, d1, precision="auto")}, repeats)
        m32, m16 = mnn(d0, d1, precision="fp32")[0], mnn(d0, d1, precision="auto")[0]
        same = "yes" if torch.equal(m32, m16) else (
            f"no: {len(set(map(tuple, m32.tolist())) ^ set(map(tuple, m16.tolist())))} of "
            f"{len(m32)} differ")
        flop = 2 * n * n * DIM
        job = job_pairs_per_second(n, images, runs)
        rows.append(f"| {n:,} | {flop / t['mm'] / 1e9:.0f} | {flop / t['mm16'] / 1e9:.0f} | "
                    f"{1e3 * t['fp32']:.1f} | {1e3 * t['auto']:.1f} | "
                    f"**{t['fp32'] / t['auto']:.1f}x** | {same} ({len(m32)} matches) | "
                    f"{job['fp32']:.2f} | {job['auto']:.2f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0]
    auto = matcher_precision("auto", torch.device("cpu"))
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads (auto = {auto} here, from 2M similarities on); "
            f"load average {load:.1f} "
            "at the start (a shared machine: other processes take part of the cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"update {DOC}")
    ap.add_argument("--big", type=int, default=28000, help="keypoints of the big pair (0: skip)")
    ap.add_argument("--big-only", type=int, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.big_only:
        print(json.dumps(big_pair(args.big_only, args.precision)))
        return
    header = machine()
    rows = run_table()
    lines = [SECTION, "", f"`python benchmarks/match.py` on {header}.", "", *rows, ""]
    if args.big:
        for precision in ("fp32", "auto"):
            child = subprocess.run([sys.executable, __file__, "--big-only", str(args.big),
                                    "--precision", precision],
                                   capture_output=True, text=True, check=True)
            b = json.loads(child.stdout.strip().splitlines()[-1])
            lines += [
                f"A {b['n']:,} x {b['n']:,} pair, precision {precision}: {b['seconds']:.1f} s "
                f"({b['gflops']:.0f} GFLOP/s), {b['matches']} matches; the matcher added "
                f"{b['added_bytes'] / 2**20:.0f} MiB to the process (peak RSS minus RSS before "
                f"the call; the descriptors themselves are {b['descriptor_bytes'] / 2**20:.0f} "
                f"MiB, the full similarity matrix would be "
                f"{b['full_matrix_bytes'] / 2**30:.1f} GiB).", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
