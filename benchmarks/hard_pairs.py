"""Validation pairs where refinement can go wrong: strong photometric change, wide baselines.

Built from the sample photos shipped with d2cli (``src/d2cli/data/sacre_coeur``, hloc's
demo images), never from an evaluation benchmark. Each pair is a 512 crop of a photo
(``img0``, a mild day-to-day change) and a wide-baseline homography of the same photo
(``img1``) under one of five appearance changes:

- ``night``: a colour cast of artificial light, light pools of street lamps over a dark
  ambient level, few photons (shot and read noise, 8-bit), then the camera's gain and gamma.
- ``shadows``: hard-edged cast shadows (random strips and blobs, 25-50 % of the light,
  bluish skylight inside) over the scene.
- ``season``: a strong channel mix and hue rotation (foliage, stone and sky change colour
  differently), saturation change.
- ``gamma``: a strong tone curve and contrast change with noise.
- ``viewpoint``: only the mild change (the wide baseline alone).

A second set (``kinds=DEGRADED``, its own seed) has camera degradations instead: ``blur``
(a Gaussian of 1.5-4 px) and ``jpeg`` (quality 5-20); a third (``warps=STILL``, its own
seed) the same degradations with a camera that hardly moved.

The homographies go beyond d2 train's range (rotation +-40 deg, zoom 0.45-2.2, strong tilt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2cli.images import find_images, load_rgb
from d2cli.train.augment import (
    HomographyRange,
    _blur,
    photometric,
    random_homography,
    warp_image,
)

SACRE = Path(__file__).resolve().parents[1] / "src/d2cli/data/sacre_coeur"
KINDS = ("night", "shadows", "season", "gamma", "viewpoint")
PHOTOMETRIC = KINDS[:4]
DEGRADED = ("blur", "jpeg")  # a second set (--kinds blur jpeg): camera degradations
WIDE = HomographyRange(max_angle=40.0, scale=(0.45, 2.2), max_aspect=0.25, max_shear=0.25,
                       max_perspective=1.1, max_shift=0.12)
# a camera that barely moved (a tripod, consecutive video frames): +-2.5 deg, zoom 0.96-1.04
STILL = HomographyRange().scaled(0.1)


@dataclass
class HardPair:
    img0: np.ndarray  # (S, S, 3) uint8
    img1: np.ndarray  # (S, S, 3) uint8
    H: np.ndarray  # (3, 3) img0 pixels -> img1 pixels
    kind: str


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(h, w) low-frequency noise in 0..1 (blurred white noise, stretched)."""
    f = _blur(rng.normal(size=(*shape, 3)).astype(np.float32), sigma)[..., 0]
    return (f - f.min()) / max(float(np.ptp(f)), 1e-6)


def night(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """(H, W, 3) float 0..1 -> the same scene at night."""
    h, w = x.shape[:2]
    cast = [np.array([1.0, 0.72, 0.38]),  # sodium lamps
            np.array([0.85, 0.95, 1.15]),  # cold LED
            rng.uniform(0.5, 1.2, 3)][int(rng.integers(3))]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    light = np.full((h, w), rng.uniform(0.03, 0.12), np.float32)  # ambient
    for _ in range(int(rng.integers(1, 4))):  # pools of light
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        r = rng.uniform(0.15, 0.5) * max(h, w)
        light += rng.uniform(0.4, 1.0) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))
    x = x * light[..., None] * cast.astype(np.float32)
    k = rng.uniform(0.15, 0.5)  # photons per unit of the lit scene
    photons = 255 * k * x
    noisy = photons + rng.normal(0, 1, x.shape) * np.sqrt(np.maximum(photons, 0) * 0.6 + 2.0)
    noisy = np.round(np.clip(noisy, 0, 255)) / 255
    gain = 0.5 / max(float(np.percentile(noisy, 95)), 1e-3)  # auto exposure
    return np.clip(noisy * gain, 0, 1) ** np.float32(rng.uniform(0.6, 1.0))


def shadows(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):  # cast shadows: strips (poles, buildings)
        a = rng.uniform(0, np.pi)
        d = (xs - rng.uniform(0, w)) * np.cos(a) + (ys - rng.uniform(0, h)) * np.sin(a)
        mask = np.maximum(mask, (np.abs(d) < rng.uniform(0.05, 0.2) * w).astype(np.float32))
    blobs = _smooth_field(rng, (h, w), rng.uniform(10, 30)) > rng.uniform(0.55, 0.7)  # foliage
    mask = np.maximum(mask, blobs.astype(np.float32))
    mask = _blur(np.repeat(mask[..., None], 3, 2), rng.uniform(0.7, 3.0))[..., 0]
    dark = rng.uniform(0.25, 0.5)
    sky = np.array([0.85, 0.95, 1.15], np.float32)  # shadowed parts are lit by the sky
    factor = (1 - mask[..., None]) + mask[..., None] * dark * sky
    return np.clip(x * factor * rng.uniform(1.0, 1.4), 0, 1)


def season(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    a = np.deg2rad(rng.uniform(30, 80) * rng.choice([-1, 1]))  # hue rotation (YIQ)
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    sat = np.diag([1.0, *(2 * [rng.uniform(0.4, 1.6)])])
    M = np.linalg.inv(yiq) @ sat @ rot @ yiq
    M = M + rng.normal(0, 0.12, (3, 3))  # materials change differently
    y = x.reshape(-1, 3) @ M.T.astype(np.float32)
    return np.clip(y.reshape(x.shape), 0, 1)


def gamma(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    g = np.exp(rng.uniform(0.6, 1.1) * rng.choice([-1, 1]))
    y = np.clip(x, 0, 1) ** np.float32(g)
    m = y.mean()
    y = (y - m) * np.float32(np.exp(rng.uniform(-0.6, 0.6))) + m
    return np.clip(y + rng.normal(0, rng.uniform(0.01, 0.04), y.shape).astype(np.float32), 0, 1)


def blur(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Defocus or motion: a Gaussian of 1.5-4 px."""
    return _blur(x.astype(np.float32), rng.uniform(1.5, 4.0))


def jpeg(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A strongly compressed JPEG (quality 5-20): 8x8 blocks, ringing, colour bleeding."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(x * 255, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=int(rng.integers(5, 21)))
    return np.asarray(Image.open(buf), dtype=np.float32) / 255


CHANGES = {"night": night, "shadows": shadows, "season": season, "gamma": gamma,
           "viewpoint": lambda rng, x: x, "blur": blur,
           "jpeg": lambda rng, x: x}  # compressed last, after the mild change


def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def random_crop(rng: np.random.Generator, path: Path, crop: int, max_edge: int):
    """A sample photo downscaled to ``max_edge`` (float32) and a random crop origin as the
    3x3 shift (photo pixels -> crop pixels); returns (photo, shift, the crop)."""
    img = load_rgb(path).astype(np.float32)
    f = max_edge / max(img.shape[:2])
    if f < 1:
        img = warp_image(img, np.diag([1 / f, 1 / f, 1.0]),
                         (int(img.shape[0] * f), int(img.shape[1] * f)))
    h, w = img.shape[:2]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    shift = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]])
    return img, shift, img[top:top + crop, left:left + crop]


def hard_pairs(n: int, seed: int = 7, crop: int = 512, max_edge: int = 800,
               kinds: tuple[str, ...] = KINDS, warps: HomographyRange = WIDE) -> list[HardPair]:
    """n pairs, kinds in turn (``n`` a multiple of len(kinds) gives each as many); warps:
    the range of the second view's homography (WIDE, or STILL: hardly any motion)."""
    rng = np.random.default_rng(seed)
    photos = find_images(SACRE)
    out = []
    for k in range(n):
        img, shift, view0 = random_crop(rng, photos[(3 * k + 1) % len(photos)], crop, max_edge)
        H = random_homography(rng, crop, warps)
        view1 = warp_image(img, np.linalg.inv(H @ shift), (crop, crop))
        kind = kinds[k % len(kinds)]
        img0 = photometric(rng, view0, 0.3)
        img1 = photometric(rng, CHANGES[kind](rng, view1 / 255.0) * 255.0, 0.3)
        if kind == "jpeg":  # the compression comes last, as in a camera
            img1 = jpeg(rng, img1 / 255.0) * 255.0
        out.append(HardPair(_to8(img0), _to8(img1), H, kind))
    return out
