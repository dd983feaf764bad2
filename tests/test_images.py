"""Decoding and the reference resize policy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from d2cli.errors import BadImage
from d2cli.images import bytescale, find_images, imresize, load_rgb, preprocess, resize_for_network


def _rgb(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_size_truncates_like_scipy():
    img = np.zeros((10, 2156, 3), np.uint8)
    out = imresize(img, 1600 / 2156)
    assert out.shape[1] == 1599  # 2156 * (1600/2156) = 1599.9999999999998 -> 1599


def test_resize_policy_cases():
    assert resize_for_network(np.zeros((1200, 1600, 3), np.uint8)).image.shape[:2] == (1200, 1600)
    r = resize_for_network(np.zeros((3024, 4032, 3), np.uint8))
    assert r.image.shape[:2] == (1200, 1600) and r.fact_i == 3024 / 1200
    # 2000x2000 -> 1600x1600 -> 1400x1400 (both rules fire)
    assert resize_for_network(np.zeros((2000, 2000, 3), np.uint8)).image.shape[:2] == (1400, 1400)


def test_second_resize_byte_scales_like_scipy():
    img = np.full((2000, 2000, 3), 100, np.uint8)
    img[:1000] = 150  # range 100..150 -> stretched to 0..255 before the second resize
    r = resize_for_network(img)
    assert r.image.min() == 0 and r.image.max() == 255
    assert np.array_equal(bytescale(np.array([0.0, 51.0, 102.0])), [0, 128, 255])  # 127.5 rounds up


def test_preprocessing_modes():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 255  # pure red
    caffe = preprocess(img, "caffe")
    assert caffe.dtype == np.float32 and caffe.shape == (3, 2, 2)
    assert np.allclose(caffe[:, 0, 0], [-103.939, -116.779, 255 - 123.68])  # BGR
    torch_pp = preprocess(img, "torch")
    assert np.allclose(torch_pp[:, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    with pytest.raises(ValueError):
        preprocess(img, "tf")


@pytest.mark.parametrize("mode", ["caffe", "torch", "none"])
def test_uint8_table_is_the_float64_arithmetic_bit_for_bit(mode):
    # every value in every channel, in distinct channels, plus a random photo-like image;
    # a float64 copy of the same image takes the arithmetic path
    every = np.stack([np.arange(256), np.arange(256)[::-1], (np.arange(256) * 7) % 256], axis=1)
    for img in (every.astype(np.uint8)[None], _rgb(31, 17, seed=3)):
        fast, slow = preprocess(img, mode), preprocess(img.astype(np.float64), mode)
        assert fast.dtype == slow.dtype == np.float32 and fast.flags.c_contiguous
        assert np.array_equal(fast, slow)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_every_pil_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(_rgb())
    if mode == "I;16":
        arr = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        im = Image.fromarray(arr)
        assert im.mode == "I;16"
        path = tmp_path / "x.png"
    else:
        im = base.convert(mode)
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    if mode in ("L", "I;16"):
        gray = np.asarray(base.convert("L"))
        assert np.abs(out[..., 0].astype(int) - gray).max() <= 1
        assert np.array_equal(out[..., 0], out[..., 2])


def test_exif_orientation_is_not_applied(tmp_path):
    im = Image.fromarray(_rgb(30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert load_rgb(tmp_path / "r.jpg").shape == (30, 50, 3)


def test_bad_files_raise_one_line_errors(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    Image.fromarray(_rgb()).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    for name in ("text.jpg", "trunc.jpg", "missing.png"):
        with pytest.raises(BadImage) as e:
            load_rgb(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_find_images_recursive_any_case(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("x.JPG", "a/y.png", "a/b/z.PpM", "a/notes.txt", ".hidden.jpg"):
        (tmp_path / p).write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert names == ["a/b/z.PpM", "a/y.png", "x.JPG"]


@pytest.mark.parametrize("w, h", [(1600, 1200), (4032, 3024), (6000, 4000), (2000, 2000),
                                  (1500, 1500), (2156, 1000), (10, 3000), (213, 320)])
def test_network_input_size_predicts_the_resize(w, h):
    from d2cli.images import network_input_size
    r = resize_for_network(np.zeros((h, w, 3), np.uint8))
    assert network_input_size(w, h) == (r.image.shape[1], r.image.shape[0])
