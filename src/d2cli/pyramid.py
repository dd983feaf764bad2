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
from .settings import SINGLE_SCALE

MIN_INPUT = 8  # the smallest input side that still gives a feature map


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
    images: torch.Tensor,
    dense_features: Callable[[torch.Tensor], torch.Tensor],
    scales: Sequence[float] = SINGLE_SCALE,
) -> list[Keypoints]:
    """D2-Net features of a batch of preprocessed images (B, 3, H, W) of one size.

    ``dense_features`` maps (B, 3, h, w) to (B, C, h', w') post-ReLU features; the
    network runs once per level for the whole batch, detection per image.
    """
    B, _, h_init, w_init = images.shape
    acc_prev: list[torch.Tensor | None] = [None] * B
    banned: list[torch.Tensor | None] = [None] * B
    found: list[list[Keypoints]] = [[] for _ in range(B)]
    channels = 512
    for idx, scale in enumerate(scales):
        level = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=True)
        _, _, h_level, w_level = level.shape
        if min(h_level, w_level) < MIN_INPUT:
            continue  # too small for the network: this level has no map
        D_all = dense_features(level)
        del level
        _, channels, h, w = D_all.shape
        for b in range(B):
            D = D_all[b : b + 1]
            if acc_prev[b] is not None:  # the sum in float32, whatever the trunk's dtype
                D = D.float() + F.interpolate(acc_prev[b].float(), size=[h, w], mode="bilinear",
                                              align_corners=True)
            kp, banned[b] = _detect_level(D[0], banned[b], idx, scale, h_init / h_level,
                                          w_init / w_level)
            if kp is None:
                # an empty level does not become the accumulator (reference: level 0;
                # the reference crashes on later levels, we keep the previous one)
                continue
            found[b].append(kp)
            acc_prev[b] = D
    return [
        Keypoints(*(torch.cat([getattr(k, f) for k in kps]) for f in
                    ("ij", "scales", "scores", "descriptors")))
        if kps else Keypoints.empty(channels)
        for kps in found
    ]


def _detect_level(
    D: torch.Tensor, banned: torch.Tensor | None, idx: int, scale: float,
    fact_i: float, fact_j: float,
) -> tuple[Keypoints | None, torch.Tensor]:
    """Detections of one level's accumulated map D (C, h, w); returns (features, new ban)."""
    _, h, w = D.shape
    det = detect(D)
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
    raw, ids = sample_descriptors(D, pos)
    if len(ids) == 0:
        return None, banned
    cells, pos = cells[ids], pos[ids]
    kp = upscale_positions(pos.t(), scaling_steps=2)
    kp[0, :] *= fact_i
    kp[1, :] *= fact_j
    return Keypoints(
        ij=kp.t(),
        scales=torch.ones(len(ids), device=D.device) * 1 / scale,
        scores=D[cells[:, 0], cells[:, 1], cells[:, 2]].float() / (idx + 1),
        descriptors=normalize_descriptors(raw).t(),
    ), banned
