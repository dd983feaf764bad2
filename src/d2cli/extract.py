"""The extraction job: images -> features file (``d2 extract``).

Decoding and resizing run in background threads while the network works; images of
the same network-input size are batched through the trunk (``batch_size``); every
finished image goes to the crash-safe store, so a killed run resumes where it
stopped and one bad image never costs the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .device import pick_device
from .errors import BadImage, IncompatibleFeatures, UsageError, check_some_done
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageItem,
    collect_images,
    load_rgb,
    load_rgb_reduced,
    network_input_size,
    preprocess,
    read_image_size,
    resize_for_network,
)
from .io.features import FeatureFile, Features
from .io.h5store import H5Store
from .io.provenance import differences
from .jobs import ProgressFn, Stage, interruptible
from .model import load_d2net
from .precision import (
    autocast,
    bf16_is_fast,
    configure_fp32,
    uses_channels_last,
)
from .pyramid import Keypoints, extract_multiscale
from .retrieval import DEFAULT_METHOD as GLOBAL_METHOD
from .retrieval import METHOD_ATTR, pooled
from .settings import ExtractSettings
from .shard import Shard
from .weights import ModelInfo, resolve_model

# peak trunk memory per input pixel of the largest level: two 64-channel fp32 maps (conv1)
BYTES_PER_INPUT_PIXEL = 2 * 64 * 4


@dataclass
class ExtractResult:
    out: Path
    model: str
    precision: str = "fp32"  # the trunk's, as resolved for the device
    precision_note: str = ""  # why: "auto: CPU with AVX512-BF16", "requested", ...
    total: int = 0
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    keypoints: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        n = list(self.keypoints.values())
        return {
            "out": str(self.out), "model": self.model, "precision": self.precision,
            "precision_note": self.precision_note,
            "images": self.total,
            "extracted": len(self.extracted), "skipped": len(self.skipped),
            "failed": self.failed, "keypoints_mean": float(np.mean(n)) if n else 0.0,
            "keypoints_min": int(min(n)) if n else 0, "keypoints_max": int(max(n)) if n else 0,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(len(self.extracted) / self.seconds, 3) if self.seconds else 0.0,
            "interrupted": self.interrupted,
        }


class Extractor:
    """A loaded model plus settings: numpy RGB image -> :class:`Features`."""

    def __init__(self, model: str | os.PathLike | None = None,
                 settings: ExtractSettings | None = None, device: str = "auto",
                 memory_cap_gb: float | None = None) -> None:
        self.info: ModelInfo = resolve_model(model)
        self.device = pick_device(device)
        requested = (settings or ExtractSettings()).precision
        self.settings = (settings or ExtractSettings()).resolved(self.device)
        precision = self.settings.precision
        #: why this precision, for summaries: "auto: CPU with AVX512-BF16", "requested", ...
        self.precision_note = ("requested" if requested != "auto" else
                               f"auto: {bf16_is_fast(self.device) or 'no fast bf16 on ' + self.device.type}")
        self.net = load_d2net(self.info.path, use_relu=self.settings.use_relu).to(self.device)
        self.memory_cap = memory_cap_gb * 2**30 if memory_cap_gb else None
        configure_fp32(self.device, precision)
        self.channels_last = uses_channels_last(self.device, precision)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 512, h', w') features at the chosen precision.

        The map keeps the trunk's dtype and memory layout (bf16 NHWC under ``bf16``):
        detection compares values in that dtype and upcasts only what it gathers, which is
        exact and spares a full conversion pass over the map.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.settings.precision):
            return self.net(x)

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(H, W, 3) uint8 -> network input (3, h, w) float32 and the back-scaling factors."""
        s = self.settings
        r = resize_for_network(rgb, s.max_edge, s.max_sum_edges)
        if min(r.image.shape[:2]) < 8:
            raise BadImage(f"image of {rgb.shape[1]}x{rgb.shape[0]} is too small for the network")
        return preprocess(r.image, s.preprocessing), r.fact_i, r.fact_j

    @torch.no_grad()
    def run_batch(self, inputs: list[np.ndarray]) -> list[Keypoints]:
        """Network inputs of one size (each (3, h, w)) -> keypoints in input pixels.

        A batch over the memory cap, or one that runs out of GPU memory, is split in
        halves and retried; a single image that still does not fit raises.
        """
        h, w = inputs[0].shape[1:]
        level_pixels = h * w * max(self.settings.scales) ** 2
        if (len(inputs) > 1 and self.memory_cap is not None
                and len(inputs) * level_pixels * BYTES_PER_INPUT_PIXEL > self.memory_cap):
            return self._split(inputs)
        try:
            x = torch.from_numpy(np.stack(inputs)).to(self.device)
            return extract_multiscale(x, self._trunk, self.settings.scales)
        except torch.OutOfMemoryError:
            if len(inputs) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return self._split(inputs)

    def _split(self, inputs: list[np.ndarray]) -> list[Keypoints]:
        half = len(inputs) // 2
        return self.run_batch(inputs[:half]) + self.run_batch(inputs[half:])

    def finish(self, kp: Keypoints, fact_i: float, fact_j: float, size_wh: tuple[int, int]) -> Features:
        """Back to original-image pixels (x, y), top-K, file dtypes."""
        ij = kp.ij.cpu().numpy().astype(np.float32)
        ij[:, 0] *= fact_i  # float32 in place, as the reference (no half-pixel shift)
        ij[:, 1] *= fact_j
        scores = kp.scores.cpu().numpy().astype(np.float32)
        scales = kp.scales.cpu().numpy().astype(np.float32)
        desc = kp.descriptors
        k = self.settings.max_keypoints
        if k is not None and len(scores) > k:
            keep = np.sort(np.argsort(-scores, kind="stable")[:k])
            ij, scores, scales = ij[keep], scores[keep], scales[keep]
            desc = desc[torch.from_numpy(keep).to(desc.device)]
        # the file's dtype and (C, N) layout on the device: half the bytes to copy back
        # (the same round-to-nearest-even as numpy's cast)
        dtype = getattr(torch, self.settings.descriptor_dtype)
        stored = desc.to(dtype).t().contiguous().cpu().numpy()
        return Features(
            keypoints=np.ascontiguousarray(ij[:, ::-1]),
            descriptors=stored,
            scores=scores, scales=scales, image_size=np.array(size_wh, dtype=np.int64),
            # from the stored descriptors: `d2 global` on the file gives the same vector
            global_descriptor=pooled(stored, GLOBAL_METHOD),
        )

    def __call__(self, rgb: np.ndarray) -> Features:
        x, fi, fj = self.prepare(rgb)
        return self.finish(self.run_batch([x])[0], fi, fj, (rgb.shape[1], rgb.shape[0]))

    def file_attrs(self, image_root: Path) -> dict[str, Any]:
        return {
            "d2cli_version": __version__, "model": self.info.name,
            "model_sha256": self.info.sha256, "settings": self.settings.as_dict(),
            "image_root": str(image_root), METHOD_ATTR: GLOBAL_METHOD,
        }


@dataclass
class _Loaded:
    item: ImageItem
    x: np.ndarray | None = None
    fact: tuple[float, float] = (1.0, 1.0)
    size: tuple[int, int] = (0, 0)
    error: str | None = None


def _prefetch(extractor: Extractor, items: list[ImageItem], workers: int,
              max_pixels: int | None) -> Iterator[_Loaded]:
    """Decode + resize + preprocess in threads, yielding in order with bounded look-ahead."""

    def load(item: ImageItem) -> _Loaded:
        try:
            s = extractor.settings
            if s.decode == "reduced" and (wh := read_image_size(item.path)):
                rgb, (w, h) = load_rgb_reduced(
                    item.path, network_input_size(*wh, s.max_edge, s.max_sum_edges), max_pixels)
            else:
                rgb = load_rgb(item.path, max_pixels)
                w, h = rgb.shape[1], rgb.shape[0]
            x, fi, fj = extractor.prepare(rgb)
            # keypoints go back to original pixels, through the decode's reduction too
            return _Loaded(item, x, (fi * h / rgb.shape[0], fj * w / rgb.shape[1]), (w, h))
        except BadImage as e:  # the message names the file, whatever raised it
            msg = str(e)
            return _Loaded(item, error=msg if msg.startswith(str(item.path)) else f"{item.path}: {msg}")
        except MemoryError:
            return _Loaded(item, error=f"{item.path}: out of memory while decoding")

    if workers <= 0:
        yield from map(load, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: list[Future[_Loaded]] = []
        it = iter(items)
        for item in it:
            pending.append(pool.submit(load, item))
            if len(pending) > 2 * workers + 2:
                break
        while pending:
            done = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield done


def _batches(loaded: Iterator[_Loaded], batch_size: int) -> Iterator[list[_Loaded]]:
    """Group consecutive decoded images of the same input size; errors pass alone."""
    batch: list[_Loaded] = []
    for ld in loaded:
        if ld.x is None:
            yield [ld]
            continue
        if batch and (batch[0].x.shape != ld.x.shape or len(batch) >= batch_size):
            yield batch
            batch = []
        batch.append(ld)
    if batch:
        yield batch


def extract(
    inputs: Sequence[str | os.PathLike] = (),
    out: str | os.PathLike = "feats.h5",
    *,
    model: str | os.PathLike | None = None,
    settings: ExtractSettings | None = None,
    image_list: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 1,
    overwrite: bool = False,
    workers: int = 2,
    commit_every: int = 16,
    shard: Shard | None = None,
    memory_cap_gb: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: ProgressFn | None = None,
) -> ExtractResult:
    """Extract D2-Net features of images into an hloc-layout HDF5 file; resumable.

    Returns what was done; failed images are listed in ``result.failed`` (name -> reason)
    and do not stop the others. ``progress`` gets one event per image (stage ``extract``);
    Ctrl-C stops after the batch in flight and keeps what is finished
    (``result.interrupted``). With ``shard``, only that shard's images
    are extracted, into the shard's part file (images already in ``out`` are skipped).
    ``max_pixels``: larger images fail (see :func:`~d2cli.images.load_rgb`; 0: no limit).
    """
    t0 = time.perf_counter()
    root, items = collect_images(inputs, image_list, image_root)
    extractor = Extractor(model, settings, device, memory_cap_gb)
    attrs = extractor.file_attrs(root)
    out = Path(out)
    merged_done: set[str] = set()
    if shard is not None:
        items = shard.select(items, key=lambda it: it.name)
        if out.exists() and not overwrite:
            with FeatureFile(out) as ff:
                _check_same(ff.attrs, attrs, out)
                merged_done = set(ff.names)
        out = shard.part_path(out)
    if batch_size < 1:
        raise UsageError("batch size must be >= 1")
    result = ExtractResult(out=out, model=extractor.info.name,
                           precision=extractor.settings.precision,
                           precision_note=extractor.precision_note, total=len(items))
    store = H5Store(out, attrs=attrs, commit_every=commit_every)
    with store:
        existing = store.existing_attrs()
        if existing is not None and not overwrite:
            _check_same(existing, attrs, out)
        if overwrite and existing is not None and differences(existing, attrs):
            store.reset()  # settings changed: mixing old and new features is never right
        done = set() if overwrite else store.done() | merged_done
        unusable = [it for it in items if it.problem is not None]
        todo = [it for it in items if it.name not in done and it.problem is None]
        result.skipped = [it.name for it in items if it.name in done and it.problem is None]
        if batch_size > 1:
            todo = _bucket_by_size(todo, extractor.settings)
        stage = Stage(progress, "extract", unit="img")
        stage.start(len(todo) + len(unusable))
        for it in unusable:  # never opened: each fails alone, by name
            _fail(result, it.name, it.problem or "", stage)
        with interruptible() as stop:
            for batch in stop.each(_batches(_prefetch(extractor, todo, workers, max_pixels), batch_size)):
                if batch[0].error is not None:
                    _fail(result, batch[0].item.name, batch[0].error, stage)
                    continue
                try:
                    kps = extractor.run_batch([b.x for b in batch])
                except (RuntimeError, MemoryError) as e:  # e.g. out of memory on one huge image
                    for b in batch:
                        _fail(result, b.item.name, f"{b.item.path}: {str(e).splitlines()[0]}", stage)
                    continue
                for b, kp in zip(batch, kps, strict=True):
                    feats = extractor.finish(kp, *b.fact, b.size)
                    store.add(b.item.name, feats.as_arrays())
                    result.extracted.append(b.item.name)
                    result.keypoints[b.item.name] = len(feats)
                    stage.advance(b.item.name, keypoints=len(feats))
        result.interrupted = stop.requested
    check_some_done(result, len(result.extracted) + len(result.skipped), "images")
    result.seconds = time.perf_counter() - t0
    return result


def _bucket_by_size(items: list[ImageItem], settings: ExtractSettings) -> list[ImageItem]:
    """Order images so that equal network-input sizes are adjacent (batchable).

    Reads image headers only; an unreadable image keeps its place and fails later.
    """
    def size(item: ImageItem) -> tuple[int, int]:
        wh = read_image_size(item.path)  # None: reported later by the real decode
        return network_input_size(*wh, settings.max_edge, settings.max_sum_edges) if wh else (0, 0)

    sizes = {it.name: size(it) for it in items}
    return sorted(items, key=lambda it: sizes[it.name])  # stable: name order within a size


def _fail(result: ExtractResult, name: str, error: str, stage: Stage) -> None:
    result.failed[name] = error
    stage.advance(name, error=error)


def _check_same(existing: dict[str, Any], attrs: dict[str, Any], out: Path) -> None:
    diff = differences(existing, attrs)
    if diff:
        raise IncompatibleFeatures(
            f"{out} holds features made with other settings ({'; '.join(diff)}); "
            "use --overwrite to redo it or another --out")
