"""Retrieval from D2 itself (issue 25): which global descriptor chooses pairs best.

1. **Pool**: every image of ``../shared/data`` in one collection (Sacre Coeur, fountain-P11,
   HPatches v_churchill, Oxford bark / bikes / graf / ubc: 7 scenes, 51 images); ground
   truth: same scene. Each image queries all the others: recall@1/5/10 (a same-scene image
   among the first k) and mAP (all same-scene images ranked), for each candidate:

   - ``gem`` / ``mean``: GeM (p = 3) / mean of the image's D2 local descriptors (what
     ``d2 extract`` and ``d2 global`` write; no network needed later);
   - ``dense-gem``: GeM of the whole conv4_3 map of the same forward pass (needs the network);
   - ``vlad-16``: VLAD of the local descriptors on a 16-word codebook learned from the pool
     itself (k-means), power- and intra-normalised (8,192-D);
   - each with ``+ whiten``: PCA whitening with shrinkage learned from the pool
     (:func:`d2cli.retrieval.whiten`);
   - ``random``: random unit vectors (the chance level).
   Nothing is tuned: p = 3, 16 words and shrinkage 1 are the literature's / a priori values.
2. **Cost**: seconds per image of pooling next to extraction; ``d2 pairs from-retrieval``
   on N = 1,000 / 10,000 random 512-D descriptors, top-50 (time and peak RSS, growth).
3. **SfM**: ``d2 sfm`` with ``--pairs-from retrieval --num-matched K`` (K = 5, 10, 20)
   against exhaustive on fountain-P11 (ground truth) and Sacre Coeur: registered images,
   camera-centre RMS, pairs matched, time of the pair-dependent steps.

    .venv/bin/python benchmarks/retrieval.py [--data ../shared/data] [--out bench-out/retrieval]

prints the markdown of docs/benchmarks.md ("Retrieval") and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENES = {
    "sacre_coeur": "sacre_coeur/mapping",
    "fountain-P11": "strecha/fountain-P11/images",
    "v_churchill": "hpatches/v_churchill",
    "bark": "oxford/bark", "bikes": "oxford/bikes", "graf": "oxford/graf", "ubc": "oxford/ubc",
}
IMAGE_EXT = (".jpg", ".ppm", ".png")
D2 = [sys.executable, "-m", "d2cli"]


# ------------------------------------------------------------------------------ pool
def pool_images(data: Path) -> list[tuple[str, str]]:
    """(name relative to ``data``, scene) of every pool image."""
    out = []
    for scene, folder in SCENES.items():
        for f in sorted((data / folder).iterdir()):
            if f.suffix.lower() in IMAGE_EXT:
                out.append((f.relative_to(data).as_posix(), scene))
    return out


def extract_pool(data: Path, out: Path, images: list[tuple[str, str]]) -> dict[str, Any]:
    """``d2 extract`` of the whole pool into one features file (reused when present)."""
    feats = out / "feats.h5"
    listing = out / "images.txt"
    listing.write_text("".join(f"{n}\n" for n, _ in images))
    t0 = time.perf_counter()
    r = subprocess.run([*D2, "extract", "--image-list", str(listing), "--image-root", str(data),
                        "-o", str(feats), "-q", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"extract failed: {r.stderr.strip()[-500:]}")
    summary = json.loads(r.stdout)
    return {"seconds": time.perf_counter() - t0, "summary": summary}


def local_descriptors(feats: Path, names: list[str]) -> list[np.ndarray]:
    """(N_i, 512) float32 local descriptors of each image."""
    from d2cli.io.features import FeatureFile

    with FeatureFile(feats) as ff:
        return [ff.descriptors(n).T.copy() for n in names]


def dense_gem(data: Path, names: list[str]) -> tuple[np.ndarray, float, float]:
    """GeM (p = 3) of the whole conv4_3 map of each image, default extraction settings;
    (descriptors, seconds of the forward passes, seconds of the pooling)."""
    import torch

    from d2cli.extract import Extractor
    from d2cli.images import load_rgb

    ex = Extractor(device="cpu")
    out, t_net, t_pool = [], 0.0, 0.0
    with torch.no_grad():
        for n in names:
            x, _, _ = ex.prepare(load_rgb(data / n))
            t = time.perf_counter()
            d = ex._trunk(torch.from_numpy(x)[None])[0]
            t_net += time.perf_counter() - t
            t = time.perf_counter()
            g = d.float().clamp_(min=0).pow_(3).mean((1, 2)).pow_(1 / 3)
            t_pool += time.perf_counter() - t
            out.append(g.numpy())
    return np.stack(out), t_net, t_pool


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """k-means++-free Lloyd iterations from k random samples: (k, D) centres."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(x @ c.T - 0.5 * (c * c).sum(1), axis=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


def vlad(desc: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """VLAD (Jegou et al.) of (N, D) descriptors: residual sums per word, signed square
    root, intra-normalisation, concatenation: (k * D,)."""
    from d2cli.retrieval import _unit

    k, dim = centres.shape
    v = np.zeros((k, dim), np.float32)
    if len(desc):
        assign = np.argmax(desc @ centres.T - 0.5 * (centres * centres).sum(1), axis=1)
        for j in range(k):
            m = desc[assign == j]
            if len(m):
                v[j] = (m - centres[j]).sum(0)
    v = np.sign(v) * np.sqrt(np.abs(v))
    return _unit(_unit(v).reshape(1, -1))[0]


def rank_metrics(desc: np.ndarray, scenes: list[str]) -> dict[str, float]:
    """Each image queries all others by cosine similarity: recall@1/5/10 and mAP."""
    from d2cli.retrieval import _unit

    u = _unit(desc.astype(np.float32))
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    lab = np.array(scenes)
    rec = {1: [], 5: [], 10: []}
    aps = []
    for i in range(len(u)):
        order = np.argsort(-sim[i], kind="stable")[:-1]  # the query itself is last
        rel = lab[order] == lab[i]
        for k in rec:
            rec[k].append(bool(rel[:k].any()))
        hits = np.flatnonzero(rel)
        aps.append(float(np.mean((np.arange(len(hits)) + 1) / (hits + 1))) if len(hits) else 0.0)
    return {**{f"recall@{k}": float(np.mean(v)) for k, v in rec.items()}, "mAP": float(np.mean(aps))}


def pool_benchmark(data: Path, out: Path) -> dict[str, Any]:
    from d2cli.retrieval import pooled, whiten

    images = pool_images(data)
    names, scenes = [n for n, _ in images], [s for _, s in images]
    ext = extract_pool(data, out, images)
    locals_ = local_descriptors(out / "feats.h5", names)
    t = time.perf_counter()
    gem = np.stack([pooled(d.T, "gem") for d in locals_])
    t_gem = time.perf_counter() - t
    mean = np.stack([pooled(d.T, "mean") for d in locals_])
    dense, t_net, t_dense_pool = dense_gem(data, names)
    sample = np.concatenate(locals_)
    sample = sample[np.random.default_rng(0).choice(len(sample), min(50_000, len(sample)),
                                                    replace=False)]
    centres = kmeans(sample, 16)
    vl = np.stack([vlad(d, centres) for d in locals_])
    rnd = np.random.default_rng(0).standard_normal((len(names), 512)).astype(np.float32)
    cands: dict[str, np.ndarray] = {"gem (local)": gem, "mean (local)": mean,
                                    "dense-gem (conv4_3 map)": dense, "vlad-16 (local)": vl}
    rows = {}
    for label, x in cands.items():
        rows[label] = rank_metrics(x, scenes)
        rows[label + " + whiten"] = rank_metrics(whiten(x), scenes)
    rows["random"] = rank_metrics(rnd, scenes)
    n_img = len(names)
    return {"images": n_img, "scenes": {s: scenes.count(s) for s in SCENES},
            "rows": rows, "keypoints_mean": float(np.mean([len(d) for d in locals_])),
            "cost": {"extract_s_per_image": ext["seconds"] / n_img,
                     "extract_job_s_per_image": ext["summary"].get("seconds", 0) / n_img,
                     "gem_local_s_per_image": t_gem / n_img,
                     "trunk_s_per_image": t_net / n_img,
                     "dense_gem_pool_s_per_image": t_dense_pool / n_img}}


# ------------------------------------------------------------------------------ cost
def retrieval_cost(out: Path, sizes: tuple[int, ...] = (1000, 10000), k: int = 50
                   ) -> list[dict[str, Any]]:
    """``d2 pairs from-retrieval`` top-k on N random 512-D descriptors (hloc layout)."""
    import h5py

    rows = []
    for n in sizes:
        path = out / f"global-{n}.h5"
        if not path.is_file():
            x = np.random.default_rng(n).standard_normal((n, 512)).astype(np.float32)
            with h5py.File(path, "w") as f:
                for i in range(n):
                    f.create_dataset(f"im{i:06d}.jpg/global_descriptor", data=x[i])
        pairs = out / f"pairs-{n}.txt"
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from scale import run_process  # a small launcher: the child's own peak RSS

        usage, _ = run_process([*D2, "pairs", "from-retrieval", "-d", str(path), "-k", str(k),
                                "-o", str(pairs), "--json"], out, out / "logs" / f"pairs-{n}")
        rows.append({"images": n, "k": k, "wall_s": usage.wall, "cpu_s": usage.user + usage.sys,
                     "max_rss_mib": usage.maxrss_kib / 1024, "rc": usage.rc,
                     "pairs": sum(1 for _ in open(pairs)) if pairs.is_file() else 0})
    return rows


# ------------------------------------------------------------------------------ sfm
def sfm_benchmark(data: Path, out: Path, ks: tuple[int, ...] = (5, 10, 20)) -> list[dict]:
    """``d2 sfm`` with retrieval pairs against exhaustive, on the same features."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pycolmap
    from sfm import evaluate, read_strecha_cameras

    from d2cli.pairs import PairStrategy
    from d2cli.settings import MapSettings
    from d2cli.sfm import SfmSettings, sfm

    rows = []
    for scene, folder in (("fountain-P11", "strecha/fountain-P11/images"),
                          ("sacre_coeur", "sacre_coeur/mapping")):
        images = data / folder
        gt = (read_strecha_cameras(data / "strecha/fountain-P11/gt_dense_cameras")
              if scene == "fountain-P11" else None)
        base = out / "sfm" / scene / "exhaustive"
        for label, strategy in [("exhaustive", PairStrategy("exhaustive"))] + [
                (f"retrieval K={k}", PairStrategy("retrieval", num_matched=k)) for k in ks]:
            work = out / "sfm" / scene / label.replace(" ", "-").replace("=", "")
            if work != base and (base / "feats.h5").is_file() and not (work / "feats.h5").is_file():
                work.mkdir(parents=True, exist_ok=True)
                shutil.copy(base / "feats.h5", work / "feats.h5")  # same features
            t0 = time.perf_counter()
            r = sfm(images, work, SfmSettings(pairs=strategy, mapping=MapSettings(num_threads=2)),
                    device="cpu")
            wall = time.perf_counter() - t0
            rec = pycolmap.Reconstruction(work / "sparse")
            row = {"scene": scene, "pairs": label, "images": r.steps["extract"]["images"],
                   "pairs_matched": r.steps["pairs"]["pairs"],
                   "registered": rec.num_reg_images(),
                   "seconds_after_extract": sum(r.steps[s].get("seconds", 0) for s in
                                                ("match", "import", "reconstruct")
                                                if s in r.steps),
                   "wall_s": wall}
            if gt is not None:
                row.update(evaluate(rec, gt))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ------------------------------------------------------------------------------ tables
def tables(res: dict[str, Any]) -> str:
    p = res["pool"]
    lines = ["## Retrieval (benchmarks/retrieval.py)", "",
             f"`python benchmarks/retrieval.py`, one run. Pool: {p['images']} images of "
             f"{len(p['scenes'])} scenes ({', '.join(f'{s} {c}' for s, c in p['scenes'].items())}), "
             f"default `d2 extract` ({p['keypoints_mean']:.0f} keypoints per image on average); "
             "each image queries all the others, ground truth = same scene. *recall@k*: a "
             "same-scene image among the first k; *mAP*: mean average precision over all "
             "same-scene images. Nothing was tuned (GeM p = 3, 16 VLAD words, whitening "
             "shrinkage 1, all chosen before the run).", "",
             "| global descriptor | recall@1 | recall@5 | recall@10 | mAP |",
             "|---|---:|---:|---:|---:|"]
    for label, m in p["rows"].items():
        lines.append(f"| {label} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | "
                     f"{m['recall@10']:.3f} | {m['mAP']:.3f} |")
    c = p["cost"]
    lines += ["", "Cost per image (same run): "
              f"extraction (the job) {c['extract_job_s_per_image']:.3f} s; "
              f"GeM of the local descriptors {1e3 * c['gem_local_s_per_image']:.2f} ms "
              f"({100 * c['gem_local_s_per_image'] / c['extract_job_s_per_image']:.2f} % of "
              f"extraction); dense GeM of the conv4_3 map "
              f"{1e3 * c['dense_gem_pool_s_per_image']:.1f} ms "
              f"({100 * c['dense_gem_pool_s_per_image'] / c['extract_job_s_per_image']:.1f} %; "
              f"trunk alone {c['trunk_s_per_image']:.3f} s).", ""]
    lines += ["`d2 pairs from-retrieval -k 50` on N random 512-D descriptors (one process "
              "each; blocked products, 1,024 queries at a time):", "",
              "| N | pairs | wall (s) | CPU (s) | peak RSS (MiB) |", "|---:|---:|---:|---:|---:|"]
    for r in res["cost"]:
        lines.append(f"| {r['images']:,} | {r['pairs']:,} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                     f"{r['max_rss_mib']:.0f} |")
    lines += ["", "`d2 sfm` with retrieval pairs (d2's own `gem` descriptors) against exhaustive, "
              "same features (copied), incremental mapper, 2 threads. *after extract*: "
              "match + import + reconstruct seconds.", "",
              "| scene | pairs | pairs matched | registered | centre RMS / extent | "
              "after extract (s) |", "|---|---|---:|---:|---:|---:|"]
    for r in res["sfm"]:
        frac = f"{100 * r['rms_fraction']:.3f} %" if "rms_fraction" in r else "–"
        lines.append(f"| {r['scene']} | {r['pairs']} | {r['pairs_matched']} | "
                     f"{r['registered']}/{r['images']} | {frac} | {r['seconds_after_extract']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "retrieval")
    ap.add_argument("--skip-sfm", action="store_true",
                    help="keep the SfM rows of the last run (its work folders are done)")
    ap.add_argument("--write", action="store_true", help="put the section in docs/benchmarks.md")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"pool": pool_benchmark(args.data, args.out)}
    print(json.dumps(res["pool"]["rows"], indent=1), flush=True)
    res["cost"] = retrieval_cost(args.out)
    old = args.out / "results.json"
    if args.skip_sfm:  # keep the rows of the last run that had them
        res["sfm"] = json.loads(old.read_text()).get("sfm", []) if old.is_file() else []
    else:
        res["sfm"] = sfm_benchmark(args.data, args.out)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    text = tables(res)
    print(text)
    if args.write:
        from docs_section import write_section

        write_section("## Retrieval (benchmarks/retrieval.py)", text + "\n")


if __name__ == "__main__":
    main()
