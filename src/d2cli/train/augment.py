"""Random homographies and photometric changes for training pairs made from one image.

Everything draws from a ``numpy.random.Generator`` passed in, so a pair is a pure
function of its seed (resume and reproducibility need no hidden state).
Images are float32 RGB arrays (H, W, 3) in 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class HomographyRange:
    """How far a random homography may go (about the crop centre)."""

    max_angle: float = 25.0  # degrees of in-plane rotation
    scale: tuple[float, float] = (0.6, 1.5)  # zoom, log-uniform
    max_aspect: float = 0.15  # anisotropic scale, +- fraction
    max_shear: float = 0.15
    max_perspective: float = 0.6  # corner displacement from the projective part, ~fraction
    max_shift: float = 0.15  # translation, fraction of the crop size

    def scaled(self, k: float) -> HomographyRange:
        """Every range times k (1: these defaults; 2: twice the angles, zoom exponents, tilt)."""
        return HomographyRange(self.max_angle * k, (self.scale[0] ** k, self.scale[1] ** k),
                               self.max_aspect * k, self.max_shear * k, self.max_perspective * k,
                               self.max_shift * k)


def random_homography(rng: np.random.Generator, size: int, r: HomographyRange) -> np.ndarray:
    """A 3x3 homography on (x, y, 1) pixel coordinates of a size x size crop, about its centre."""
    c = (size - 1) / 2
    T = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    a = np.deg2rad(rng.uniform(-r.max_angle, r.max_angle))
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    s = np.exp(rng.uniform(np.log(r.scale[0]), np.log(r.scale[1])))
    asp = 1 + rng.uniform(-r.max_aspect, r.max_aspect)
    S = np.diag([s * asp, s / asp, 1.0])
    Sh = np.array([[1, rng.uniform(-r.max_shear, r.max_shear), 0], [0, 1, 0], [0, 0, 1.0]])
    # projective row: a tilt that moves a corner by up to ~max_perspective of the half-size
    P = np.eye(3)
    P[2, :2] = rng.uniform(-r.max_perspective, r.max_perspective, 2) / size
    shift = rng.uniform(-r.max_shift, r.max_shift, 2) * size
    Tb = np.array([[1, 0, c + shift[0]], [0, 1, c + shift[1]], [0, 0, 1.0]])
    H = Tb @ P @ R @ Sh @ S @ T
    return H / H[2, 2]


def warp_image(image: np.ndarray, H_inv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Output pixel q of an (h, w) image takes image(H_inv q), bilinear; outside is black.

    image: (H, W, 3) float32; H_inv maps output (x, y, 1) to input (x, y, 1).
    """
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    p = H_inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    x, y = p[0] / p[2], p[1] / p[2]
    H_in, W_in = image.shape[:2]
    # grid_sample with align_corners=True: -1 and 1 are the centres of the corner pixels
    gx = 2 * x / max(W_in - 1, 1) - 1
    gy = 2 * y / max(H_in - 1, 1) - 1
    grid = torch.from_numpy(np.stack([gx, gy], axis=1).reshape(1, h, w, 2)).float()
    src = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].numpy().transpose(1, 2, 0).copy()


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = torch.from_numpy(k / k.sum()).float()
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[:, None]  # (3,1,H,W)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0].numpy().transpose(1, 2, 0).copy()


def photometric(rng: np.random.Generator, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, gamma, colour cast, saturation, blur, noise, low light.

    strength scales every range (0 = unchanged, 1 = strong). (H, W, 3) -> (H, W, 3).
    """
    if strength <= 0:
        return img
    x = img.astype(np.float32) / 255.0
    x = x * np.float32(np.exp(rng.uniform(-0.5, 0.5) * strength))  # brightness / exposure
    mean = x.mean()
    x = (x - mean) * np.float32(np.exp(rng.uniform(-0.4, 0.4) * strength)) + mean  # contrast
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * np.float32(1 + rng.uniform(-0.6, 0.4) * strength)  # saturation
    x = x * (1 + rng.uniform(-0.15, 0.15, 3) * strength).astype(np.float32)  # white balance
    x = np.clip(x, 0, 1) ** np.float32(np.exp(rng.uniform(-0.6, 0.6) * strength))  # gamma
    if rng.random() < 0.2 * strength:
        x = _low_light(rng, x)
    if rng.random() < 0.3 * strength:
        x = _blur(x, rng.uniform(0.4, 1.6))
    if rng.random() < 0.5 * strength:
        x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255).astype(np.float32)


def _low_light(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A night shot: few photons (shot + read noise, 8-bit quantisation), then the camera's gain."""
    k = rng.uniform(0.03, 0.2)
    photons = 255 * k * x
    noisy = photons + rng.normal(0, 1, x.shape) * np.sqrt(np.maximum(photons, 0) * 0.5 + 1.0)
    noisy = np.round(np.clip(noisy, 0, 255)) / 255  # what the sensor stores
    gain = rng.uniform(1.0, 0.6 / k)  # auto gain brightens again, noise and all
    return (noisy * gain).astype(np.float32)
