"""Matching speed on this machine, against its own ``torch.mm``.

    python benchmarks/match.py                  # print the markdown table
    python benchmarks/match.py --write          # also put it in docs/benchmarks.md

For 2k, 8k and 20k keypoints per image (random unit 512-D float32 descriptors):

- ``torch.mm``: GFLOP/s of one plain product of the same two matrices (2 * N0 * N1 * 512
  flops), the machine's own throughput on these shapes;
- ``mnn``: the tiled mutual-nearest-neighbour matcher on the same tensors, as GFLOP/s
  (same flop count), pairs/s and the fraction of the ``torch.mm`` throughput;
- ``d2 match job``: pairs/s of the whole job, :func:`d2cli.match.match` on an HDF5
  features file (read, match, write the matches file), exhaustive pairs of a few images,
  best of a few runs.

Both kernels are timed alternately and the best of several runs is kept, so other
processes on a shared machine disturb both alike. Then one 30k x 30k pair runs in a
fresh process, which reports the memory it added.
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

from d2cli.io.h5store import write_attrs
from d2cli.match import match, mnn
from d2cli.pairs import pairs_exhaustive

DIM = 512
# keypoints per image -> (timed repeats of each kernel, images in the job's features file,
# timed runs of the job)
CASES = {2000: (15, 8, 3), 8000: (5, 5, 2), 20000: (3, 3, 1)}
SECTION = "## Matching (d2 match)"


def unit(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=gen), dim=1)


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    """Run each function once to warm up, then alternately ``repeats`` times; best seconds."""
    out = {}
    for k, f in fns.items():
        f()
        out[k] = float("inf")
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            out[k] = min(out[k], time.perf_counter() - t)
    return out


def job_pairs_per_second(n: int, images: int, runs: int, gen: torch.Generator) -> float:
    """Best of ``runs`` complete jobs, each into a new matches file."""
    with tempfile.TemporaryDirectory() as d:
        feats = Path(d) / "feats.h5"
        names = [f"im{i}.jpg" for i in range(images)]
        with h5py.File(feats, "w") as f:
            write_attrs(f, {"model": "random", "settings": {"descriptor_dtype": "float32"}})
            for name in names:
                g = f.create_group(name)
                g["keypoints"] = np.zeros((n, 2), np.float32)
                g["descriptors"] = unit(n, gen).T.contiguous().numpy()  # (D, N) float32
        pairs = pairs_exhaustive(names)
        best = float("inf")
        for run in range(runs):
            t = time.perf_counter()
            r = match(pairs, feats, Path(d) / f"matches{run}.h5", device="cpu")
            best = min(best, time.perf_counter() - t)
            assert len(r.matched) == len(pairs)
        return len(pairs) / best


def memory_kib(field: str) -> int:
    """VmRSS / VmHWM (peak) of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def big_pair(n: int) -> dict:
    """One n x n pair; memory added by the matcher = peak RSS during the call - RSS before."""
    gen = torch.Generator().manual_seed(1)
    d0, d1 = unit(n, gen), unit(n, gen)
    mnn(d0[:600], d1[:600])  # load the BLAS kernels before measuring
    before = memory_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    except OSError:
        pass  # then the peak may be an older one: an overestimate
    t = time.perf_counter()
    m, _ = mnn(d0, d1)
    seconds = time.perf_counter() - t
    peak = max(memory_kib("VmHWM"), memory_kib("VmRSS"))
    return {"n": n, "seconds": seconds, "matches": len(m), "added_bytes": (peak - before) * 1024,
            "descriptor_bytes": d0.nbytes + d1.nbytes, "full_matrix_bytes": n * n * 4,
            "gflops": 2 * n * n * DIM / seconds / 1e9}


def run_table() -> list[str]:
    gen = torch.Generator().manual_seed(0)
    rows = ["| keypoints / image | torch.mm GFLOP/s | mnn GFLOP/s | fraction of torch.mm "
            "| mnn pairs/s | d2 match job pairs/s |", "|---:|---:|---:|---:|---:|---:|"]
    for n, (repeats, images, runs) in CASES.items():
        d0, d1 = unit(n, gen), unit(n, gen)
        t = best_times({"mm": lambda d0=d0, d1=d1: torch.mm(d0, d1.T),
                        "mnn": lambda d0=d0, d1=d1: mnn(d0, d1)}, repeats)
        flop = 2 * n * n * DIM
        job = job_pairs_per_second(n, images, runs, gen)
        rows.append(f"| {n:,} | {flop / t['mm'] / 1e9:.0f} | {flop / t['mnn'] / 1e9:.0f} | "
                    f"{t['mm'] / t['mnn']:.0%} | {1 / t['mnn']:.2f} | {job:.2f} |")
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
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, float32; load average {load:.1f} at the start "
            "(a shared machine: other processes take part of the cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"update {DOC}")
    ap.add_argument("--big", type=int, default=30000, help="keypoints of the big pair (0: skip)")
    ap.add_argument("--big-only", type=int, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.big_only:
        print(json.dumps(big_pair(args.big_only)))
        return
    header = machine()
    rows = run_table()
    lines = [SECTION, "", f"`python benchmarks/match.py` on {header}.", "", *rows, ""]
    if args.big:
        child = subprocess.run([sys.executable, __file__, "--big-only", str(args.big)],
                               capture_output=True, text=True, check=True)
        b = json.loads(child.stdout.strip().splitlines()[-1])
        lines += [
            f"A {b['n']:,} x {b['n']:,} pair: {b['seconds']:.1f} s ({b['gflops']:.0f} GFLOP/s), "
            f"{b['matches']} matches; the matcher added {b['added_bytes'] / 2**20:.0f} MiB to the "
            f"process (peak RSS minus RSS before the call; the descriptors themselves are "
            f"{b['descriptor_bytes'] / 2**20:.0f} MiB, the full similarity matrix would be "
            f"{b['full_matrix_bytes'] / 2**30:.1f} GiB).", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
