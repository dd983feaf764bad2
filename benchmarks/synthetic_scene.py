"""A synthetic multi-view scene with known cameras, written as real d2cli files.

A street survey: cameras move along a gently curving street (positions along a sine curve,
the height going up and down like a drone's or a sloping street's) and look sideways at a
row of buildings, with yaw, pitch and roll jitter. The 3D points are real structure with
depth variation: facades (each building set back by its own amount, windows recessed),
the street surface in front of them, and clutter (cars, poles) at random depths between.

Each 3D point has one 512-D descriptor (post-ReLU, L2-normalised like D2-Net's; points
share one of a few hundred "textures", as repeated windows do); each observation adds its
own noise, so that mutual nearest neighbours make real mistakes (about 60-85 % of the
matches of neighbouring views are correct with the defaults). A keypoint is the projection
of a visible point (in front of the camera, inside the image, detected with probability
``detect_prob``) with Gaussian sub-pixel noise; distractor keypoints with random
descriptors are added to every image.

Outputs of :func:`generate_scene` (one folder)::

    feats.h5          database images "db/000000.jpg" ... (d2cli features file, hloc layout:
                      keypoints, descriptors (512, N) float16, scores, scales, image_size)
    feats-query.h5    the held-back query images "query/000000.jpg" ..., same format
    global.h5         a global descriptor per image (hloc layout, for d2 pairs from-retrieval):
                      the sum of its keypoint descriptors minus their expected mean
    truth.h5          <name>/point_ids (N,) int64: the 3D point of every keypoint, -1 distractor
    cameras.json      ground truth: intrinsics (COLMAP PINHOLE, pixel-centre convention) and,
                      per image, R (world-to-camera), t, centre, query flag
    queries.txt       "name PINHOLE W H fx fy cx cy" per query (d2 localize --queries)
    gt-model/         the ground-truth cameras as a COLMAP text model (no points), for
                      d2 pairs from-poses

Generation is deterministic given the seed, linear in the number of images, and memory
bounded: points are made in blocks along the street from their own seeds, only the blocks
near the current camera are kept, and images are written one by one through d2cli's own
crash-safe writer (``H5Store``). The scene of N images is a prefix of the scene of more.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import d2cli
from d2cli.io.h5store import H5Store

DIM = 512
BLOCK = 8.0  # metres of street per block of 3D points
POINT_KINDS = (0.6, 0.25, 0.15)  # facade, street surface, clutter
BUILDING = 12.0  # metres of facade per building
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class SceneConfig:
    """Everything that decides the scene (recorded in the features files' settings)."""

    num_images: int = 100  # database images
    keypoints: int = 1000  # target keypoints per image, distractors included
    outlier_fraction: float = 0.25  # share of distractor keypoints
    detect_prob: float = 0.8  # probability that a visible point becomes a keypoint
    width: int = 640
    height: int = 480
    focal: float = 500.0  # pixels (PINHOLE fx = fy)
    spacing: float = 0.6  # metres between consecutive database cameras
    facade_distance: float = 10.0  # metres from the street's centre line to the facades
    curve_amplitude: float = 4.0  # metres, lateral sine of the street
    curve_period: float = 150.0  # metres
    height_amplitude: float = 0.8  # metres, camera height sine around 2.2 m
    height_period: float = 47.0
    yaw_jitter: float = 10.0  # degrees, uniform +-
    pitch: float = 3.0  # degrees up, +- pitch_jitter
    pitch_jitter: float = 3.0
    roll_jitter: float = 2.0
    pixel_noise: float = 0.5  # std of keypoint noise, pixels
    desc_noise: float = 1.5  # std of per-observation descriptor noise (the point's is ~1)
    texture_classes: int = 256
    texture_weight: float = 0.5  # share of a point's descriptor from its texture class
    query_every: int = 10  # one held-back query per this many database images (0: none)
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The features files' ``settings``: how features are made, not how many images."""
        d = asdict(self)
        del d["num_images"]
        d["generator"] = "benchmarks/synthetic_scene.py"
        d["descriptor_dtype"] = "float16"
        return d

    @property
    def num_queries(self) -> int:
        return self.num_images // self.query_every if self.query_every > 0 else 0


@dataclass
class CameraGT:
    """One ground-truth camera: ``x_cam = R @ x_world + t``; ``centre = -R.T @ t``."""

    name: str
    R: np.ndarray  # (3, 3) float64, world-to-camera
    t: np.ndarray  # (3,) float64
    centre: np.ndarray  # (3,) float64, world
    s: float  # position along the street (metres), decides which points are near
    query: bool = False


@dataclass
class Scene:
    """What :func:`generate_scene` wrote, and the ground truth."""

    folder: Path
    config: SceneConfig
    cameras: dict[str, CameraGT]  # name -> camera, database images then queries
    db_names: list[str]
    query_names: list[str]
    intrinsics: tuple[float, float, float, float]  # PINHOLE fx, fy, cx, cy (COLMAP pixels)
    extent: float  # largest distance between two database camera centres
    keypoints_mean: float = 0.0
    points_per_metre: float = 0.0
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def camera_params(self) -> str:
        """``--camera-params`` of ``d2 colmap-import --camera-model PINHOLE``."""
        return ",".join(f"{v:g}" for v in self.intrinsics)

    def centres(self, names: Sequence[str]) -> np.ndarray:
        """(len(names), 3) ground-truth camera centres."""
        return np.stack([self.cameras[n].centre for n in names])


# ----------------------------------------------------------------------------- geometry
def street(s: np.ndarray, config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centre line at path parameters ``s`` (M,): (points (M, 3), unit left normals (M, 3))."""
    s = np.asarray(s, dtype=np.float64)
    w = 2 * np.pi / config.curve_period
    lateral = config.curve_amplitude * np.sin(w * s)
    slope = config.curve_amplitude * w * np.cos(w * s)
    norm = np.sqrt(1 + slope ** 2)
    base = np.stack([s, lateral, np.zeros_like(s)], 1)
    normal = np.stack([-slope / norm, 1 / norm, np.zeros_like(s)], 1)
    return base, normal


def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(M, 3, 3) world-to-camera rotations of cameras looking along heading ``yaw`` (radians
    from +x in the ground plane), tilted up by ``pitch`` and rolled by ``roll``; camera axes
    x right, y down, z forward (COLMAP)."""
    fwd = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], 1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], 1)
    down = np.cross(fwd, right)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, fwd], 1)  # rows: camera axes in world coordinates


def make_cameras(config: SceneConfig, query: bool = False) -> list[CameraGT]:
    """The database cameras (or the held-back queries, half-way between database cameras,
    with their own jitter), in street order."""
    if query:
        idx = np.arange(config.num_queries) * config.query_every
        s = (idx + 0.5) * config.spacing
        prefix, stream = "query", 3
    else:
        idx = np.arange(config.num_images)
        s = idx * config.spacing
        prefix, stream = "db", 2
    jit = np.array([np.random.default_rng([config.seed, stream, int(i)]).uniform(-1, 1, 4)
                    for i in idx]).reshape(-1, 4)
    base, normal = street(s, config)
    heading = np.arctan2(normal[:, 1], normal[:, 0]) + np.radians(config.yaw_jitter) * jit[:, 0]
    pitch = np.radians(config.pitch + config.pitch_jitter * jit[:, 1])
    roll = np.radians(config.roll_jitter * jit[:, 2])
    height = 2.2 + config.height_amplitude * np.sin(2 * np.pi * s / config.height_period)
    centre = base + np.stack([np.zeros_like(s), np.zeros_like(s), height + 0.2 * jit[:, 3]], 1)
    rot = _rotation(heading, pitch, roll)
    t = -np.einsum("mij,mj->mi", rot, centre)
    return [CameraGT(f"{prefix}/{int(i):06d}.jpg", rot[k], t[k], centre[k], float(s[k]), query)
            for k, i in enumerate(idx)]


@dataclass
class PointBlock:
    """The 3D points of one block of street (``s`` in [b * BLOCK, (b + 1) * BLOCK))."""

    xyz: np.ndarray  # (M, 3) float64
    ids: np.ndarray  # (M,) int64, unique over the scene
    raw: np.ndarray | None  # (M, DIM) float32, the points' descriptors before ReLU


def texture_centres(config: SceneConfig) -> np.ndarray:
    """(texture_classes, DIM) float32 unit-variance texture descriptors (before ReLU)."""
    rng = np.random.default_rng([config.seed, 99])
    return rng.standard_normal((config.texture_classes, DIM), dtype=np.float32)


def make_block(b: int, density: float, config: SceneConfig, centres: np.ndarray | None) -> PointBlock:
    """The points of block ``b`` (``density`` points per metre of street), from the block's
    own seed: any block can be made alone. Without ``centres``, no descriptors."""
    rng = np.random.default_rng([config.seed, 1, b + (1 << 24)])
    n = int(round(density * BLOCK))
    s = (b + rng.random(n)) * BLOCK
    kind = rng.choice(3, size=n, p=POINT_KINDS)
    building = np.floor(s / BUILDING)
    setback = 2.0 * ((building * GOLDEN) % 1.0)
    top = 7.0 + 8.0 * ((building * GOLDEN ** 2) % 1.0)
    u = rng.random((n, 3))
    facade_z = u[:, 0] * top
    window = ((s % 1.5) < 0.9) & ((facade_z % 3.0) > 1.0) & ((facade_z % 3.0) < 2.2)
    off = np.where(kind == 0, config.facade_distance + setback + 0.4 * window
                   + 0.03 * rng.standard_normal(n),
                   np.where(kind == 1, 0.5 + u[:, 1] * (config.facade_distance + setback - 0.5),
                            2.0 + u[:, 1] * (config.facade_distance - 3.0)))
    z = np.where(kind == 0, facade_z,
                 np.where(kind == 1, 0.02 * rng.standard_normal(n), 3.0 * u[:, 2]))
    base, normal = street(s, config)
    xyz = base + off[:, None] * normal
    xyz[:, 2] = z
    ids = (np.int64(b + (1 << 24)) << np.int64(24)) + np.arange(n, dtype=np.int64)
    raw = None
    if centres is not None:
        w = config.texture_weight
        cls = rng.integers(len(centres), size=n)
        raw = w * centres[cls] + math.sqrt(1 - w * w) * rng.standard_normal((n, DIM), dtype=np.float32)
    return PointBlock(xyz, ids, raw)


def _window(config: SceneConfig) -> float:
    """Metres along the street within which a camera can see a point."""
    half_fov = math.atan(config.width / 2 / config.focal)
    reach = config.facade_distance + 3.0 + config.curve_amplitude
    angle = min(half_fov + math.radians(config.yaw_jitter + config.roll_jitter + 5), math.radians(80))
    return reach * math.tan(angle) + 4.0


class BlockCache:
    """The blocks near the current camera; cameras come in street order, so each block is
    made once and memory stays bounded (blocks behind the camera are dropped)."""

    def __init__(self, density: float, config: SceneConfig, centres: np.ndarray | None) -> None:
        self.density, self.config, self.centres = density, config, centres
        self.blocks: dict[int, PointBlock] = {}
        self.window = _window(config)

    def near(self, s: float) -> PointBlock:
        lo, hi = math.floor((s - self.window) / BLOCK), math.floor((s + self.window) / BLOCK)
        for b in [b for b in self.blocks if b < lo or b > hi]:
            del self.blocks[b]
        for b in range(lo, hi + 1):
            if b not in self.blocks:
                self.blocks[b] = make_block(b, self.density, self.config, self.centres)
        parts = [self.blocks[b] for b in range(lo, hi + 1)]
        raw = None if self.centres is None else np.concatenate([p.raw for p in parts])
        return PointBlock(np.concatenate([p.xyz for p in parts]),
                          np.concatenate([p.ids for p in parts]), raw)


def project(cam: CameraGT, xyz: np.ndarray, config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uv (M, 2) in COLMAP pixels (top-left pixel centre at 0.5), visible (M,) bool): in
    front of the camera and inside the image. ``xyz``: (M, 3) world points."""
    xc = xyz @ cam.R.T + cam.t
    z = xc[:, 2]
    front = z > 0.3
    zs = np.where(front, z, 1.0)
    cx, cy = config.width / 2, config.height / 2
    uv = np.stack([config.focal * xc[:, 0] / zs + cx, config.focal * xc[:, 1] / zs + cy], 1)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < config.width) & (uv[:, 1] >= 0) & (uv[:, 1] < config.height)
    return uv, front & inside


# ----------------------------------------------------------------------------- observations
@dataclass
class Observation:
    """One image's features: hloc keypoints (x, y; pixel centre at integer coordinates),
    (DIM, N) float16 descriptors, and the true 3D point of every keypoint (-1: distractor)."""

    keypoints: np.ndarray  # (N, 2) float32
    descriptors: np.ndarray  # (DIM, N) float16
    point_ids: np.ndarray  # (N,) int64

    def arrays(self, config: SceneConfig) -> dict[str, np.ndarray]:
        """The features-file entry (``d2cli.io.features`` layout)."""
        n = len(self.keypoints)
        rng = np.random.default_rng(n)
        return {"keypoints": self.keypoints, "descriptors": self.descriptors,
                "scores": rng.uniform(0.5, 1.0, n).astype(np.float32),
                "scales": np.ones(n, np.float32),
                "image_size": np.array([config.width, config.height], np.int64)}


def _normalise(x: np.ndarray) -> np.ndarray:
    np.maximum(x, 0, out=x)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    return x


def observe(cam: CameraGT, points: PointBlock, config: SceneConfig, centres: np.ndarray,
            index: int) -> Observation:
    """The keypoints of one camera: visible points detected with ``detect_prob``, with pixel
    and descriptor noise, plus distractors; in a random order. ``index``: the image's seed."""
    rng = np.random.default_rng([config.seed, 4 if cam.query else 5, index])
    uv, visible = project(cam, points.xyz, config)
    uv = uv + config.pixel_noise * rng.standard_normal(uv.shape)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < config.width) & (uv[:, 1] >= 0) & (uv[:, 1] < config.height)
    keep = np.flatnonzero(visible & inside & (rng.random(len(uv)) < config.detect_prob))
    assert points.raw is not None
    desc = points.raw[keep] + config.desc_noise * rng.standard_normal((len(keep), DIM), dtype=np.float32)
    n_out = int(round(config.outlier_fraction * config.keypoints))
    w = config.texture_weight
    junk = (w * centres[rng.integers(len(centres), size=n_out)]
            + math.sqrt(1 - w * w + config.desc_noise ** 2)
            * rng.standard_normal((n_out, DIM), dtype=np.float32))
    xy = np.concatenate([uv[keep], rng.uniform((0, 0), (config.width, config.height), (n_out, 2))])
    desc = _normalise(np.concatenate([desc, junk]))
    ids = np.concatenate([points.ids[keep], np.full(n_out, -1, np.int64)])
    order = rng.permutation(len(ids))
    return Observation(keypoints=(xy[order] - 0.5).astype(np.float32),  # COLMAP -> hloc pixels
                       descriptors=np.ascontiguousarray(desc[order].T.astype(np.float16)),
                       point_ids=ids[order])


def calibrate_density(config: SceneConfig, cameras: int = 8) -> float:
    """Points per metre of street so that an image gets about ``keypoints`` keypoints: the
    visible points of a few cameras of a pilot scene (deterministic), scaled."""
    pilot = 100.0
    probe = make_cameras(replace(config, num_images=cameras * 5))[::5]
    cache = BlockCache(pilot, config, None)
    seen = [int(project(c, cache.near(c.s).xyz, config)[1].sum()) for c in probe]
    want = config.keypoints * (1 - config.outlier_fraction) / config.detect_prob
    return pilot * want / max(float(np.mean(seen)), 1.0)


def mean_descriptor(config: SceneConfig, samples: int = 4096) -> np.ndarray:
    """(DIM,) expected descriptor of a keypoint (for centring the global descriptors)."""
    centres = texture_centres(config)
    rng = np.random.default_rng([config.seed, 98])
    w = config.texture_weight
    x = (w * centres[rng.integers(len(centres), size=samples)]
         + math.sqrt(1 - w * w + config.desc_noise ** 2)
         * rng.standard_normal((samples, DIM), dtype=np.float32))
    return _normalise(x).mean(0)


# ----------------------------------------------------------------------------- writing
def features_attrs(config: SceneConfig) -> dict[str, Any]:
    """File attributes as ``d2 extract`` records them (model, model_sha256, settings, ...)."""
    settings = config.settings()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"d2cli_version": d2cli.__version__, "model": "synthetic-scene",
            "model_sha256": digest, "settings": settings, "image_root": ""}


def _write_images(path: Path, cameras: list[CameraGT], config: SceneConfig, density: float,
                  centres: np.ndarray, mean_desc: np.ndarray, truth: h5py.File,
                  glob: h5py.File) -> list[int]:
    """Features of ``cameras`` into ``path`` (H5Store), truth and global descriptors."""
    cache = BlockCache(density, config, centres)
    counts = []
    with H5Store(path, attrs=features_attrs(config), commit_every=64, fresh=True) as store:
        for k, cam in enumerate(cameras):
            obs = observe(cam, cache.near(cam.s), config, centres, k)
            store.add(cam.name, obs.arrays(config))
            truth.create_dataset(f"{cam.name}/point_ids", data=obs.point_ids)
            g = obs.descriptors.astype(np.float32).sum(1) - len(obs.point_ids) * mean_desc
            glob.create_dataset(f"{cam.name}/global_descriptor",
                                data=(g / max(float(np.linalg.norm(g)), 1e-6)).astype(np.float32))
            counts.append(len(obs.point_ids))
    return counts


def scene_extent(centres: np.ndarray, chunk: int = 1024) -> float:
    """Largest distance between two of the (M, 3) centres, exactly.

    A double sweep (farthest point from the farthest point) gives a lower bound L; as
    |x - y| <= d(x) + r (d: distance to the mean, r: its maximum), only points with
    d > L - r can end a longer pair, and those are compared pairwise. Along a path they
    are the few near its two ends: linear time there (quadratic only for a ball of points).
    """
    c = np.asarray(centres, dtype=np.float64)
    if len(c) < 2:
        return 0.0
    d = np.linalg.norm(c - c.mean(0), axis=1)
    far = np.linalg.norm(c - c[d.argmax()], axis=1)
    best = max(float(far.max()), float(np.linalg.norm(c - c[far.argmax()], axis=1).max()))
    cand = c[d > best - d.max()]
    for i in range(0, len(cand), chunk):
        dist = np.linalg.norm(cand[i:i + chunk, None, :] - cand[None, :, :], axis=2)
        best = max(best, float(dist.max()))
    return best


def write_gt_model(folder: Path, cameras: Sequence[CameraGT], config: SceneConfig) -> Path:
    """The cameras as a COLMAP text model without points (for ``d2 pairs from-poses``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(
        f"1 PINHOLE {config.width} {config.height} {config.focal:g} {config.focal:g} "
        f"{config.width / 2:g} {config.height / 2:g}\n")
    with open(folder / "images.txt", "w") as f:
        for i, cam in enumerate(cameras, 1):
            q = rotation_to_quaternion(cam.R)
            f.write(f"{i} {' '.join(f'{v:.12g}' for v in q)} "
                    f"{' '.join(f'{v:.12g}' for v in cam.t)} 1 {cam.name}\n\n")
    (folder / "points3D.txt").write_text("")
    return folder


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion w, x, y, z of a (3, 3) rotation matrix (COLMAP's order)."""
    w = math.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = math.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2
    y = math.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2
    z = math.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2
    x = math.copysign(x, R[2, 1] - R[1, 2])
    y = math.copysign(y, R[0, 2] - R[2, 0])
    z = math.copysign(z, R[1, 0] - R[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def generate_scene(folder: str | os.PathLike, config: SceneConfig | None = None) -> Scene:
    """Write the scene's files into ``folder`` (see the module docstring) and return it.

    Files are rewritten from scratch; the time is linear in ``num_images``, the memory
    that of a few blocks of points and one image.
    """
    import time

    t0 = time.perf_counter()
    config = config or SceneConfig()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    db, queries = make_cameras(config), make_cameras(config, query=True)
    density = calibrate_density(config)
    centres, mean_desc = texture_centres(config), mean_descriptor(config)
    files = {"features": out / "feats.h5", "query_features": out / "feats-query.h5",
             "global": out / "global.h5", "truth": out / "truth.h5",
             "cameras": out / "cameras.json", "queries": out / "queries.txt",
             "gt_model": out / "gt-model"}
    tmp = {k: files[k].with_name(files[k].name + ".tmp") for k in ("global", "truth")}
    with h5py.File(tmp["truth"], "w") as truth, h5py.File(tmp["global"], "w") as glob:
        counts = _write_images(files["features"], db, config, density, centres, mean_desc,
                               truth, glob)
        if queries:
            _write_images(files["query_features"], queries, config, density, centres, mean_desc,
                          truth, glob)
    for k, p in tmp.items():
        os.replace(p, files[k])
    if not queries:
        files.pop("query_features")
    fx = fy = config.focal
    intrinsics = (fx, fy, config.width / 2, config.height / 2)
    extent = scene_extent(np.stack([c.centre for c in db]))
    scene = Scene(out, config, {c.name: c for c in [*db, *queries]}, [c.name for c in db],
                  [c.name for c in queries], intrinsics, extent,
                  keypoints_mean=float(np.mean(counts)), points_per_metre=density, files=files)
    gt = {"config": asdict(config), "model": "PINHOLE", "width": config.width,
          "height": config.height, "params": list(intrinsics), "extent": extent,
          "points_per_metre": density,
          "images": {c.name: {"R": c.R.tolist(), "t": c.t.tolist(), "centre": c.centre.tolist(),
                              "s": c.s, "query": c.query} for c in [*db, *queries]}}
    tmp_json = files["cameras"].with_name("cameras.json.tmp")
    tmp_json.write_text(json.dumps(gt))
    os.replace(tmp_json, files["cameras"])
    files["queries"].write_text("".join(
        f"{c.name} PINHOLE {config.width} {config.height} {fx:g} {fy:g} "
        f"{intrinsics[2]:g} {intrinsics[3]:g}\n" for c in queries))
    write_gt_model(files["gt_model"], db, config)
    scene.seconds = time.perf_counter() - t0
    return scene


def load_scene(folder: str | os.PathLike) -> Scene:
    """A scene written by :func:`generate_scene`, from its ``cameras.json``."""
    out = Path(folder)
    gt = json.loads((out / "cameras.json").read_text())
    config = SceneConfig(**gt["config"])
    cams = {n: CameraGT(n, np.array(v["R"]), np.array(v["t"]), np.array(v["centre"]), v["s"],
                        v["query"]) for n, v in gt["images"].items()}
    files = {"features": out / "feats.h5", "query_features": out / "feats-query.h5",
             "global": out / "global.h5", "truth": out / "truth.h5",
             "cameras": out / "cameras.json", "queries": out / "queries.txt",
             "gt_model": out / "gt-model"}
    return Scene(out, config, cams, [n for n, c in cams.items() if not c.query],
                 [n for n, c in cams.items() if c.query], tuple(gt["params"]), gt["extent"],
                 points_per_metre=gt["points_per_metre"], files=files)


# ----------------------------------------------------------------------------- evaluation
def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum |s R src + t - dst|^2 over (M, 3) point sets (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1
    r = u @ e @ vt
    s = float(np.trace(np.diag(d) @ e) / max((a ** 2).sum(1).mean(), 1e-300))
    return s, r, mu_d - s * r @ mu_s


def aligned_errors(est: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, tuple[float, np.ndarray,
                                                                                 np.ndarray]]:
    """Distances (M,) between the (M, 3) estimated centres, aligned to the (M, 3) ground
    truth by the least-squares similarity, and the ground truth; and that similarity."""
    if len(est) < 3:
        raise ValueError("a similarity alignment needs at least 3 centres")
    s, r, t = umeyama(est, gt)
    return np.linalg.norm(s * est @ r.T + t - gt, axis=1), (s, r, t)


def evaluate_model(model_dir: str | os.PathLike, scene: Scene) -> dict[str, Any]:
    """Registered database images and their camera-centre errors after the alignment (as a
    fraction of the scene extent) of a COLMAP model."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    names, est = [], []
    for im in rec.images.values():
        if im.has_pose and im.name in scene.cameras and not scene.cameras[im.name].query:
            names.append(im.name)
            est.append(im.projection_center())
    out: dict[str, Any] = {"registered": len(names), "images": len(scene.db_names),
                           "points3D": rec.num_points3D()}
    if len(names) >= 3:
        err, sim = aligned_errors(np.array(est), scene.centres(names))
        out.update(median_error=float(np.median(err)), max_error=float(err.max()),
                   median_fraction=float(np.median(err)) / scene.extent, extent=scene.extent,
                   alignment=[sim[0], sim[1].tolist(), sim[2].tolist()])
    return out


def read_poses(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``d2 localize`` poses file: name -> (quaternion w x y z, t) of world-to-camera."""
    out = {}
    for line in Path(path).read_text().splitlines():
        p = line.split()
        if len(p) == 8:
            out[p[0]] = (np.array([float(v) for v in p[1:5]]), np.array([float(v) for v in p[5:8]]))
    return out


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def evaluate_queries(poses_file: str | os.PathLike, scene: Scene,
                     alignment: Sequence[Any]) -> dict[str, Any]:
    """Localised queries and their centre errors, brought into the ground-truth frame by the
    model's alignment (``evaluate_model(...)["alignment"]``: s, R, t)."""
    s, r, t = float(alignment[0]), np.array(alignment[1]), np.array(alignment[2])
    poses = read_poses(poses_file)
    by_base = {Path(n).name: n for n in scene.query_names}
    err = []
    for name, (q, tq) in poses.items():
        full = name if name in scene.cameras else by_base.get(name)
        if full is None:
            continue
        centre = -quaternion_to_rotation(q).T @ tq
        err.append(float(np.linalg.norm(s * r @ centre + t - scene.cameras[full].centre)))
    out: dict[str, Any] = {"localized": len(err), "queries": len(scene.query_names)}
    if err:
        out.update(median_error=float(np.median(err)),
                   median_fraction=float(np.median(err)) / scene.extent)
    return out


def match_precision(matches: str | os.PathLike, truth: str | os.PathLike,
                    pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Share of the matches of ``pairs`` that join two observations of one 3D point, and
    matches per pair (read from a matches file and ``truth.h5``)."""
    from d2cli.io.features import MatchFile

    good = total = 0
    with MatchFile(matches) as mf, h5py.File(truth, "r") as tr:
        for a, b in pairs:
            if (a, b) not in mf:
                continue
            m, _ = mf.get(a, b)
            ia, ib = tr[a]["point_ids"][()][m[:, 0]], tr[b]["point_ids"][()][m[:, 1]]
            good += int(((ia == ib) & (ia >= 0)).sum())
            total += len(m)
    return {"precision": good / total if total else 0.0, "matches_per_pair":
            total / max(len(pairs), 1)}


def iter_neighbour_pairs(names: Sequence[str], gap: int = 1) -> Iterator[tuple[str, str]]:
    """(names[i], names[i + gap]) for every i."""
    for i in range(len(names) - gap):
        yield names[i], names[i + gap]
