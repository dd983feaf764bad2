"""Candidate-cell detection == the reference's dense 512-channel formulation.

The oracle below is the reference algorithm as documented (dense depthwise conv2d
Hessians, max-pool local maxima, dense displacement volumes), written for the test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2cli.detect import detect, sample_descriptors
from d2cli.pyramid import extract_multiscale


def dense_reference(D: torch.Tensor, edge_threshold: float = 5):
    """(C, h, w) -> (detected (C, h, w) bool, step (2, C, h, w)) as the reference computes."""
    C, h, w = D.shape
    x = D[None]
    is_dw_max = x == x.max(dim=1)[0]
    is_local_max = x == F.max_pool2d(x, 3, stride=1, padding=1)
    flat = x.view(-1, 1, h, w)

    def filt(k):
        return F.conv2d(flat, torch.tensor(k, dtype=D.dtype).view(1, 1, 3, 3), padding=1).view(1, C, h, w)

    dii = filt([[0, 1.0, 0], [0, -2.0, 0], [0, 1.0, 0]])
    djj = filt([[0, 0, 0], [1.0, -2.0, 1.0], [0, 0, 0]])
    dij = filt([[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]])
    det = dii * djj - dij * dij
    tr = dii + djj
    thr = (edge_threshold + 1) ** 2 / edge_threshold
    not_edge = (tr * tr / det <= thr) & (det > 0)
    detected = is_dw_max & is_local_max & not_edge
    di = filt([[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]])
    dj = filt([[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]])
    step_i = -((djj / det) * di + (-dij / det) * dj)
    step_j = -((-dij / det) * di + (dii / det) * dj)
    return detected[0], torch.stack([step_i[0], step_j[0]])


def random_map(seed: int, C=32, h=23, w=31, quantise=False, zero_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    D = torch.relu(torch.randn(C, h, w, generator=g) * 2)
    D = F.avg_pool2d(D[None], 3, 1, 1)[0]  # smooth: realistic peaks, not noise
    if quantise:  # many exact ties across channels and plateaus in space
        D = torch.round(D * 4) / 4
    D[torch.rand(C, h, w, generator=g) < zero_frac] = 0
    return D


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantise", [False, True])
def test_detect_equals_dense_reference(seed, quantise):
    D = random_map(seed, quantise=quantise)
    dense, step = dense_reference(D)
    det = detect(D)
    expected = dense.nonzero()
    assert torch.equal(det.cells, expected)  # same cells, same (c, i, j) order
    c, i, j = expected.unbind(1)
    ref_step = step[:, c, i, j].t()
    finite = torch.isfinite(ref_step)
    assert torch.equal(finite, torch.isfinite(det.step))
    assert torch.allclose(det.step[finite], ref_step[finite], rtol=1e-5, atol=1e-5)


def test_all_zero_map_detects_nothing():
    det = detect(torch.zeros(8, 10, 12))
    assert det.cells.shape == (0, 3)


def test_sample_descriptors_bilinear_and_border_rule():
    D = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    pos = torch.tensor([[1.25, 2.5], [0.0, 0.0], [-0.1, 1.0], [3.0, 4.2], [3.0, 4.0]])
    desc, ids = sample_descriptors(D, pos)
    assert ids.tolist() == [0, 1, 4]
    # D[c, i, j] = 20c + 5i + j is linear, so bilinear interpolation is exact
    expected = torch.tensor([[20 * c + 5 * 1.25 + 2.5, 20 * c, 20 * c + 15 + 4] for c in range(2)])
    assert torch.allclose(desc, expected)


def test_multiscale_survives_empty_levels():
    """The reference crashes when a level >= 1 finds nothing; we must not."""
    calls = []

    def net(x):
        calls.append(x.shape[-1])
        h, w = x.shape[-2] // 4 - 1, x.shape[-1] // 4 - 1
        out = torch.zeros(x.shape[0], 4, h, w)
        if len(calls) == 1:  # only the first level has a clean peak
            out[:, 1, h // 2, w // 2] = 5.0
        return out

    kps = extract_multiscale(torch.zeros(2, 3, 64, 64), net, (0.5, 1, 2))
    assert len(kps) == 2 and all(len(k.scores) == 1 for k in kps)
    assert np.allclose(kps[0].scales.numpy(), 2.0)


def test_batch_equals_one_by_one():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 5, stride=4).eval()

    def net(x):
        return torch.relu(conv(x))

    imgs = torch.randn(3, 3, 67, 83) * 50
    with torch.no_grad():
        batched = extract_multiscale(imgs, net, (0.5, 1))
        single = [extract_multiscale(imgs[i : i + 1], net, (0.5, 1))[0] for i in range(3)]
    for a, b in zip(batched, single, strict=True):
        assert len(a.scores) == len(b.scores) > 0
        assert torch.allclose(a.ij, b.ij, atol=1e-4)
        assert torch.allclose(a.descriptors, b.descriptors, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_bf16_channels_last_map_equals_its_fp32_values(seed):
    """A bf16 NHWC map (the bf16 trunk's output) detects and samples as its values upcast to
    an fp32 NCHW map: comparisons in bf16 are exact, arithmetic is fp32 on both."""
    imgs = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(seed)) * 50
    conv = torch.nn.Conv2d(3, 24, 5, stride=4)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(seed))

    def bf16_nhwc(x):
        return torch.relu(conv(x)).bfloat16().contiguous(memory_format=torch.channels_last)

    def fp32_nchw(x):
        return bf16_nhwc(x).float().contiguous()

    D = bf16_nhwc(imgs[:1])[0]
    assert D.stride(0) == 1  # the layout under test
    a, b = detect(D), detect(D.float().contiguous())
    assert len(a.cells) > 20 and torch.equal(a.cells, b.cells) and torch.equal(a.step, b.step)
    with torch.no_grad():
        for x, y in zip(extract_multiscale(imgs, bf16_nhwc, (0.5, 1, 2)),
                        extract_multiscale(imgs, fp32_nchw, (0.5, 1, 2)), strict=True):
            assert len(x.scores) > 0
            for f in ("ij", "scales", "scores"):
                assert torch.equal(getattr(x, f), getattr(y, f)), f
            # the L2 norm sums the channels in the layout's order: ulp-level differences
            assert torch.allclose(x.descriptors, y.descriptors, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_channels_last_detection_keeps_every_tie(seed):
    """The NHWC path finds channel maxima from argmax + tie counts: the same cells, in the
    same order, as the dense mask, also on maps full of exact ties across channels."""
    D = random_map(seed, quantise=True)
    nhwc = D[None].contiguous(memory_format=torch.channels_last)[0]
    assert nhwc.stride(0) == 1
    M = D.max(dim=0).values
    assert int((D == M).sum()) > D.shape[1] * D.shape[2]  # ties present
    a, b = detect(nhwc), detect(D)
    assert torch.equal(a.cells, b.cells) and torch.equal(a.step, b.step)
