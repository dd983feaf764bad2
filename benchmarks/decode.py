"""Decoding a huge JPEG for extraction: ``--decode full`` (reference) vs ``reduced``.

    python benchmarks/decode.py [--megapixels 108] [--max-edge 1600]

Makes a JPEG of the given size from a sample photo (upscaled, quality 90), then in a fresh
process per mode decodes it and makes the network input exactly as ``d2 extract`` does
(``--decode full``: every pixel, then the reference resize; ``reduced``: libjpeg's DCT
scaling to the smallest 1/2^k size still at least the network input, then the same
resize) and reports the peak resident memory of that process, the time, and how far the
two network inputs differ (mean absolute difference, grey levels 0-255), same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "src/d2cli/data/sacre_coeur/02928139_3448003521.jpg"

CHILD = r"""
import json, resource, sys, time
import numpy as np
from d2cli.images import (load_rgb, load_rgb_reduced, network_input_size, read_image_size,
                          resize_for_network)
path, mode, max_edge = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "reduced":
    rgb, _ = load_rgb_reduced(path, network_input_size(*read_image_size(path), max_edge, 2800), 0)
else:
    rgb = load_rgb(path, 0)
x = resize_for_network(rgb, max_edge, 2800).image
sec = time.perf_counter() - t
np.save(sys.argv[4], x.astype(np.float32))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "decoded": list(rgb.shape[:2]), "input": list(x.shape[:2]),
                  "seconds": sec, "peak_mib": peak / 1024, "import_mib": base / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megapixels", type=float, default=108)
    ap.add_argument("--max-edge", type=int, default=1600)
    args = ap.parse_args()
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        w = int((args.megapixels * 1e6 * 4 / 3) ** 0.5)
        h = int(w * 3 / 4)
        path = Path(tmp) / "huge.jpg"
        Image.open(PHOTO).convert("RGB").resize((w, h), Image.BICUBIC).save(path, quality=90)
        rows = []
        for mode in ("full", "reduced"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode,
                                  str(args.max_edge), str(Path(tmp) / f"{mode}.npy")],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout))
        a, b = (np.load(Path(tmp) / f"{m}.npy") for m in ("full", "reduced"))
        diff = float(np.abs(a - b).mean()) if a.shape == b.shape else float("nan")
    print(f"{w}x{h} JPEG ({w * h / 1e6:.0f} MP), network input max edge {args.max_edge}\n")
    print("| decode | decoded (H x W) | network input | peak memory | time |\n"
          "| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['decoded'][0]} x {r['decoded'][1]} | {r['input'][0]} x "
              f"{r['input'][1]} | {r['peak_mib']:.0f} MiB | {r['seconds']:.2f} s |")
    print(f"\nnetwork inputs differ by {diff:.2f} grey levels on average "
          f"(peak memory includes {rows[0]['import_mib']:.0f} MiB of imports)")


if __name__ == "__main__":
    main()
