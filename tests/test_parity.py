"""Parity with the reference D2-Net code: the acceptance test of the extractor.

Golden outputs and tolerances: tests/data/golden/README.md. Same N and order exactly;
keypoints within 1e-3 px (one per image within 2e-3 px: another summation order
moves a near-flat peak; scale column exact), scores within 1e-4 relative,
float32 descriptors within 1e-4.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from d2cli.extract import Extractor, ExtractSettings
from d2cli.images import load_rgb, resize_for_network

# Another summation order of the convolutions moves the Newton step of a keypoint at a
# near-flat peak: cuDNN on an H200 moved one keypoint of ss_torch-b 1.34e-3 / 1.39e-3 px
# in two runs, and oneDNN on an AMD EPYC CPU (the golden run was an Intel Xeon) moves one
# keypoint of ss_torch-a 1.05e-3 and one of ss_torch-b 1.98e-3 px, every other keypoint of
# every case within 4.5e-4 px (docs/parity.md). So: every keypoint within the golden
# 1e-3 px but at most one per image, which stays within 2e-3 px.
DEVICE = os.environ.get("D2CLI_TEST_DEVICE", "cpu")
KEYPOINT_TOLERANCE_PX = 1e-3
NEAR_FLAT_PEAK_TOLERANCE_PX = 2e-3
NEAR_FLAT_PEAKS_PER_IMAGE = 1


CASES = {
    "ss_caffe": dict(scales=(1,), preprocessing="caffe", max_edge=1600),
    "ms_caffe": dict(scales=(0.5, 1, 2), preprocessing="caffe", max_edge=1600),
    "ss_torch": dict(scales=(1,), preprocessing="torch", max_edge=1600),
    "ss_caffe_maxedge200": dict(scales=(1,), preprocessing="caffe", max_edge=200),
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("image", ["a", "b"])
@pytest.mark.parametrize("case", list(CASES))
def test_golden_parity(golden_dir, case, image):
    golden = np.load(golden_dir / f"{case}_{image}.npz")
    # fp32 pinned: the default (auto) runs bf16 on CPUs and GPUs that have it
    settings = ExtractSettings(descriptor_dtype="float32", precision="fp32", **CASES[case])
    extractor = Extractor("hed-vgg16", settings, device=DEVICE)
    rgb = load_rgb(golden_dir / f"{image}.png")
    feats = extractor(rgb)

    gk = golden["keypoints"]
    assert len(feats) == len(gk), "number of keypoints differs from the reference"
    kp = np.concatenate([feats.keypoints, feats.scales[:, None]], axis=1)
    err = np.abs(kp[:, :2] - gk[:, :2]).max(axis=1)
    assert err.max() <= NEAR_FLAT_PEAK_TOLERANCE_PX
    assert (err > KEYPOINT_TOLERANCE_PX).sum() <= NEAR_FLAT_PEAKS_PER_IMAGE
    assert np.array_equal(kp[:, 2], gk[:, 2])  # 1/scale exactly, in level order
    assert (np.abs(feats.scores - golden["scores"]) / np.abs(golden["scores"])).max() <= 1e-4
    assert np.abs(feats.descriptors.T - golden["descriptors"]).max() <= 1e-4
    assert np.array_equal(feats.image_size, golden["image_size"])
    r = resize_for_network(rgb, settings.max_edge, settings.max_sum_edges)
    assert [r.image.shape[1], r.image.shape[0]] == list(golden["resized_size"])


@pytest.mark.parametrize("image", ["a", "b"])
def test_resized_network_input_matches_reference(golden_dir, image):
    rgb = load_rgb(golden_dir / f"{image}.png")
    r = resize_for_network(rgb, 200, 2800)
    expected = np.asarray(Image.open(golden_dir / f"ss_caffe_maxedge200_input_{image}.png"))
    assert np.array_equal(r.image.astype(np.uint8), expected)


def test_float16_descriptors_stay_within_their_rounding(golden_dir):
    golden = np.load(golden_dir / "ss_caffe_a.npz")
    feats = Extractor("hed-vgg16", ExtractSettings(precision="fp32"),
                      device=DEVICE)(load_rgb(golden_dir / "a.png"))
    assert feats.descriptors.dtype == np.float16
    assert np.abs(feats.descriptors.astype(np.float32).T - golden["descriptors"]).max() <= 5e-4
