"""The crash-safe HDF5 store at scale: hloc's one group per pair, how cost grows with entries.

    python benchmarks/store.py                   # print the markdown table
    python benchmarks/store.py --write           # also put it in docs/benchmarks.md

Each row runs in a fresh process (its own peak RSS): ``write`` adds N tiny match entries
(40 keypoints, the layout of ``d2 match``: ``name0/name1`` groups) through
:class:`d2cli.io.h5store.H5Store` with ``d2 match``'s commit settings, then finalizes;
``reopen`` opens the finished file and lists what is done (a re-run with nothing to do);
``add 10`` adds ten entries to it (a re-run after a few new pairs). Tiny entries make the
store's own per-entry cost visible: with real D2 matches it hides behind the matching.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import write_section  # benchmarks/ is on sys.path

SECTION = "## Crash-safe store (benchmarks/store.py)"
SIZES = (5_000, 20_000, 50_000)


def child(mode: str, n: int, out: Path) -> dict[str, float]:
    """One measurement in this process: seconds and peak RSS (MiB)."""
    import numpy as np

    from d2cli.io.h5store import H5Store

    m0 = np.random.default_rng(0).integers(-1, 40, size=40).astype(np.int16)
    s0 = np.linspace(0, 1, 40, dtype=np.float32)
    t = time.perf_counter()
    if mode == "write":
        with H5Store(out, attrs={"bench": 1}, commit_every=32, commit_seconds=10.0) as st:
            for k in range(n):
                st.add(f"img{k // 100:05d}.jpg/img{k % 100:05d}-{k}.jpg",
                       {"matches0": m0, "matching_scores0": s0})
    elif mode == "reopen":
        with H5Store(out, attrs={"bench": 1}) as st:
            assert len(st.done()) == n
    else:  # add 10
        with H5Store(out, attrs={"bench": 1}) as st:
            st.done()
            for k in range(10):
                st.add(f"new{k}.jpg/other.jpg", {"matches0": m0, "matching_scores0": s0})
    seconds = time.perf_counter() - t
    return {"seconds": seconds,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(mode: str, n: int, out: Path) -> dict[str, float]:
    p = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(out)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def table(sizes: tuple[int, ...]) -> str:
    rows = ["| entries | write (s) | entries/s | write peak RSS (MiB) | file (MB) "
            "| reopen, nothing to do (s) | add 10 entries (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            out = Path(d) / f"m{n}.h5"
            w = run("write", n, out)
            r = run("reopen", n, out)
            a = run("add", n, out)
            rows.append(f"| {n:,} | {w['seconds']:.1f} | {n / w['seconds']:,.0f} | "
                        f"{w['rss_mib']:.0f} | {out.stat().st_size / 1e6:.0f} | "
                        f"{r['seconds']:.2f} | {a['seconds']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, n, out = args.child
        print(json.dumps(child(mode, int(n), Path(out))))
        return
    text = table(tuple(int(x) for x in args.sizes.split(",")))
    print(text)
    if args.write:
        write_section(SECTION, f"{SECTION}\n\n`python benchmarks/store.py`, one run, a fresh "
                      "process per cell. " + __doc__.split("\n\n")[2].replace("\n", " ")
                      + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
