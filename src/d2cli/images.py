"""Image decoding, the reference resize policy and network preprocessing.

Everything here reproduces `extract_features.py` of the reference D2-Net code
(see docs/parity.md): Pillow decoding without EXIF rotation (COLMAP does not
rotate either), scipy<=1.2 ``imresize`` semantics on top of Pillow's BILINEAR
filter, and 'caffe' / 'torch' preprocessing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadImage, EmptyInput, InputNotFound, UsageError
from .io.pairs import read_name_list
from .settings import DEFAULT_MAX_PIXELS, PREPROCESSING, ExtractSettings

# Pillow warns above 89 MP and refuses above 179 MP with messages naming its own files;
# d2cli checks the size itself (load_rgb's max_pixels), so Pillow's check is off.
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406])
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225])


@dataclass
class ImageItem:
    name: str  # POSIX path relative to the image root: the key in the features file
    path: Path
    problem: str | None = None  # why this image cannot be read (it fails alone, unopened)


def image_under(root: str | os.PathLike, name: str) -> Path:
    """The file of image ``name`` under ``root``; BadImage when the name leaves it (``..``, an
    absolute path, a link to a file outside). Names come from files anyone can write."""
    root = Path(root)
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise BadImage(f"{name}: leaves the image root {root} (image names are relative to it, "
                       "without '..')")
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise BadImage(f"{name}: a link to {path.resolve()}, outside the image root {root}; "
                       "refused") from None
    return path


def _list_item(root: Path, name: str) -> ImageItem:
    """One ``--image-list`` name: a path under ``root``; one leaving it fails by name."""
    try:
        return ImageItem(name, image_under(root, name))
    except BadImage as e:
        return ImageItem(name, root / name, str(e))


def _found_item(root: Path, f: Path) -> ImageItem:
    """A file found under the inputs, named relative to ``root`` (links leaving it fail)."""
    try:
        return ImageItem(f.resolve().relative_to(root).as_posix(), f.resolve())
    except ValueError:
        return ImageItem(f.name, f, f"{f}: a link to {f.resolve()}, outside the image root "
                                    f"{root}; refused")


def collect_images(
    inputs: Sequence[str | os.PathLike] = (),
    image_list: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
) -> tuple[Path, list[ImageItem]]:
    """Resolve files/folders or a list file into (image root, items named relative to it).

    An item that cannot be used (a name leaving the root, a link to a file outside it,
    whitespace in its name) carries its ``problem`` and fails alone; the others go on.
    """
    if image_list is not None:
        lp = Path(image_list)
        names = read_name_list(lp, "image list")
        # without a root, names are relative to the list file (as COLMAP's image lists)
        root = Path(image_root).resolve() if image_root is not None else lp.resolve().parent
        items = [_list_item(root, n) for n in names]
    else:
        if not inputs:
            raise EmptyInput("no images given: pass files or folders, or --image-list")
        paths = [Path(p) for p in inputs]
        for p in paths:
            if not p.exists():
                raise InputNotFound(f"{p}: no such file or folder")
        if image_root is not None:
            root = Path(image_root).resolve()
        elif len(paths) == 1 and paths[0].is_dir():
            root = paths[0].resolve()
        else:
            parents = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
            root = Path(os.path.commonpath(parents))
        files: list[Path] = []
        for p in paths:
            if p.is_dir():
                files.extend(find_images(p))
            else:
                if not p.resolve().is_relative_to(root):
                    raise UsageError(f"{p} is not under the image root {root}")
                files.append(p)
        items = list({it.name: it for it in (_found_item(root, f) for f in files)}.values())
    if not items:
        where = image_list or ", ".join(map(str, inputs))
        raise EmptyInput(f"no images found in {where} ({'/'.join(IMAGE_EXTENSIONS)})")
    for it in items:
        if it.problem is None and any(c.isspace() for c in it.name):
            it.problem = f"image name {it.name!r} contains whitespace (pairs files cannot hold it)"
    return root, items


def load_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to an (H, W, 3) uint8 RGB array; raises BadImage with the reason.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images become RGB;
    EXIF orientation is ignored on purpose (COLMAP keeps the stored pixel grid).
    Images over ``max_pixels`` (default Pillow's own refusal size, ~179 MP; 0 or None:
    no limit) are refused from their header, before any pixel is decoded.
    """
    return _decode(Path(path), max_pixels, None)[0]


def load_rgb_reduced(path: str | os.PathLike, at_least: tuple[int, int],
                     max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, no full-size
    buffer), the smallest of those still at least ``at_least`` (W, H); other formats
    decode in full. Returns (RGB (h, w, 3) uint8, the original (W, H)).

    Memory stays bounded by the reduced size (a 180 MP JPEG for a 1600 px network input
    decodes to 1/8: 2.8 MP), so ``max_pixels`` applies to the decoded pixels. The pixels
    differ from a full decode followed by the reference resize: not reference-exact.
    """
    return _decode(Path(path), max_pixels, at_least)


def check_regular_file(p: Path) -> None:
    """Refuse what is not a regular file before opening it: a FIFO would block forever, a
    device would never end."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise BadImage(f"{p}: no such file") from None
    except OSError as e:
        raise BadImage(f"{p}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a device or socket")
        raise BadImage(f"{p}: is {kind}, not an image file; refused without opening it")


def _decode(p: Path, max_pixels: int | None, at_least: tuple[int, int] | None
            ) -> tuple[np.ndarray, tuple[int, int]]:
    check_regular_file(p)
    try:
        with Image.open(p) as im:
            size = im.size
            if at_least is not None and im.format == "JPEG":
                im.draft("RGB", (max(1, at_least[0]), max(1, at_least[1])))
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise BadImage(f"{p}: {w}x{h} is {w * h / 1e6:.0f} MP, over the limit of "
                               f"{max_pixels / 1e6:.0f} MP (--max-pixels N raises it, 0 lifts it)")
            im.load()
            return _to_rgb(im), size
    except FileNotFoundError:
        raise BadImage(f"{p}: no such file") from None
    except UnidentifiedImageError:
        raise BadImage(f"{p}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{p}: cannot decode ({e})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        g = np.clip(np.round(a * 255.0 if a.max() <= 1.0 else a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "L":
        g = np.asarray(im)
        return np.repeat(g[:, :, None], 3, axis=2)  # as the reference: gray repeated
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")
    else:
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(W, H) from the image header without decoding the pixels; None if unreadable."""
    try:
        check_regular_file(Path(path))
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError, BadImage):
        return None


def imresize(image: np.ndarray, factor: float) -> np.ndarray:
    """scipy<=1.2 ``misc.imresize(image, factor)`` (bilinear) on an (H, W, 3) array -> uint8.

    Size = float64 product truncated toward zero; a non-uint8 input is first
    byte-scaled to 0..255 over its global min/max, as scipy's ``toimage`` did.
    """
    if image.dtype != np.uint8:
        image = bytescale(image)
    h, w = image.shape[:2]
    size = _scaled_size(w, h, factor)
    if min(size) < 1:
        raise BadImage(f"image of {w}x{h} would be resized to {size[0]}x{size[1]}")
    return np.asarray(Image.fromarray(image).resize(size, resample=Image.BILINEAR))


def _scaled_size(w: int, h: int, factor: float) -> tuple[int, int]:
    """scipy's output size: (W, H) * factor as a float64 product, truncated toward zero."""
    sw, sh = (np.array([w, h]) * factor).astype(int)
    return int(sw), int(sh)


def network_input_size(w: int, h: int, max_edge: int = ExtractSettings.max_edge,
                       max_sum_edges: int = ExtractSettings.max_sum_edges) -> tuple[int, int]:
    """(W, H) of the network input that ``resize_for_network`` makes of a W x H image."""
    if max(h, w, 3) > max_edge:
        w, h = _scaled_size(w, h, max_edge / max(h, w, 3))
    if h + w > max_sum_edges:
        w, h = _scaled_size(w, h, max_sum_edges / (h + w))
    return w, h


def bytescale(data: np.ndarray) -> np.ndarray:
    """scipy<=1.2 ``bytescale`` with default arguments: min..max -> 0..255, uint8."""
    cmin, cmax = data.min(), data.max()
    scale = 255.0 / ((cmax - cmin) or 1)
    return (np.clip((data - cmin) * scale, 0, 255) + 0.5).astype(np.uint8)


@dataclass
class Resized:
    """The network input (before preprocessing) and how it maps back to the original."""

    image: np.ndarray  # (h, w, 3), uint8 or float64 as the reference leaves it
    fact_i: float  # original rows / resized rows
    fact_j: float  # original cols / resized cols


def resize_for_network(image: np.ndarray, max_edge: int = ExtractSettings.max_edge,
                       max_sum_edges: int = ExtractSettings.max_sum_edges) -> Resized:
    """The reference resize policy: cap the longest edge, then the sum of both edges.

    The first test uses ``max(image.shape)`` (channel count included, as the
    reference); the second runs on the already-reduced image.
    """
    r: np.ndarray = image
    if max(r.shape) > max_edge:
        r = imresize(r, max_edge / max(r.shape)).astype(np.float64)
    if r.shape[0] + r.shape[1] > max_sum_edges:
        r = imresize(r, max_sum_edges / (r.shape[0] + r.shape[1])).astype(np.float64)
    return Resized(r, image.shape[0] / r.shape[0], image.shape[1] / r.shape[1])


def preprocess(image: np.ndarray, mode: str = "caffe") -> np.ndarray:
    """(H, W, 3) RGB 0..255 -> (3, H, W) float32 network input.

    caffe: BGR minus the ImageNet mean, 0..255 range. torch: RGB /255, mean/std.
    Computed in float64 and cast once, as the reference does. A uint8 image takes each
    channel's value from a 256-entry table of that same arithmetic (identical numbers,
    a few times faster: the float64 pass cost a third of the bf16 trunk's post-processing).
    """
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        table = _preprocess_table(mode)  # (3, 256): output channel c for each input value
        source = (2, 1, 0) if mode == "caffe" else (0, 1, 2)  # caffe: BGR from RGB
        return np.stack([table[c][image[..., s]] for c, s in enumerate(source)])
    return _preprocess_arithmetic(image, mode)


_TABLES: dict[str | None, np.ndarray] = {}


def _preprocess_table(mode: str | None) -> np.ndarray:
    """:func:`_preprocess_arithmetic` of every uint8 value, per output channel: (3, 256)."""
    if mode not in _TABLES:
        every = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
        _TABLES[mode] = _preprocess_arithmetic(every, mode)[:, 0, :]
    return _TABLES[mode]


def _preprocess_arithmetic(image: np.ndarray, mode: str | None) -> np.ndarray:
    x = np.transpose(image.astype(np.float32), (2, 0, 1))
    if mode == "caffe":
        x = x[::-1] - CAFFE_MEAN_BGR.reshape(3, 1, 1)
    elif mode == "torch":
        x = x / np.float32(255.0)
        x = (x - TORCH_MEAN_RGB.reshape(3, 1, 1)) / TORCH_STD_RGB.reshape(3, 1, 1)
    elif mode in ("none", None):
        pass
    else:
        raise ValueError(f"unknown preprocessing {mode!r} (choose from {', '.join(PREPROCESSING)})")
    return np.ascontiguousarray(x, dtype=np.float32)


def find_images(root: str | os.PathLike) -> list[Path]:
    """Image files under a folder, recursively, sorted by relative POSIX path."""
    root = Path(root)
    found = [
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
