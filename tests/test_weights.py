"""Checkpoint loading and the built-in model."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch

from d2cli.errors import BadCheckpoint, UnknownModel
from d2cli.model import PREFIX, D2Net, load_d2net, output_size, read_state_dict
from d2cli.weights import DEFAULT_MODEL, resolve_model

GOLDEN_CONTENT_SHA256 = "58a9ab95de6a1d2c4e692c88a64aeebe8c0269b98831835382c0091ffa8488a6"


def content_sha256(path) -> str:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)["model"]
    h = hashlib.sha256()
    for k, v in ckpt.items():
        h.update(k.encode())
        h.update(v.to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def test_builtin_is_the_golden_checkpoint():
    info = resolve_model("hed-vgg16")
    assert info.name == "hed-vgg16"
    assert content_sha256(info.path) == GOLDEN_CONTENT_SHA256


def test_default_model_is_a_conv4_3_fine_tune_of_hed_vgg16():
    """d2cli-v1 = d2 train --train-layers conv4_3 from hed-vgg16 (weights/PROVENANCE.md)."""
    info = resolve_model()
    assert info.name == DEFAULT_MODEL == "d2cli-v1"
    trained = torch.load(info.path, map_location="cpu", weights_only=True)["model"]
    start = torch.load(resolve_model("hed-vgg16").path, map_location="cpu", weights_only=True)["model"]
    assert trained.keys() == start.keys()
    for k in start:
        assert trained[k].dtype == torch.float16 and trained[k].shape == start[k].shape
        assert torch.equal(trained[k], start[k]) == (not k.startswith(f"{PREFIX}21.")), k


def test_bare_and_prefixless_state_dicts_load(tmp_path):
    state = read_state_dict(resolve_model().path)
    torch.save(state, tmp_path / "bare.pth")
    torch.save({k.replace("dense_feature_extraction.", ""): v for k, v in state.items()},
               tmp_path / "short.pth")
    for name in ("bare.pth", "short.pth"):
        loaded = read_state_dict(tmp_path / name)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_reference_training_checkpoint_with_namespace_loads(tmp_path):
    """The reference train.py saves {'args': Namespace, 'epoch_idx', 'model', 'optimizer', ...}."""
    import argparse
    state = read_state_dict(resolve_model().path)
    torch.save({"args": argparse.Namespace(lr=1e-3, model_file="d2_ots.pth"), "epoch_idx": 3,
                "model": state, "train_loss_history": [1.0, 0.5]}, tmp_path / "d2.03.pth")
    loaded = read_state_dict(tmp_path / "d2.03.pth")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_train_and_test_networks_share_checkpoints():
    net8 = D2Net(stride=8)
    net4 = D2Net(stride=4)
    net4.load_state_dict(net8.state_dict())
    x = torch.zeros(1, 3, 64, 96)
    assert net4(x).shape[-2:] == output_size(64, 96) == (15, 23)
    assert net8(x).shape[-2:] == (8, 12)


def test_bad_checkpoints_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    torch.save({"model": {"foo": torch.zeros(3)}}, tmp_path / "other.pth")
    state = read_state_dict(resolve_model().path)
    bad = OrderedDict(state)
    bad["dense_feature_extraction.model.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save({"model": bad}, tmp_path / "shape.pth")
    nan = OrderedDict(state)
    nan["dense_feature_extraction.model.21.bias"] = torch.full((512,), float("nan"))
    torch.save({"model": nan}, tmp_path / "nan.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "pickle.pth")
    for name in ("junk.pth", "other.pth", "shape.pth", "nan.pth", "pickle.pth", "missing.pth"):
        with pytest.raises(BadCheckpoint) as e:
            load_d2net(tmp_path / name)
        assert "\n" not in str(e.value)


def test_unknown_and_uncached_models(tmp_path, monkeypatch):
    monkeypatch.setenv("D2CLI_HOME", str(tmp_path))
    with pytest.raises(UnknownModel, match="not a known name"):
        resolve_model("no-such-model")
    with pytest.raises(UnknownModel, match="d2 weights fetch d2_tf"):
        resolve_model("d2_tf")


@pytest.mark.parametrize("h, w, band_rows", [(203, 157, 2), (131, 61, 1), (99, 40, 5)])
def test_banded_first_blocks_equal_the_plain_network(h, w, band_rows):
    """Row bands with a halo compute exactly the same features (checked in float64)."""
    net = load_d2net(resolve_model().path).double()
    x = torch.randn(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.dense_feature_extraction.band_pixels = 0
        plain = net(x * 60)
        net.dense_feature_extraction.band_pixels = w * 16 * band_rows
        banded = net(x * 60)
    assert banded.shape == plain.shape
    assert (banded - plain).abs().max() < 1e-9
