"""Featuremetric keypoint refinement: validation sweep and the final HPatches/Oxford table.

    python benchmarks/refine.py validate [--pairs 20] [--configs NAME ...]
    python benchmarks/refine.py hard [--pairs 40] [--configs NAME ...] [--kinds blur jpeg] [--still]
    python benchmarks/refine.py evaluate [--multiscale] [--work DIR]
    python benchmarks/refine.py guard-cost [--sizes 300 1000 ...]

validate: synthetic pairs from the sacre_coeur photos (a 512 crop and a random homography
of it, d2 train's ranges and photometric changes), d2cli-v1 single scale, mutual NN; MMA
of every candidate configuration. Tuning happens here only.
hard: the same, on pairs with strong photometric change and wide baselines
(benchmarks/hard_pairs.py; --kinds blur jpeg: camera degradations instead; --still: those
with a camera that hardly moved); also refinement of the verified matches only.
evaluate: HPatches v_churchill and the Oxford sequences (bark, bikes, graf, ubc), once,
with the chosen configuration: d2 unrefined / refined / COLMAP SIFT side by side, and
seconds per pair of refinement vs extraction and matching (same run, CPU, 1 thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hard_pairs import DEGRADED, random_crop  # benchmarks/ is on sys.path

from d2cli.colmap.verification import epipolar_inliers
from d2cli.device import pick_device
from d2cli.eval.hpatches import find_sequences, match_errors
from d2cli.eval.methods import PairReader, d2_method, run_methods, sift_method
from d2cli.extract import Extractor, ExtractSettings
from d2cli.images import find_images, load_rgb
from d2cli.mnn import mnn
from d2cli.refine import PatchFeatures, RefineConfig, bias_corrected, refine_pair, refine_verified
from d2cli.settings import MULTI_SCALE
from d2cli.train.augment import HomographyRange, photometric, random_homography, warp_image

ROOT = Path(__file__).resolve().parents[1]
SACRE = ROOT / "src/d2cli/data/sacre_coeur"
THRESH = (1, 3, 5, 10)
CANDIDATES: dict[str, RefineConfig] = {
    "image-t7": RefineConfig(source="image", template=7),
    "image-t11": RefineConfig(source="image", template=11),
    "conv1_2": RefineConfig(source="conv1_2"),
    "conv1_2-t5": RefineConfig(source="conv1_2", template=5, template_step=2.0),
    "conv2_2": RefineConfig(source="conv2_2"),
    "conv2_2-t3": RefineConfig(source="conv2_2", template=3, template_step=2.0),
    "conv3_3": RefineConfig(source="conv3_3"),
    "image-t11-affine": RefineConfig(source="image", template=11, affine=True),
    "conv1_2-t5-affine": RefineConfig(source="conv1_2", template=5, template_step=2.0, affine=True),
    "conv2_2-affine": RefineConfig(source="conv2_2", affine=True),
    "conv2_2-t3-affine": RefineConfig(source="conv2_2", template=3, template_step=2.0, affine=True),
    "image-t11-r8": RefineConfig(source="image", template=11, radius=8.0, max_shift=10.0),
    "image-t15-r8": RefineConfig(source="image", template=15, radius=8.0, max_shift=10.0),
    "image-t11-affine-r8": RefineConfig(source="image", template=11, affine=True, radius=8.0,
                                        max_shift=10.0),
    "image-t15-affine-r8": RefineConfig(source="image", template=15, affine=True, radius=8.0,
                                        max_shift=10.0),
    "conv1_2-t5-affine-r8": RefineConfig(source="conv1_2", template=5, template_step=2.0,
                                         affine=True, radius=8.0, max_shift=10.0),
    "image-t11-affine-r8-it2": RefineConfig(source="image", template=11, affine=True, radius=8.0,
                                            max_shift=10.0, pair_iterations=2),
    "image-t15-affine-r8-it2": RefineConfig(source="image", template=15, affine=True, radius=8.0,
                                            max_shift=10.0, pair_iterations=2),
    "image-t11-affine-r8-s0.5": RefineConfig(source="image", template=11, affine=True, radius=8.0,
                                             max_shift=10.0, min_score=0.5),
    "image-t11-affine-r8-s0.7": RefineConfig(source="image", template=11, affine=True, radius=8.0,
                                             max_shift=10.0, min_score=0.7),
    "image-t11-affine-r8-s0.8": RefineConfig(source="image", template=11, affine=True, radius=8.0,
                                             max_shift=10.0, min_score=0.8),
    "image-t15-affine-r8-s0.5": RefineConfig(source="image", template=15, affine=True,
                                             radius=8.0, max_shift=10.0, min_score=0.5),
    "image-t11-affine-r8-it2-s0.5": RefineConfig(source="image", template=11, affine=True,
                                                 radius=8.0, max_shift=10.0, min_score=0.5,
                                                 pair_iterations=2),
    "image-t11-affine-r6": RefineConfig(source="image", template=11, affine=True, radius=6.0,
                                        max_shift=8.0),
    "image-t11-affine-r8-s0.5-back1": RefineConfig(source="image", template=11, affine=True,
                                                   radius=8.0, max_shift=10.0, back_check=1.0),
    "image-t11-affine-r8-s0.5-back0.5": RefineConfig(source="image", template=11, affine=True,
                                                     radius=8.0, max_shift=10.0, back_check=0.5),
    "image-t11-affine-r8-s0.5-gain0.1": RefineConfig(source="image", template=11, affine=True,
                                                     radius=8.0, max_shift=10.0, min_gain=0.1),
    "image-t11-affine-r8-s0.7-back1": RefineConfig(source="image", template=11, affine=True,
                                                   radius=8.0, max_shift=10.0, min_score=0.7,
                                                   back_check=1.0),
    "image-t11-affine-r8-s0.6-back1": RefineConfig(source="image", template=11, affine=True,
                                                   radius=8.0, max_shift=10.0, min_score=0.6,
                                                   back_check=1.0),
    "image-t11-affine-r8-s0.7-back1-m6": RefineConfig(source="image", template=11, affine=True,
                                                      radius=8.0, max_shift=6.0, min_score=0.7,
                                                      back_check=1.0),
    "conv1_2-t5-affine-r8-back1": RefineConfig(source="conv1_2", template=5, template_step=2.0,
                                               affine=True, radius=8.0, max_shift=10.0,
                                               back_check=1.0),
}
CHOSEN = "image-t11-affine-r8-s0.5"


def mma(errors: list[np.ndarray]) -> np.ndarray:
    """MMA (%) at THRESH over pairs (the HPatches protocol: a pair without matches is 0)."""
    return 100 * np.mean([[np.mean(e <= t) for t in THRESH] for e in errors], axis=0)


def row(label: str, values: np.ndarray, extra: str = "") -> str:
    return f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + f" |{extra}"


# --------------------------------------------------------------------------- validation
def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def synthetic_pairs(n: int, seed: int = 0, crop: int = 512, max_edge: int = 800):
    """n (img0, img1, H) with H: img0 pixels -> img1 pixels, as d2 train's homography source."""
    rng = np.random.default_rng(seed)
    photos = find_images(SACRE)
    out = []
    for k in range(n):
        img, shift, img0 = random_crop(rng, photos[k % len(photos)], crop, max_edge)
        H = random_homography(rng, crop, HomographyRange())
        img1 = warp_image(img, np.linalg.inv(H @ shift), (crop, crop))
        out.append((_to8(photometric(rng, img0)), _to8(photometric(rng, img1)), H))
    return out


def validate(args: argparse.Namespace) -> None:
    ex = Extractor("d2cli-v1", ExtractSettings(), device="cpu")
    data = []
    t0 = time.perf_counter()
    for img0, img1, H in synthetic_pairs(args.pairs):
        f0, f1 = ex(img0), ex(img1)
        m, _ = mnn(torch.from_numpy(f0.descriptors.T.astype(np.float32)),
                   torch.from_numpy(f1.descriptors.T.astype(np.float32)))
        data.append((img0, img1, H, f0, f1, m.numpy()))
    print(f"{len(data)} pairs, {np.mean([len(d[5]) for d in data]):.0f} matches/pair, "
          f"extract+match {time.perf_counter() - t0:.1f} s\n")
    print("| config | MMA@1 | @3 | @5 | @10 | s/pair |\n| --- | --- | --- | --- | --- | --- |")
    base = [match_errors(f0.keypoints, f1.keypoints, m, H) for _, _, H, f0, f1, m in data]
    print(row("unrefined", mma(base), " |"))
    fix = [match_errors(bias_corrected(f0.keypoints, f0.scales, (512, 512)),
                        bias_corrected(f1.keypoints, f1.scales, (512, 512)), m, H)
           for _, _, H, f0, f1, m in data]
    print(row("unrefined + bias fix", mma(fix), " |"), flush=True)
    names = args.configs or list(CANDIDATES)
    for name in names:
        cfg = CANDIDATES[name]
        feats = PatchFeatures(cfg, pick_device(cfg.device))
        errs, t = [], time.perf_counter()
        for img0, img1, H, f0, f1, m in data:
            k0, k1 = refine_pair(img0, img1, f0.keypoints, f1.keypoints, m, cfg, feats)
            errs.append(match_errors(k0, k1, m, H))
        print(row(name, mma(errs), f" {(time.perf_counter() - t) / len(data):.2f} |"), flush=True)


def synthetic_views(n: int, views: int = 4, seed: int = 1, crop: int = 512, max_edge: int = 800):
    """n scenes of ``views`` images: a crop of a sample photo and views-1 random homographies
    of it. Returns [(images, Hs)] with Hs[k]: view 0 pixels -> view k pixels (Hs[0] = I)."""
    rng = np.random.default_rng(seed)
    photos = find_images(SACRE)
    out = []
    for k in range(n):
        img, shift, view0 = random_crop(rng, photos[(k + 3) % len(photos)], crop, max_edge)
        ims, Hs = [_to8(photometric(rng, view0))], [np.eye(3)]
        for _ in range(views - 1):
            H = random_homography(rng, crop, HomographyRange())
            ims.append(_to8(photometric(rng, warp_image(img, np.linalg.inv(H @ shift),
                                                        (crop, crop)))))
            Hs.append(H)
        out.append((ims, Hs))
    return out


def validate_tracks(args: argparse.Namespace) -> None:
    """Track refinement on synthetic multi-view scenes: the pairwise MNN matches within
    ``--verify`` px of the true homography stand in for COLMAP's verified inliers; scored
    by the errors of those matches after refining all views' keypoints."""
    from d2cli.refine.tracks import refine_tracks

    ex = Extractor("d2cli-v1", ExtractSettings(), device="cpu")
    scenes = []
    for ims, Hs in synthetic_views(args.scenes, args.views):
        fs = [ex(im) for im in ims]
        names = [f"v{k}" for k in range(len(ims))]
        matches, gt = {}, {}
        for i in range(len(ims)):
            for j in range(i + 1, len(ims)):
                m, _ = mnn(torch.from_numpy(fs[i].descriptors.T.astype(np.float32)),
                           torch.from_numpy(fs[j].descriptors.T.astype(np.float32)))
                m = m.numpy()
                H = Hs[j] @ np.linalg.inv(Hs[i])
                e = match_errors(fs[i].keypoints, fs[j].keypoints, m, H)
                matches[(names[i], names[j])] = m[e <= args.verify]
                gt[(names[i], names[j])] = H
        scenes.append((dict(zip(names, ims, strict=True)),
                       {n: f.keypoints for n, f in zip(names, fs, strict=True)}, matches, gt))
    nm = np.mean([len(m) for s in scenes for m in s[2].values()])
    print(f"{len(scenes)} scenes x {args.views} views, {nm:.0f} verified matches/pair\n")
    print("| method | MMA@1 | @3 | @5 | @10 | s/scene |\n| --- | --- | --- | --- | --- | --- |")

    def score(label, fn):
        errs, t = [], time.perf_counter()
        for ims, kps, matches, gt in scenes:
            ref = fn(ims, kps, matches)
            errs += [match_errors(ref[a], ref[b], m, gt[(a, b)]) for (a, b), m in matches.items()]
        print(row(label, mma(errs), f" {(time.perf_counter() - t) / len(scenes):.2f} |"), flush=True)

    cfg = CANDIDATES[CHOSEN]
    feats = PatchFeatures(cfg, torch.device("cpu"))
    score("unrefined", lambda ims, kps, m: kps)
    score("refine_tracks (anchored, affine, NCC >= 0.5)",
          lambda ims, kps, m: refine_tracks(ims, kps, m, cfg, feats))


# --------------------------------------------------------------------- hard validation
def _corner_error(H_est: np.ndarray | None, H: np.ndarray, size: int) -> float:
    """Mean distance (px) of the crop's corners mapped by the estimate and by the truth."""
    if H_est is None:
        return np.inf
    c = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1.0]])
    a, b = c @ H_est.T, c @ H.T
    return float(np.linalg.norm(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:], axis=1).mean())


def _homography(kp0: np.ndarray, kp1: np.ndarray, m: np.ndarray, max_error: float = 3.0):
    """LO-RANSAC homography of the matches: (H or None, inlier mask (M,))."""
    import pycolmap

    if len(m) < 4:
        return None, np.zeros(len(m), bool)
    r = pycolmap.estimate_homography_matrix(kp0[m[:, 0]].astype(np.float64),
                                            kp1[m[:, 1]].astype(np.float64),
                                            pycolmap.RANSACOptions(max_error=max_error, random_seed=0))
    if r is None:
        return None, np.zeros(len(m), bool)
    return r["H"], np.asarray(r["inlier_mask"], bool).reshape(-1)


def _hard_data(n: int, cache: Path, kinds: tuple[str, ...] | None = None, still: bool = False):
    """The hard pairs with d2cli-v1 features and MNN matches (cached: extraction dominates)."""
    from hard_pairs import STILL, hard_pairs

    if still:
        pairs = hard_pairs(n, seed=13, kinds=kinds or DEGRADED, warps=STILL)
        name = f"hard-{n}-{'-'.join(kinds or DEGRADED)}-still.npz"
    elif kinds is None:
        pairs, name = hard_pairs(n), f"hard-{n}.npz"
    else:
        pairs, name = hard_pairs(n, seed=11, kinds=kinds), f"hard-{n}-{'-'.join(kinds)}.npz"
    f = cache / name
    if f.exists():
        z = np.load(f, allow_pickle=False)
        feats = [(z[f"k0_{i}"], z[f"k1_{i}"], z[f"m_{i}"]) for i in range(n)]
    else:
        ex = Extractor("d2cli-v1", ExtractSettings(), device="cpu")
        feats, arrays = [], {}
        for i, p in enumerate(pairs):
            f0, f1 = ex(p.img0), ex(p.img1)
            m, _ = mnn(torch.from_numpy(f0.descriptors.T.astype(np.float32)),
                       torch.from_numpy(f1.descriptors.T.astype(np.float32)))
            feats.append((f0.keypoints[:, :2], f1.keypoints[:, :2], m.numpy()))
            arrays.update({f"k0_{i}": feats[-1][0], f"k1_{i}": feats[-1][1], f"m_{i}": feats[-1][2]})
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(f, **arrays)
    return [(p, *x) for p, x in zip(pairs, feats, strict=True)]


def validate_hard(args: argparse.Namespace) -> None:
    """Photometric change and wide baselines (benchmarks/hard_pairs.py): MMA of the MNN
    matches (refined where the method refines; "verified first": only those a LO-RANSAC
    fundamental matrix keeps at 4 px, as d2 eval does), and the share of pairs whose
    LO-RANSAC homography from them puts the corners within 5 / 10 px of the truth."""
    from hard_pairs import PHOTOMETRIC

    kinds = tuple(args.kinds) if args.kinds else (DEGRADED if args.still else None)
    data = _hard_data(args.pairs, Path(args.cache), kinds, args.still)
    print(f"{len(data)} pairs ({', '.join(sorted({d[0].kind for d in data}))}), "
          f"{np.mean([len(d[3]) for d in data]):.0f} MNN matches/pair\n")
    print("| method | set | MMA@1 | @3 | @5 | @10 | H within 5 px | 10 px | s/pair |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    methods: list[tuple[str, RefineConfig | None, str]] = [("unrefined", None, "")]
    for name in args.configs or [CHOSEN]:
        methods += [(name, CANDIDATES[name], "all"),
                    (f"{name}, verified first", CANDIDATES[name], "verified"),
                    (f"{name}, verify, refine, re-verify", CANDIDATES[name], "re-verify")]
    for label, cfg, order in methods:
        feats = PatchFeatures(cfg, pick_device(cfg.device)) if cfg else None
        errs, corner, pair_kinds, t = [], [], [], time.perf_counter()
        for p, k0, k1, m in data:
            if order == "re-verify":
                k0, k1 = refine_verified(p.img0, p.img1, k0, k1, m, cfg, feats)
            elif cfg is not None:
                sel = epipolar_inliers(k0, k1, m) if order == "verified" else np.ones(len(m), bool)
                k0, k1 = refine_pair(p.img0, p.img1, k0, k1, m[sel], cfg, feats)
            errs.append(match_errors(k0, k1, m, p.H))
            corner.append(_corner_error(_homography(k0, k1, m)[0], p.H, p.img0.shape[0]))
            pair_kinds.append(p.kind)
        sec = (time.perf_counter() - t) / len(data)
        corner_a, kinds_a = np.array(corner), np.array(pair_kinds)
        subsets = [("all", np.ones(len(data), bool))]
        if kinds:
            subsets += [(k, kinds_a == k) for k in kinds]
        else:
            subsets += [("photometric", np.isin(kinds_a, PHOTOMETRIC)),
                        ("viewpoint", kinds_a == "viewpoint")]
        for subset, keep in subsets:
            if not keep.any():
                continue
            solved = [100 * np.mean(corner_a[keep] <= t) for t in (5, 10)]
            e = [x for x, k in zip(errs, keep, strict=True) if k]
            print(row(f"{label} | {subset}", np.r_[mma(e), solved],
                      f" {sec:.2f} |" if subset == "all" else " |"), flush=True)


# --------------------------------------------------------------------------- evaluation
def evaluate(args: argparse.Namespace) -> None:
    cfg = CANDIDATES[args.config]
    roots = [Path(args.data) / "hpatches", Path(args.data) / "oxford"]
    settings = ExtractSettings(scales=MULTI_SCALE) if args.multiscale else ExtractSettings()
    d2 = d2_method("d2cli-v1", settings)
    feats = PatchFeatures(cfg, pick_device(cfg.device))
    print(f"refinement config {args.config}: {cfg.as_dict()}\n")
    print("| set | method | MMA@1 | @3 | @5 | @10 | matches/pair |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    cost = {"extract": 0.0, "match": 0.0, "refine": 0.0, "images": 0, "pairs": 0}
    for root in roots:
        root, seqs, _, _ = find_sequences(root)
        work = Path(args.work) / root.name
        items = [it for s in seqs for it in s.images]
        pairs = [(s.images[0].name, s.images[k].name) for s in seqs for k in range(1, 6)]
        work.mkdir(parents=True, exist_ok=True)
        runs = run_methods([d2, sift_method()], root, items, pairs, work, device="cpu")
        cost["extract"] += runs[0].seconds_extract
        cost["match"] += runs[0].seconds_match
        cost["images"] += runs[0].extracted
        with PairReader(runs[0]) as rd, PairReader(runs[1]) as rs:
            for s in seqs:
                errs: dict[str, list[np.ndarray]] = {
                    "d2 unrefined": [], "d2 + bias fix": [], "d2 refined": [],
                    "d2 refined, verified first": [],
                    "d2 refined, verify, refine, re-verify": [], "COLMAP SIFT": []}
                nm: dict[str, list[int]] = {key: [] for key in errs}
                img0 = load_rgb(s.images[0].path)
                for k in range(1, 6):
                    a, b, H = s.images[0].name, s.images[k].name, s.homographies[k - 1]
                    pd = rd.get(a, b)
                    f0, f1 = rd.ff[a], rd.ff[b]
                    errs["d2 unrefined"].append(match_errors(pd.kp0, pd.kp1, pd.matches, H))
                    errs["d2 + bias fix"].append(match_errors(
                        bias_corrected(pd.kp0, f0.scales, tuple(pd.size0)),
                        bias_corrected(pd.kp1, f1.scales, tuple(pd.size1)), pd.matches, H))
                    img1 = load_rgb(s.images[k].path)
                    t = time.perf_counter()
                    k0, k1 = refine_pair(img0, img1, pd.kp0, pd.kp1, pd.matches, cfg, feats)
                    cost["refine"] += time.perf_counter() - t
                    cost["pairs"] += 1
                    errs["d2 refined"].append(match_errors(k0, k1, pd.matches, H))
                    verified = pd.matches[epipolar_inliers(pd.kp0, pd.kp1, pd.matches)]
                    k0, k1 = refine_pair(img0, img1, pd.kp0, pd.kp1, verified, cfg, feats)
                    errs["d2 refined, verified first"].append(match_errors(k0, k1, pd.matches, H))
                    k0, k1 = refine_verified(img0, img1, pd.kp0, pd.kp1, pd.matches, cfg, feats)
                    errs["d2 refined, verify, refine, re-verify"].append(
                        match_errors(k0, k1, pd.matches, H))
                    ps = rs.get(a, b)
                    errs["COLMAP SIFT"].append(match_errors(ps.kp0, ps.kp1, ps.matches, H))
                    for key in errs:
                        if key != "COLMAP SIFT":
                            nm[key].append(len(pd.matches))
                    nm["COLMAP SIFT"].append(len(ps.matches))
                for key, e in errs.items():
                    print(row(f"{root.name}/{s.name} | {key}", mma(e), f" {np.mean(nm[key]):.0f} |"),
                          flush=True)
    print(f"\n| cost (CPU, {torch.get_num_threads()} threads) | seconds |\n| --- | --- |")
    if cost["images"]:
        print(f"| d2 extraction per image | {cost['extract'] / cost['images']:.2f} |")
        print(f"| d2 matching per pair (incl. file I/O) | {cost['match'] / cost['pairs']:.2f} |")
    else:
        print("| d2 extraction / matching | cached (use a fresh --work to time them) |")
    print(f"| refinement per pair | {cost['refine'] / max(cost['pairs'], 1):.2f} |")


def guard_cost(args: argparse.Namespace) -> None:
    """Seconds of the neighbour guard (search.neighbour_drift) against the local affine fits
    every refined pair already makes (search.local_affine), over the number of verified
    matches: both are k-nearest-neighbour fits, quadratic in the matches (cdist)."""
    from d2cli.refine.search import local_affine, neighbour_drift

    g = torch.Generator().manual_seed(0)
    print("| verified matches | neighbour guard (s) | local affine fits (s) | ratio |\n"
          "| --- | --- | --- | --- |")
    for m in args.sizes:
        x0 = torch.rand(m, 2, generator=g) * 1600
        x1 = x0 + torch.randn(m, 2, generator=g)
        moved = x1 + torch.randn(m, 2, generator=g)
        times = []
        for fn, fn_args in ((neighbour_drift, (x0, x1, moved, 12)), (local_affine, (x0, x1, 12))):
            fn(*fn_args)  # warm up
            t = time.perf_counter()
            fn(*fn_args)
            times.append(time.perf_counter() - t)
        print(f"| {m} | {times[0]:.3f} | {times[1]:.3f} | {times[0] / times[1]:.2f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--pairs", type=int, default=20)
    v.add_argument("--configs", nargs="*", choices=list(CANDIDATES))
    t = sub.add_parser("tracks")
    t.add_argument("--scenes", type=int, default=4)
    t.add_argument("--views", type=int, default=4)
    t.add_argument("--verify", type=float, default=4.0)
    h = sub.add_parser("hard")
    h.add_argument("--pairs", type=int, default=40)
    h.add_argument("--configs", nargs="*", choices=list(CANDIDATES))
    h.add_argument("--cache", default="/tmp/refine-hard")
    h.add_argument("--kinds", nargs="*", help="e.g. blur jpeg: the degradation set instead")
    h.add_argument("--still", action="store_true",
                   help="the degradations (blur, jpeg) with a camera that hardly moved")
    c = sub.add_parser("guard-cost")
    c.add_argument("--sizes", type=int, nargs="*", default=[300, 1000, 3000, 10000])
    e = sub.add_parser("evaluate")
    e.add_argument("--config", default=CHOSEN, choices=list(CANDIDATES))
    e.add_argument("--data", default="/work/shared/data")
    e.add_argument("--work", default="/tmp/refine-eval")
    e.add_argument("--multiscale", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"validate": validate, "tracks": validate_tracks, "hard": validate_hard,
     "evaluate": evaluate, "guard-cost": guard_cost}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
