"""Soft detection scores (D2-Net paper, Sec. 3.3; reference ``SoftDetectionModule``).

Hard detection (a channel-wise maximum that is also a 3x3 spatial maximum) has no
gradient, so training uses a soft score per cell:

    alpha^k_ij = exp(D^k_ij) / sum_{3x3 around ij} exp(D^k)   (soft local maximum)
    beta^k_ij  = D^k_ij / max_t D^t_ij                         (ratio to channel max)
    s_ij       = max_k alpha^k_ij * beta^k_ij,  normalised to sum 1 over the image.

As the reference, D is relu(F), divided by its per-sample maximum inside the exp
(numerical range) and the 3x3 window is padded with exp(0) = 1. Unlike the
reference (master), every denominator has an epsilon: an all-zero map or a cell where
all 512 channels are <= 0 gives score 0, not NaN (reference issues #57, #78).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6  # as the reference's dev branch


def soft_detection_scores(features: torch.Tensor, window: int = 3, eps: float = EPS) -> torch.Tensor:
    """Raw conv4_3 features (B, C, h, w) -> detection scores (B, h, w), each map summing to 1.

    A map with no positive activation at all gives all-zero scores (no NaN).
    """
    x = F.relu(features)
    b = x.shape[0]
    # per-sample maximum; clamped so an all-zero map does not divide 0 by 0
    m = x.reshape(b, -1).max(dim=1).values.clamp_min(eps).view(b, 1, 1, 1)
    e = torch.exp(x / m)
    pad = window // 2
    window_sum = window * window * F.avg_pool2d(
        F.pad(e, [pad] * 4, mode="constant", value=1.0), window, stride=1)
    alpha = e / window_sum
    beta = x / (x.max(dim=1, keepdim=True).values + eps)
    s = (alpha * beta).max(dim=1).values
    return s / (s.sum(dim=(1, 2), keepdim=True) + eps)
