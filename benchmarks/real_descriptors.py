"""Real D2 descriptors for the matching benchmarks: the sample photos, extracted once.

The bf16 screen of the matcher depends on how similarities are distributed (how many
near-ties a row has), so the matching benchmarks use the network's own descriptors of
real photos, not random vectors: the 10 Sacre Coeur sample photos, multiscale, at most
1600 px, fp32 trunk, float16 descriptors as ``d2 extract`` stores them (about 7k per photo).
Cached in ``bench-out/`` (imported by the benchmark scripts; benchmarks/ is on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src/d2cli/data/sacre_coeur"
CACHE = ROOT / "bench-out" / "sample-descriptors.npz"


def sample_descriptors() -> list[np.ndarray]:
    """(N_i, 512) float32 descriptors of each sample photo, in name order."""
    if not CACHE.exists():
        from d2cli.extract import Extractor, ExtractSettings
        from d2cli.images import find_images, load_rgb
        from d2cli.settings import MULTI_SCALE

        ext = Extractor(None, ExtractSettings(scales=MULTI_SCALE, precision="fp32"), "auto")
        descs = {p.name: ext(load_rgb(p)).descriptors.T for p in find_images(SAMPLES)}
        CACHE.parent.mkdir(exist_ok=True)
        tmp = CACHE.with_suffix(".tmp.npz")
        np.savez(tmp, **descs)
        tmp.replace(CACHE)
    with np.load(CACHE) as z:
        return [z[k].astype(np.float32) for k in sorted(z.files)]


def descriptor_sets(count: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` sets of ``n`` real descriptors each (N, 512) float32, no row in two sets.

    With n up to one photo's count, set k is photo k's first n descriptors (a real pair has
    real matches); larger sets draw disjoint random rows from all photos together.
    """
    photos = sample_descriptors()
    if count <= len(photos) and all(len(p) >= n for p in photos[:count]):
        return [torch.from_numpy(p[:n].copy()) for p in photos[:count]]
    pool = np.concatenate(photos)
    if count * n > len(pool):
        raise ValueError(f"{count} x {n} descriptors asked, the samples have {len(pool)}")
    rows = np.random.default_rng(seed).permutation(len(pool))[:count * n].reshape(count, n)
    return [torch.from_numpy(pool[r]) for r in rows]
