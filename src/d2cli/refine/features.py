"""Dense features on local crops of the original image, sampled at arbitrary points.

A crop is an S x S grid of image samples around a centre ``c``; crop pixel ``u`` (integer
offsets from the centre) shows the image at ``c + Ainv u``. With ``Ainv = I`` and an
integer ``c`` the crop is an exact copy of the pixels (no resampling blur); a local
affine ``Ainv`` shows one image as seen from the other (the reference patch of a match).
The early VGG layers of the D2-Net model (or the grey image itself) run on the crops, and
point descriptors are bilinear samples of those maps, compared by cosine (normalised
cross-correlation for the image).

Shapes: B crops, G query points per crop, T = template**2 samples per point, C channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..images import preprocess
from ..lru import LRU
from ..model import load_d2net
from ..weights import resolve_model
from .config import LAYERS, RefineConfig


def load_trunk(config: RefineConfig, device: torch.device) -> nn.Module | None:
    """The VGG prefix up to ``config.source`` (pre-ReLU: the sign carries information)
    of the model the features were made with; None for the "image" source."""
    if config.source == "image":
        return None
    net = load_d2net(resolve_model(config.model).path)
    idx = LAYERS[config.source][0]
    return net.dense_feature_extraction.model[: idx + 1].to(device).eval()


def image_tensor(rgb: np.ndarray, config: RefineConfig, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, C, H, W) float32 on device: caffe input of the network, or
    grey 0..1 for the "image" source."""
    if config.source == "image":
        g = rgb.astype(np.float32).mean(axis=2) / 255.0
        return torch.from_numpy(g)[None, None].to(device)
    return torch.from_numpy(preprocess(rgb, "caffe"))[None].to(device)


@dataclass
class Samples:
    """Feature values at sampled points and which of their samples lie inside the image.

    values (B, G, C, T); inside (B, G, T) bool. Outside the image a crop reads zeros (the
    mean colour, black for grey), an edge that is not in the scene: only templates wholly
    inside are compared (:func:`~d2cli.refine.search.search`).
    """

    values: torch.Tensor
    inside: torch.Tensor

    def __getitem__(self, rows: slice | torch.Tensor) -> Samples:
        return Samples(self.values[rows], self.inside[rows])


def similarity(ref: Samples, cand: torch.Tensor, zero_mean: bool) -> torch.Tensor:
    """Normalised cross-correlation (zero_mean: the intensities) or cosine (network
    features) of each point's reference (B, 1, C, T) with its candidates' values
    (B, G, C, T) -> (B, G)."""
    r, v = ref.values, cand
    if zero_mean:  # invariant to gain and offset of the intensities
        r = r - r.mean(dim=(2, 3), keepdim=True)
        v = v - v.mean(dim=(2, 3), keepdim=True)
    r = F.normalize(r.flatten(2), dim=-1, eps=1e-8)  # (B, 1, D)
    v = F.normalize(v.flatten(2), dim=-1, eps=1e-8)  # (B, G, D)
    return torch.einsum("bgd,bd->bg", v, r[:, 0])


class CropFeatures:
    """Feature maps of B crops and the rule that maps crop offsets to map cells."""

    def __init__(self, maps: torch.Tensor, half: int, stride: int, offset: float,
                 template: torch.Tensor, centres: torch.Tensor, ainv: torch.Tensor | None,
                 image_size: tuple[int, int]) -> None:
        self.maps = maps  # (B, C, s, s)
        self.half = half  # crop pixel u = index - half
        self.stride, self.offset = stride, offset
        self.template = template  # (T, 2) px offsets of a point's samples, crop frame
        self.centres, self.ainv = centres, ainv  # crop pixel u shows the image at c + ainv u
        self.image_size = image_size  # (W, H)

    def sample(self, u: torch.Tensor) -> torch.Tensor:
        """Values (B, G, C, T) at crop offsets u (B, G, 2) (x, y), the template around each."""
        B, G, _ = u.shape
        pts = u[:, :, None, :] + self.template[None, None]  # (B, G, T, 2)
        cell = (pts + self.half - self.offset) / self.stride  # map cell coordinates
        s_h, s_w = self.maps.shape[-2:]
        grid = torch.stack([2 * cell[..., 0] / max(s_w - 1, 1) - 1,
                            2 * cell[..., 1] / max(s_h - 1, 1) - 1], dim=-1)
        v = F.grid_sample(self.maps, grid.reshape(B, G, -1, 2), mode="bilinear",
                          padding_mode="border", align_corners=True)  # (B, C, G, T)
        return v.permute(0, 2, 1, 3)

    def inside(self, u: torch.Tensor) -> torch.Tensor:
        """(B, G, T) whether each template sample at crop offsets u (B, G, 2) lies in the image."""
        pts = u[:, :, None, :] + self.template[None, None]  # (B, G, T, 2)
        at = pts if self.ainv is None else torch.einsum("bij,bgtj->bgti", self.ainv, pts)
        at = at + self.centres[:, None, None, :]  # image x y of every sample
        W, H = self.image_size
        return (at[..., 0] >= 0) & (at[..., 0] <= W - 1) & (at[..., 1] >= 0) & (at[..., 1] <= H - 1)


class PatchFeatures:
    """Computes :class:`CropFeatures` for one refinement configuration."""

    def __init__(self, config: RefineConfig, device: torch.device,
                 trunk: nn.Module | None = None) -> None:
        self.config = config
        self.device = device
        self.trunk = trunk if trunk is not None else load_trunk(config, device)
        if config.source == "image":
            self.stride, self.offset, context = 1, 0.0, 1
        else:
            _, self.stride, self.offset, context = LAYERS[config.source]
        self.half = int(math.ceil(config.reach + context))
        r = config.template // 2
        t = torch.arange(-r, r + 1, dtype=torch.float32, device=device) * config.template_step
        ty, tx = torch.meshgrid(t, t, indexing="ij")
        self.template = torch.stack([tx.reshape(-1), ty.reshape(-1)], dim=1)  # (T, 2)

    @torch.no_grad()
    def crops(self, image: torch.Tensor, centres: torch.Tensor,
              ainv: torch.Tensor | None = None) -> CropFeatures:
        """image (1, C, H, W), centres (B, 2) x y, ainv (B, 2, 2) or None -> CropFeatures."""
        B = centres.shape[0]
        H, W = image.shape[-2:]
        k = torch.arange(-self.half, self.half + 1, dtype=torch.float32, device=self.device)
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        u = torch.stack([kx, ky], dim=-1).reshape(1, -1, 2)  # (1, S*S, 2)
        if ainv is not None:
            u = torch.einsum("bij,bnj->bni", ainv, u.expand(B, -1, -1))
        p = centres[:, None, :] + u  # image x y of every crop pixel
        grid = torch.stack([2 * p[..., 0] / max(W - 1, 1) - 1, 2 * p[..., 1] / max(H - 1, 1) - 1],
                           dim=-1)
        S = 2 * self.half + 1
        # zeros outside the image: the mean colour of the caffe input, black for the grey one
        crop = F.grid_sample(image, grid.reshape(1, B * S, S, 2), mode="bilinear",
                             padding_mode="zeros", align_corners=True)  # (1, C, B*S, S)
        crop = crop.reshape(image.shape[1], B, S, S).transpose(0, 1).contiguous()
        maps = crop if self.trunk is None else self.trunk(crop)
        return CropFeatures(maps, self.half, self.stride, self.offset, self.template,
                            centres, ainv, (W, H))

    @property
    def zero_mean(self) -> bool:
        """NCC (invariant to gain and offset) for the intensities, cosine for features."""
        return self.trunk is None

    def describe(self, image: torch.Tensor, points: torch.Tensor,
                 affine: torch.Tensor | None = None) -> Samples:
        """The reference samples (N, 1, C, T) at points (N, 2) of one image, in blocks.

        affine (N, 2, 2): the point's neighbourhood as the other image sees it
        (displacement here -> displacement there); None: as it is.
        """
        values, inside = [], []
        for b0 in range(0, len(points), self.config.block_size):
            p = points[b0 : b0 + self.config.block_size]
            if affine is None:
                c = torch.round(p)
                cf = self.crops(image, c)
                u = p - c
            else:
                a = affine[b0 : b0 + self.config.block_size]
                c = p  # resampled anyway: centre the crop on the point itself
                cf = self.crops(image, c, torch.linalg.inv(a))
                u = torch.zeros_like(p)
            values.append(cf.sample(u[:, None, :]))
            inside.append(cf.inside(u[:, None, :]))
        if not values:
            ch = image.shape[1] if self.trunk is None else self.trunk[-1].out_channels
            T = self.template.shape[0]
            return Samples(torch.zeros(0, 1, ch, T, device=self.device),
                           torch.zeros(0, 1, T, dtype=torch.bool, device=self.device))
        return Samples(torch.cat(values), torch.cat(inside))


class ImageCache(LRU[str, torch.Tensor]):
    """The last ``size`` images as :func:`image_tensor` makes them, loaded on demand by
    ``load(name) -> (H, W, 3) uint8``."""

    def __init__(self, load: Callable[[str], np.ndarray], config: RefineConfig,
                 device: torch.device, size: int = 4) -> None:
        super().__init__(lambda name: image_tensor(load(name), config, device), size)
