"""Time and peak memory of pairs files and track building at scale (issue 24).

    python benchmarks/pairs_tracks_memory.py tracks [--images 1000 --keypoints 2000 --pairs 20 --matches 500]
    python benchmarks/pairs_tracks_memory.py pairs [--names 2000]

- ``tracks``: :func:`d2cli.refine.tracks.build_tracks` on a synthetic match graph shaped
  like an SfM scene: image ``i`` sees ``keypoints`` of a window of world points around
  ``i``, is paired with its ``pairs / 2`` next images (``pairs`` pairs per image in all)
  and each pair has up to ``matches`` matches of which 2 % are wrong (they make the
  conflicting and too-large tracks of a real graph).
- ``pairs``: ``d2 pairs exhaustive`` on ``names`` names (an image list), then
  :func:`d2cli.io.pairs.read_pairs` of the file it wrote, each in a fresh process.

Each figure is wall seconds and peak resident memory (``ru_maxrss``): of the ``d2``
process, or what the measured call added to its process's peak so far.
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

import numpy as np


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_graph(images: int, keypoints: int, pairs: int, matches: int, seed: int = 0
                    ) -> tuple[dict[str, int], dict[tuple[str, str], np.ndarray]]:
    """Keypoint counts (name -> N) and matches ((a, b) -> (M, 2) int64) of an SfM-like scene."""
    rng = np.random.default_rng(seed)
    step = max(1, keypoints // (pairs + 1))  # neighbours share most of their points
    world = images * step + 2 * keypoints
    seen = []  # per image: the world point of each keypoint, (N,)
    for i in range(images):
        window = np.arange(i * step, i * step + 2 * keypoints) % world
        seen.append(rng.permutation(rng.choice(window, keypoints, replace=False)))
    names = [f"im{i:05d}.jpg" for i in range(images)]
    out = {}
    for i in range(images):
        for j in range(i + 1, min(images, i + 1 + pairs // 2)):
            common, ia, ib = np.intersect1d(seen[i], seen[j], return_indices=True)
            keep = rng.permutation(len(common))[:matches]
            m = np.stack([ia[keep], ib[keep]], 1)
            wrong = max(1, len(m) // 50)
            m[:wrong, 1] = rng.integers(0, keypoints, wrong)
            out[(names[i], names[j])] = m.astype(np.int64)
    return dict.fromkeys(names, keypoints), out


def run_tracks(args: argparse.Namespace) -> dict[str, object]:
    """Build the graph, then time build_tracks on it (in this process)."""
    from d2cli.refine.tracks import build_tracks

    counts, matches = synthetic_graph(args.images, args.keypoints, args.pairs, args.matches)
    base = peak_mib()
    t = time.perf_counter()
    tr = build_tracks(counts, matches)
    sec = time.perf_counter() - t
    return {"images": len(counts), "keypoints": sum(counts.values()), "pairs": len(matches),
            "matches": int(sum(len(m) for m in matches.values())), "seconds": round(sec, 2),
            "added_peak_mib": round(peak_mib() - base), "tracks": tr.count,
            "conflicting": tr.conflicting, "too_large": tr.too_large}


def run_read(path: str) -> dict[str, object]:
    """read_pairs of ``path`` in this (fresh) process."""
    from d2cli.io.pairs import read_pairs

    base = peak_mib()
    t = time.perf_counter()
    n = len(read_pairs(path))
    return {"pairs": n, "seconds": round(time.perf_counter() - t, 2),
            "added_peak_mib": round(peak_mib() - base), "peak_mib": round(peak_mib())}


def run_pairs(args: argparse.Namespace) -> dict[str, object]:
    """``d2 pairs exhaustive`` then read_pairs, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        names = Path(tmp) / "names.txt"
        names.write_text("".join(f"images/{i:06d}.jpg\n" for i in range(args.names)))
        out = Path(tmp) / "pairs.txt"
        d2 = Path(sys.executable).with_name("d2")
        t = time.perf_counter()
        p = subprocess.run([str(d2), "pairs", "exhaustive", "--image-list", str(names), "-o",
                            str(out)], capture_output=True, text=True, check=True)
        sec = time.perf_counter() - t
        # RUSAGE_CHILDREN: the largest peak of the waited-for children (d2 is the only one)
        write = {"names": args.names, "seconds": round(sec, 2),
                 "peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                 "said": p.stdout.strip()}
        r = subprocess.run([sys.executable, __file__, "_read", str(out)], capture_output=True,
                           text=True, check=True)
        return {"d2 pairs exhaustive": write, "read_pairs": json.loads(r.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tracks")
    t.add_argument("--images", type=int, default=1000)
    t.add_argument("--keypoints", type=int, default=2000)
    t.add_argument("--pairs", type=int, default=20, help="pairs per image")
    t.add_argument("--matches", type=int, default=500, help="matches per pair (at most)")
    p = sub.add_parser("pairs")
    p.add_argument("--names", type=int, default=2000)
    r = sub.add_parser("_read")  # internal: read_pairs in a fresh process
    r.add_argument("path")
    args = ap.parse_args()
    if args.what == "tracks":
        print(json.dumps(run_tracks(args)))
    elif args.what == "pairs":
        print(json.dumps(run_pairs(args), indent=1))
    else:
        print(json.dumps(run_read(args.path)))


if __name__ == "__main__":
    main()
