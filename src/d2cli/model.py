"""The D2-Net network (Dusmanu et al., CVPR 2019), as in the paper.

One CNN is both the dense descriptor and the detector: VGG16 truncated after
conv4_3 gives a feature volume F of shape (512, h, w). Descriptors are F[:, i, j];
detections are cells where a channel is both the channel-wise maximum and a 3x3
spatial maximum (see ``detect.py``).

Test time (stride 4): pool3 becomes a 2x2 average pool with stride 1 and conv4_x
use dilation 2, which keeps the receptive field and doubles the resolution.
Train time (stride 8): the plain VGG16 layers. The parameter indices are the
same, so checkpoints move freely between both (official ``{'model': state_dict}``
layout, keys ``dense_feature_extraction.model.<idx>.{weight,bias}``).
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BadCheckpoint

PREFIX = "dense_feature_extraction.model."
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
CONV_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3")
CONV_SHAPES = ((64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
               (512, 256), (512, 512), (512, 512))


def vgg16_conv4_3(stride: int = 4) -> nn.Sequential:
    """VGG16 conv1_1 .. conv4_3 (no ReLU after conv4_3).

    stride 4: test-time layers (avg-pool 2x2/1 instead of pool3, dilated conv4).
    stride 8: train-time layers (torchvision's vgg16().features[:22]).
    """
    if stride not in (4, 8):
        raise ValueError("stride must be 4 (test time) or 8 (train time)")
    dil = 2 if stride == 4 else 1

    def conv(cin: int, cout: int, d: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, padding=d, dilation=d)

    pool3 = nn.AvgPool2d(2, stride=1) if stride == 4 else nn.MaxPool2d(2, stride=2)
    return nn.Sequential(
        conv(3, 64), nn.ReLU(inplace=True), conv(64, 64), nn.ReLU(inplace=True),  # 0-3
        nn.MaxPool2d(2, stride=2),  # 4: pool1
        conv(64, 128), nn.ReLU(inplace=True), conv(128, 128), nn.ReLU(inplace=True),  # 5-8
        nn.MaxPool2d(2, stride=2),  # 9: pool2
        conv(128, 256), nn.ReLU(inplace=True), conv(256, 256), nn.ReLU(inplace=True),  # 10-13
        conv(256, 256), nn.ReLU(inplace=True),  # 14-15
        pool3,  # 16
        conv(256, 512, dil), nn.ReLU(inplace=True), conv(512, 512, dil), nn.ReLU(inplace=True),
        conv(512, 512, dil),  # 21: conv4_3
    )


class DenseFeatures(nn.Module):
    """Image (B, 3, H, W) -> dense features (B, 512, h, w), h = floor(floor(H/2)/2) - 1.

    Large inputs run the full-resolution blocks (conv1, conv2, up to pool2) in bands of
    rows with a halo, so the 64/128-channel full-size activations never exist at once:
    same arithmetic per output, a fraction of the peak memory (the scale-2 pyramid level
    of a 1600x1200 image would otherwise need ~4 GB for conv1 alone).
    """

    HALO = 3  # pool2 rows; the receptive field up to pool2 reaches 2 rows beyond a band
    FIRST_BLOCKS = 10  # layers 0..9: conv1_1 .. pool2

    def __init__(self, stride: int = 4, use_relu: bool = True, band_pixels: int = 1 << 21) -> None:
        super().__init__()
        self.model = vgg16_conv4_3(stride)
        self.use_relu = use_relu
        self.num_channels = 512
        self.band_pixels = band_pixels  # input pixels per band; 0 disables banding

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        H, W = image.shape[-2:]
        if self.band_pixels and H * W > self.band_pixels and not torch.is_grad_enabled():
            x = self._first_blocks_banded(image)
            out = self.model[self.FIRST_BLOCKS:](x)
        else:
            out = self.model(image)
        return F.relu(out) if self.use_relu else out

    def _first_blocks_banded(self, image: torch.Tensor) -> torch.Tensor:
        """Layers 0..9 on bands of rows: (B, 3, H, W) -> (B, 128, H//4, W//4)."""
        H, W = image.shape[-2:]
        rows = H // 4  # pool2 output rows (floor mode)
        band = max(1, self.band_pixels // (16 * W))  # pool2 rows per band
        head = self.model[: self.FIRST_BLOCKS]
        outs = []
        for q0 in range(0, rows, band):
            q1 = min(rows, q0 + band)
            a0 = max(0, q0 - self.HALO)  # band with halo, in pool2 rows
            a1 = min(rows, q1 + self.HALO)
            # input rows 4*a0 .. 4*a1 (+ the rows floor mode drops at the very bottom)
            top, bottom = 4 * a0, (H if a1 == rows else 4 * a1)
            y = head(image[..., top:bottom, :])
            outs.append(y[..., q0 - a0 : q1 - a0, :])
        return torch.cat(outs, dim=-2)


class D2Net(nn.Module):
    """The D2-Net feature network; detection and refinement live in ``detect.py``."""

    def __init__(self, stride: int = 4, use_relu: bool = True) -> None:
        super().__init__()
        self.dense_feature_extraction = DenseFeatures(stride, use_relu)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.dense_feature_extraction(image)


def trunk_flops(h: int, w: int) -> int:
    """Floating-point operations (2 per multiply-add) of the test-time trunk on an h x w input.

    conv1 at full size, conv2 at 1/2, conv3 and the dilated conv4 at 1/4 (floor-mode pools,
    the 2x2/1 average pool removes one row and column): ~1.109 MFLOP per input pixel.
    """
    sizes = [(h, w)] * 2 + [(h // 2, w // 2)] * 2 + [(h // 4, w // 4)] * 3 \
        + [output_size(h, w)] * 3
    return sum(2 * cin * cout * 9 * hh * ww
               for (cout, cin), (hh, ww) in zip(CONV_SHAPES, sizes, strict=True))


def output_size(h: int, w: int) -> tuple[int, int]:
    """Feature-map size of the test-time network for an (h, w) input."""
    return h // 2 // 2 - 1, w // 2 // 2 - 1


def read_state_dict(path: str | os.PathLike | bytes) -> dict[str, torch.Tensor]:
    """Read a D2-Net checkpoint safely (``weights_only``) and check its layout.

    Accepts the official ``{'model': state_dict}`` layout and a bare state dict,
    with or without the ``dense_feature_extraction.model.`` prefix. fp16 tensors
    are cast to fp32. Raises BadCheckpoint with a one-line reason.
    """
    name = "<bytes>" if isinstance(path, bytes) else str(path)
    if not isinstance(path, bytes) and not Path(path).is_file():
        raise BadCheckpoint(f"{name}: weights file not found")
    src = io.BytesIO(path) if isinstance(path, bytes) else path
    try:
        # training checkpoints (reference train.py, ours) also pickle an argparse Namespace:
        # a plain attribute container, so it is allowed; nothing else is unpickled
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt/unsafe pickle
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise BadCheckpoint(f"{name}: not a loadable checkpoint ({msg})") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise BadCheckpoint(f"{name}: not a D2-Net state dict")
    state: dict[str, torch.Tensor] = {}
    for k, v in ckpt.items():
        for p in (PREFIX, "model.", ""):
            if k.startswith(p) and k[len(p):].split(".")[0].isdigit():
                state[PREFIX + k[len(p):]] = v
                break
    expected = {}
    for idx, (cout, cin) in zip(CONV_INDICES, CONV_SHAPES, strict=True):
        expected[f"{PREFIX}{idx}.weight"] = (cout, cin, 3, 3)
        expected[f"{PREFIX}{idx}.bias"] = (cout,)
    missing = [k for k in expected if k not in state]
    if missing:
        raise BadCheckpoint(
            f"{name}: not a D2-Net checkpoint ({len(missing)} of 20 VGG conv tensors missing, "
            f"e.g. {missing[0]})"
        )
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise BadCheckpoint(f"{name}: {k} has shape {tuple(state[k].shape)}, expected {shape}")
        if not torch.isfinite(state[k]).all():
            raise BadCheckpoint(f"{name}: {k} holds NaN or infinite values")
    return {k: state[k].float() for k in expected}


def load_d2net(path: str | os.PathLike, stride: int = 4, use_relu: bool = True) -> D2Net:
    """A D2Net in eval mode with the weights of ``path`` (fp32, CPU)."""
    net = D2Net(stride=stride, use_relu=use_relu)
    net.load_state_dict(read_state_dict(path), strict=True)
    return net.eval()
