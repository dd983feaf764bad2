"""The training loop of ``d2 train``: Adam on the loss of ``loss.py``, resumable bit for bit.

Output folder::

    state.pt                  everything needed to resume (weights, Adam, step, RNG states,
                              settings), rewritten atomically every --checkpoint-every steps,
                              at each epoch end and on Ctrl-C / SIGTERM
    checkpoints/d2.NN.pth     weights after epoch NN, official {'model': state_dict}, fp32
    d2.best.pth               the epoch with the lowest validation loss (only when it beats
                              the untrained model, as the reference)
    d2.final.pth              at the end: the best epoch (else the last), float16, ready for
                              ``d2 extract --model``
    log.jsonl                 one JSON object per logged step, validation and checkpoint

Every training pair is a pure function of (seed, step, slot) and every validation pair of
(seed, index): resuming needs only the step counter, the weights and Adam's state, and
continues exactly as an uninterrupted run would (same floating-point operations).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadFile, OutputError, UsageError
from ..images import PREPROCESSING, preprocess
from ..io.atomic import write_atomic
from ..io.lock import exclusive_lock
from ..jobs import ProgressFn, Stage, interruptible
from ..model import CONV_INDICES, CONV_NAMES, PREFIX, D2Net, read_state_dict
from ..precision import autocast, check_precision, resolve_precision, uses_channels_last
from ..weights import DEFAULT_MODEL, resolve_model
from .loss import MIN_MATCHES, pair_loss, pixels_to_cells
from .soft_detection import soft_detection_scores
from .sources import PairSource, TrainPair, open_source, split_items

STATE_VERSION = 1
SPARSE_MIN_MATCHES = 16  # COLMAP tracks give tens of points per crop, not ~1000 cells


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run (``epochs`` may grow on resume)."""

    data: tuple[str, ...]  # [kind:]PATH of each source (see sources.open_source)
    init: str = DEFAULT_MODEL  # starting weights: model name or .pth path
    train_layers: str = "conv4_3"  # e.g. conv4_3 (the paper), conv4, conv3_3,conv4, all
    lr: float = 1e-3
    epochs: int = 10
    steps_per_epoch: int = 500
    batch_size: int = 1  # pairs per step
    crop: int = 256
    margin: float = 1.0
    safe_radius: int = 4
    min_matches: int | None = None  # None: 128 for dense sources, 16 for COLMAP tracks
    val_pairs: int = 32
    val_fraction: float = 0.1  # of each source's items, held out for validation
    seed: int = 1
    preprocessing: str = "caffe"
    max_edge: int = 1024  # colmap / homography sources: images resized to fit
    photometric: float | None = None  # None: 1 for homography, 0 (as the paper) otherwise
    checkpoint_every: int = 50  # steps between state saves
    relu_descriptors: bool = False  # loss on relu(F) as matched at test time (reference: raw F)
    spread: float = 0.0  # weight of the spread-out regulariser (loss.spread_loss); 0: paper
    warp: float = 1.0  # homography sources: scale of the random homographies' ranges
    # of the network's forward and backward pass (bf16 autocast; soft detection and the
    # loss stay fp32). fp32 by default: the published d2cli-v1 was trained so
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not self.data:
            raise UsageError("no training data given")
        for name, low in (("epochs", 1), ("steps_per_epoch", 1), ("batch_size", 1),
                          ("checkpoint_every", 1), ("safe_radius", 0), ("val_pairs", 0)):
            if getattr(self, name) < low:
                raise UsageError(f"{name.replace('_', '-')} must be >= {low}")
        if self.crop < 64 or self.crop % 8:
            raise UsageError("crop must be a multiple of 8, at least 64")
        if not (0 < self.warp <= 3):
            raise UsageError("warp must be in (0, 3]")
        if not (self.spread >= 0 and math.isfinite(self.spread)):
            raise UsageError("spread must be a number >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError("lr must be a positive number")
        if not 0 <= self.val_fraction < 1:
            raise UsageError("val-fraction must be in [0, 1)")
        if self.preprocessing not in PREPROCESSING:
            raise UsageError(f"preprocessing must be one of {', '.join(PREPROCESSING)}")
        parse_layers(self.train_layers)

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the saved one."""
        d = asdict(self)
        d.pop("epochs")
        d.pop("checkpoint_every")
        d["data"] = list(d["data"])
        return d


def parse_layers(spec: str) -> list[str]:
    """'conv4_3' | 'conv4' (conv4_1..3) | 'conv3_3,conv4' | 'all' -> conv layer names."""
    chosen: list[str] = []
    for tok in (t.strip() for t in spec.split(",")):
        names = (list(CONV_NAMES) if tok == "all"
                 else [n for n in CONV_NAMES if n == tok or n.startswith(tok + "_")])
        if not tok or not names:
            raise UsageError(f"unknown layer {tok!r} in --train-layers (use e.g. conv4_3, conv4, "
                             "conv3_3,conv4 or all)")
        chosen += [n for n in names if n not in chosen]
    return [n for n in CONV_NAMES if n in chosen]


@dataclass
class TrainResult:
    out: Path
    steps: int
    epochs: int
    resumed_from: int  # step the run started at (0: fresh)
    last_loss: float | None
    val_losses: dict[int, float]  # epoch -> validation loss (0 = before training)
    best_epoch: int | None
    final: Path | None
    skipped_samples: int
    seconds: float
    interrupted: bool = False
    trainable: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # the run protocol's (skips are counted)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["final"] = str(self.final) if self.final else None
        d["val_losses"] = {str(k): v for k, v in self.val_losses.items()}
        return d


class Trainer:
    """D2-Net at train time (stride 8, raw conv4_3) + soft detection + loss, with Adam."""

    def __init__(self, settings: TrainSettings, out: str | os.PathLike) -> None:
        self.s = settings
        self.out = Path(out)
        opts: dict[str, Any] = {"max_edge": settings.max_edge, "warp": settings.warp}
        if settings.photometric is not None:
            opts["photometric"] = settings.photometric
        self.sources: list[PairSource] = [open_source(spec, **opts) for spec in settings.data]
        self.splits = [split_items(len(src), settings.val_fraction, settings.seed)
                       for src in self.sources]
        if not any(tr for tr, _ in self.splits):
            raise UsageError("no training items left after holding out the validation split")
        self.net = D2Net(stride=8, use_relu=False)  # the loss wants raw conv4_3 activations
        self.init_model = resolve_model(settings.init)
        self.net.load_state_dict(read_state_dict(self.init_model.path), strict=True)
        self.device = torch.device("cpu")
        self.precision = resolve_precision(settings.precision, self.device)
        self.channels_last = uses_channels_last(self.device, self.precision)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.trainable = parse_layers(settings.train_layers)
        params = []
        for idx, name in zip(CONV_INDICES, CONV_NAMES, strict=True):
            conv = self.net.dense_feature_extraction.model[idx]
            for p in conv.parameters():
                p.requires_grad_(name in self.trainable)
                if name in self.trainable:
                    params.append(p)
        self.optimizer = torch.optim.Adam(params, lr=settings.lr)
        self.step = 0
        self.val_losses: dict[int, float] = {}
        self.best_epoch: int | None = None
        self.skipped = 0
        self._val_pairs: list[TrainPair] | None = None

    # ------------------------------------------------------------------ data
    def min_matches(self, source: PairSource) -> int:
        if self.s.min_matches is not None:
            return self.s.min_matches
        return MIN_MATCHES if source.dense else SPARSE_MIN_MATCHES

    def _draw(self, rng: np.random.Generator, validation: bool) -> tuple[PairSource, TrainPair
                                                                          | None]:
        """One pair: a source (each with equal chance), an item of its split, a random pair."""
        usable = [k for k, (tr, va) in enumerate(self.splits) if (va if validation else tr)]
        k = usable[int(rng.integers(len(usable)))]
        items = self.splits[k][1 if validation else 0]
        src = self.sources[k]
        return src, src.pair(items[int(rng.integers(len(items)))], rng, self.s.crop)

    def training_pairs(self, step: int) -> list[tuple[PairSource, TrainPair | None]]:
        return [self._draw(np.random.default_rng([self.s.seed, 0, step, slot]), False)
                for slot in range(self.s.batch_size)]

    def validation_pairs(self) -> list[TrainPair]:
        if self._val_pairs is None:
            self._val_pairs = []
            if any(va for _, va in self.splits):
                for k in range(self.s.val_pairs):
                    src, p = self._draw(np.random.default_rng([self.s.seed, 1, k]), True)
                    if p is not None and self._matches(src, p) is not None:
                        self._val_pairs.append(p)
        return self._val_pairs

    def _matches(self, src: PairSource, p: TrainPair) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pair's correspondences as feature cells (N, 2) x 2, or None if too few."""
        h = w = self.s.crop // 8
        c1, in1 = pixels_to_cells(p.pos1, h, w)
        c2, in2 = pixels_to_cells(p.pos2, h, w)
        keep = in1 & in2
        if int(keep.sum()) < self.min_matches(src):
            return None
        return c1[keep], c2[keep]

    # ------------------------------------------------------------------ loss
    def batch_loss(self, batch: list[tuple[PairSource, TrainPair | None]]) -> tuple[
            torch.Tensor | None, int]:
        """Mean loss over the usable pairs of a batch -> (loss or None, pairs skipped)."""
        usable = []
        for src, p in batch:
            m = self._matches(src, p) if p is not None else None
            if m is not None:
                usable.append((p, m))
        skipped = len(batch) - len(usable)
        if not usable:
            return None, skipped
        x = np.stack([preprocess(im, self.s.preprocessing)
                      for p, _ in usable for im in (p.image1, p.image2)])
        xt = torch.from_numpy(x)
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            feats = self.net(xt)  # (2B, 512, h, w), raw conv4_3
        feats = feats.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        scores = soft_detection_scores(feats)  # (2B, h, w)
        desc = torch.relu(feats) if self.s.relu_descriptors else feats
        losses = []
        for b, (_, (c1, c2)) in enumerate(usable):
            loss = pair_loss(desc[2 * b], desc[2 * b + 1], scores[2 * b], scores[2 * b + 1],
                             c1, c2, self.s.margin, self.s.safe_radius, self.s.spread)
            if loss is None:
                skipped += 1
            else:
                losses.append(loss)
        return (torch.stack(losses).mean() if losses else None), skipped

    def train_step(self) -> float | None:
        """One optimiser step on the pairs of ``self.step``; returns the loss (None: skipped)."""
        self.net.train()
        loss, skipped = self.batch_loss(self.training_pairs(self.step))
        self.skipped += skipped
        value = None
        if loss is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            value = float(loss.detach())
        self.step += 1
        return value

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss over the fixed validation pairs (None when there are none)."""
        self.net.eval()
        values = []
        for p in self.validation_pairs():
            loss, _ = self.batch_loss([(self._source_of(p), p)])
            if loss is not None:
                values.append(float(loss))
        return float(np.mean(values)) if values else None

    def _source_of(self, p: TrainPair) -> PairSource:
        return next(s for s in self.sources if s.kind == p.source)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "version": STATE_VERSION,
            "settings": self.s.resume_key(),
            "epochs": self.s.epochs,
            "step": self.step,
            "skipped": self.skipped,
            "val_losses": {str(k): v for k, v in self.val_losses.items()},
            "best_epoch": self.best_epoch,
            "model": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                          int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": [random.getstate()[0], list(random.getstate()[1])],
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        new = self.s.resume_key()
        # a setting added after the state was written ran at its default then
        defaults = {f.name: f.default for f in fields(TrainSettings)
                    if f.default is not MISSING and f.name in new}
        old = {**defaults, **(state.get("settings") or {})}
        if old != new:
            diff = [k for k in new if old.get(k) != new[k]]
            raise UsageError(
                f"{self.out}: holds a run with other settings ({', '.join(diff) or 'version'}); "
                "use the same options to resume, or --overwrite to start again")
        self.net.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.skipped = int(state["skipped"])
        self.val_losses = {int(k): float(v) for k, v in state["val_losses"].items()}
        self.best_epoch = state["best_epoch"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
        random.setstate((rng["python"][0], tuple(rng["python"][1]), None))

    def official_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        sd = self.net.state_dict()
        return {"model": {k: sd[k].detach().to(dtype).contiguous().clone() for k in sd
                          if k.startswith(PREFIX)}}


def _atomic_save(obj: Any, path: Path) -> None:
    with write_atomic(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def _read_log(path: Path, upto_step: int) -> list[str]:
    """Log lines of steps <= upto_step (a resumed run redoes the steps after its last state)."""
    if not path.is_file():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto_step:
                keep.append(line)
        except ValueError:
            continue  # a line cut by a kill
    return keep


def train(settings: TrainSettings, out: str | os.PathLike, overwrite: bool = False,
          max_steps: int | None = None, progress: ProgressFn | None = None) -> TrainResult:
    """Train (or resume training) into the folder ``out``; see the module docstring.

    max_steps stops after that many steps in this call (state saved), for tests and
    time-boxed runs. Raises UsageError, OutputError, OutputLocked, BadFile, and the
    data/model errors of the sources and the registry.
    """
    t0 = time.perf_counter()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot write here ({e.strerror})") from None
    with exclusive_lock(out / ".lock", busy=f"{out}: another d2 train is writing here",
                        unwritable=f"{out}: cannot write here", remove=False), _deterministic():
        return _train_locked(settings, out, overwrite, max_steps, progress, t0)


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels while training, for bit-identical resumes and reruns.

    With several threads some CPU backward kernels accumulate in a scheduling-dependent
    order: two identical 6-step runs on 2 threads gave different weights (identical on one
    thread, or with this mode). The caller's setting is restored afterwards.
    """
    old, warn = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=warn)


def _train_locked(settings: TrainSettings, out: Path, overwrite: bool, max_steps: int | None,
                  progress: ProgressFn | None, t0: float) -> TrainResult:
    state_path, log_path = out / "state.pt", out / "log.jsonl"
    if overwrite:
        for p in [state_path, log_path, out / "d2.best.pth", out / "d2.final.pth",
                  *(out / "checkpoints").glob("d2.*.pth")]:
            p.unlink(missing_ok=True)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    tr = Trainer(settings, out)
    if state_path.is_file():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file
            raise BadFile(f"{state_path}: not a readable training state ({e.__class__.__name__}); "
                          "use --overwrite to start again") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise BadFile(f"{state_path}: not a d2 train state file; use --overwrite")
        tr.load_state(state)
    start = tr.step
    log_lines = _read_log(log_path, start)
    log_path.write_text("".join(line + "\n" for line in log_lines))
    log = open(log_path, "a")

    def emit(event: str, **info: Any) -> None:
        log.write(json.dumps({"event": event, "step": tr.step, **info}) + "\n")
        log.flush()

    total = settings.epochs * settings.steps_per_epoch
    spe = settings.steps_per_epoch
    stage = Stage(progress, "train", unit="steps")
    stage.start(total, done=start)
    emit("start", total=total, resumed=start, trainable=tr.trainable,
         init=str(tr.init_model.name), sources=[s.describe() for s in tr.sources],
         val_pairs=len(tr.validation_pairs()))

    def end_epoch(epoch: int) -> None:
        val = tr.validate()
        if val is not None:
            tr.val_losses[epoch] = val
        best = min(tr.val_losses.values()) if tr.val_losses else None
        improved = epoch > 0 and val is not None and val <= best and all(
            val < v for e, v in tr.val_losses.items() if e != epoch)
        if epoch > 0:
            _atomic_save(tr.official_state_dict(), out / "checkpoints" / f"d2.{epoch:02d}.pth")
            if improved:
                tr.best_epoch = epoch
                _atomic_save(tr.official_state_dict(), out / "d2.best.pth")
        emit("epoch", epoch=epoch, val_loss=val, best_epoch=tr.best_epoch)
        stage.say(f"epoch {epoch}: validation loss {'-' if val is None else f'{val:.4f}'}")

    last_loss: float | None = None
    done_here = 0
    window: list[float] = []
    with interruptible() as flag:
        if tr.step == 0 and 0 not in tr.val_losses:
            end_epoch(0)
            _atomic_save(tr.state(), state_path)
        while tr.step < total:
            if flag.requested or (max_steps is not None and done_here >= max_steps):
                break
            t_step = time.perf_counter()
            loss = tr.train_step()
            done_here += 1
            if loss is not None:
                last_loss = loss
                window.append(loss)
            stage.advance(loss=loss, seconds=time.perf_counter() - t_step)
            if tr.step % 10 == 0 or tr.step == total:
                emit("train", epoch=(tr.step - 1) // spe + 1,
                     loss=float(np.mean(window)) if window else None, skipped=tr.skipped)
                window = []
            if tr.step % spe == 0:
                end_epoch(tr.step // spe)
                _atomic_save(tr.state(), state_path)
            elif tr.step % settings.checkpoint_every == 0:
                _atomic_save(tr.state(), state_path)
        _atomic_save(tr.state(), state_path)
    interrupted = flag.requested  # a second Ctrl-C mid-step: the state file is the last whole one
    final = None
    if tr.step >= total:
        src = (out / "d2.best.pth" if tr.best_epoch is not None
               else out / "checkpoints" / f"d2.{tr.step // spe:02d}.pth")
        sd = read_state_dict(src)
        final = out / "d2.final.pth"
        _atomic_save({"model": {k: v.half() for k, v in sd.items()}}, final)
        emit("done", final=str(final), best_epoch=tr.best_epoch)
    log.close()
    return TrainResult(
        out=out, steps=tr.step, epochs=settings.epochs, resumed_from=start, last_loss=last_loss,
        val_losses=dict(tr.val_losses), best_epoch=tr.best_epoch, final=final,
        skipped_samples=tr.skipped, seconds=time.perf_counter() - t0, interrupted=interrupted,
        trainable=tr.trainable)



