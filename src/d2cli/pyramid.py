"""The multiscale pyramid of D2-Net (paper §3.3; reference ``process_multiscale``).

For scales rho_0 < rho_1 < ..., the image is resized (bilinear, align_corners),
the feature maps are accumulated coarse-to-fine (A_k = F_k + up(A_{k-1})) and a
detection at a finer level is banned where a coarser level already detected.
Keypoints come back in the pixels of the network input, ordered by level, then
(channel, row, column).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .detect import detect, normalize_descriptors, sample_descriptors

SINGLE_SCALE = (1.0,)
MULTI_SCALE = (0.5, 1.0, 2.0)


@dataclass
class Keypoints:
    """Features of one image in network-input pixels (i = row, j = column)."""

    ij: torch.Tensor  # (N, 2) float32, rows then columns
    scales: torch.Tensor  # (N,) float32, 1 / pyramid scale
    scores: torch.Tensor  # (N,) float32
    descriptors: torch.Tensor  # (N, C) float32, L2-normalised

    @staticmethod
    def empty(channels: int = 512) -> Keypoints:
        z = torch.zeros(0)
        return Keypoints(torch.zeros(0, 2), z, z.clone(), torch.zeros(0, channels))


def upscale_positions(pos: torch.Tensor, scaling_steps: int = 2) -> torch.Tensor:
    """Feature-map cells -> input pixels: p -> 2p + 0.5 per pooling step (reference convention)."""
    for _ in range(scaling_steps):
        pos = pos * 2 + 0.5
    return pos


def extract_multiscale(
    image: torch.Tensor,
    dense_features: Callable[[torch.Tensor], torch.Tensor],
    scales: Sequence[float] = SINGLE_SCALE,
) -> Keypoints:
    """D2-Net features of one preprocessed image (1, 3, H, W) over a pyramid.

    ``dense_features`` maps (1, 3, h, w) to (1, C, h', w') post-ReLU features.
    """
    _, _, h_init, w_init = image.shape
    acc_prev: torch.Tensor | None = None
    banned: torch.Tensor | None = None
    out: list[Keypoints] = []
    for idx, scale in enumerate(scales):
        level = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=True)
        _, _, h_level, w_level = level.shape
        D = dense_features(level)
        del level
        _, C, h, w = D.shape
        if acc_prev is not None:
            D = D + F.interpolate(acc_prev, size=[h, w], mode="bilinear", align_corners=True)
        D0 = D[0]
        det = detect(D0)
        cells, step = det.cells, det.step
        if banned is not None:
            banned = F.interpolate(banned.float()[None, None], size=[h, w])[0, 0].bool()
            free = ~banned[cells[:, 1], cells[:, 2]]
            cells, step = cells[free], step[free]
        else:
            banned = torch.zeros(h, w, dtype=torch.bool, device=D.device)
        # the ban is set before the sub-pixel and border filters (reference behaviour)
        banned[cells[:, 1], cells[:, 2]] = True
        ok = (step.abs() < 0.5).all(dim=1)
        cells, step = cells[ok], step[ok]
        pos = cells[:, 1:].float() + step
        raw, ids = sample_descriptors(D0, pos)
        if len(ids) == 0:
            # an empty level does not become the accumulator (reference: level 0;
            # the reference crashes on later levels, we keep the previous one)
            continue
        cells, pos = cells[ids], pos[ids]
        kp = upscale_positions(pos.t(), scaling_steps=2)
        kp[0, :] *= h_init / h_level
        kp[1, :] *= w_init / w_level
        scores = D0[cells[:, 0], cells[:, 1], cells[:, 2]] / (idx + 1)
        out.append(Keypoints(
            ij=kp.t(),
            scales=torch.ones(len(ids), device=D.device) * 1 / scale,
            scores=scores,
            descriptors=normalize_descriptors(raw).t(),
        ))
        acc_prev = D
    if not out:
        return Keypoints.empty(C if scales else 512)
    return Keypoints(*(torch.cat([getattr(k, f) for k in out]) for f in
                       ("ij", "scales", "scores", "descriptors")))
