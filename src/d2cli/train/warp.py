"""Ground-truth correspondences: from depth and poses (the paper's), or from a homography.

Positions are (row, col) pixel coordinates of a crop, pixel centres at integers (the
D2-Net convention). COLMAP's convention puts the centre of the top-left pixel at
(0.5, 0.5), hence the +-0.5 when going through the intrinsics (reference ``warp``).
All geometry runs in float64.
"""

from __future__ import annotations

import numpy as np
import torch

DEPTH_TOLERANCE = 0.05  # reference: absolute, in the reconstruction's units


def interpolate_depth(pos: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear depth at (N, 2) positions of an (H, W) map -> (depth (M,), kept ids (M,)).

    A position is kept when its four neighbouring pixels are inside the map and all
    have a positive (known) depth, as the reference ``interpolate_depth``.
    """
    h, w = depth.shape
    i, j = pos[:, 0], pos[:, 1]
    i0, j0 = torch.floor(i).long(), torch.floor(j).long()
    i1, j1 = torch.ceil(i).long(), torch.ceil(j).long()
    inside = (i0 >= 0) & (j0 >= 0) & (i1 <= h - 1) & (j1 <= w - 1)
    ids = torch.nonzero(inside).reshape(-1)
    i, j, i0, j0, i1, j1 = (t[ids] for t in (i, j, i0, j0, i1, j1))
    corners = torch.stack([depth[i0, j0], depth[i0, j1], depth[i1, j0], depth[i1, j1]])
    known = (corners > 0).all(dim=0)
    ids, i, j, i0, j0, corners = ids[known], i[known], j[known], i0[known], j0[known], \
        corners[:, known]
    a, b = i - i0, j - j0
    z = ((1 - a) * (1 - b) * corners[0] + (1 - a) * b * corners[1]
         + a * (1 - b) * corners[2] + a * b * corners[3])
    return z, ids


def warp_depth(pos1: torch.Tensor, depth1: torch.Tensor, K1: torch.Tensor, pose1: torch.Tensor,
               bbox1: tuple[int, int], depth2: torch.Tensor, K2: torch.Tensor,
               pose2: torch.Tensor, bbox2: tuple[int, int],
               tolerance: float = DEPTH_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the crop-1 positions pos1 (N, 2) land in crop 2 -> (pos2 (M, 2), ids (M,) into pos1).

    depth1/2: (h, w) crops of the depth maps (0 = unknown); K: 3x3 intrinsics of the full
    image; pose: 4x4 world-to-camera; bbox: (top, left) of the crop in the full image.
    A point is kept when it has a depth in image 1, lands where image 2 has a depth,
    and its depth seen from camera 2 agrees with depth2 within ``tolerance`` (occlusion).
    """
    pos1, depth1, depth2 = pos1.double(), depth1.double(), depth2.double()
    K1, K2, pose1, pose2 = K1.double(), K2.double(), pose1.double(), pose2.double()
    z1, ids = interpolate_depth(pos1, depth1)
    u1 = pos1[ids, 1] + bbox1[1] + 0.5
    v1 = pos1[ids, 0] + bbox1[0] + 0.5
    x1 = (u1 - K1[0, 2]) * z1 / K1[0, 0]
    y1 = (v1 - K1[1, 2]) * z1 / K1[1, 1]
    p1 = torch.stack([x1, y1, z1, torch.ones_like(z1)])  # (4, M) in camera 1
    p2 = pose2 @ torch.linalg.inv(pose1) @ p1
    p2 = p2[:3] / p2[3]
    uv2 = K2 @ p2
    front = uv2[2] > 0
    u2, v2 = uv2[0] / uv2[2], uv2[1] / uv2[2]
    pos2 = torch.stack([v2 - bbox2[0] - 0.5, u2 - bbox2[1] - 0.5], dim=1)
    pos2 = torch.where(front[:, None], pos2, torch.full_like(pos2, -1e9))  # behind: dropped
    z2, ids2 = interpolate_depth(pos2, depth2)
    visible = (p2[2, ids2] - z2).abs() < tolerance
    ids2 = ids2[visible]
    return pos2[ids2], ids[ids2]


def apply_homography(H: np.ndarray | torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Map (N, 2) (row, col) positions with a 3x3 homography acting on (x=col, y=row, 1)."""
    H = torch.as_tensor(H, dtype=torch.float64)
    pos = pos.double()
    xy1 = torch.stack([pos[:, 1], pos[:, 0], torch.ones_like(pos[:, 0])])
    p = H @ xy1
    return torch.stack([p[1] / p[2], p[0] / p[2]], dim=1)


def warp_homography(pos1: torch.Tensor, H: np.ndarray | torch.Tensor, size2: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """pos1 (N, 2) -> (pos2 (M, 2) inside an image of size2 = (h, w), ids (M,) into pos1)."""
    pos2 = apply_homography(H, pos1)
    h, w = size2
    inside = (pos2[:, 0] >= 0) & (pos2[:, 0] <= h - 1) & (pos2[:, 1] >= 0) & (pos2[:, 1] <= w - 1)
    ids = torch.nonzero(inside).reshape(-1)
    return pos2[ids], ids
