"""COLMAP model folders (cameras/images/points3D .bin or .txt): the one reader."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import BadFile, InputNotFound


def read_model(model_dir: str | os.PathLike, what: str = "COLMAP model") -> Any:
    """``pycolmap.Reconstruction`` of a folder, or a one-line BadFile / InputNotFound."""
    import pycolmap  # heavy; only the commands that read models pay for it

    p = Path(model_dir)
    if not p.is_dir():
        raise InputNotFound(f"{p}: {what} folder not found")
    if not any((p / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
        raise BadFile(f"{p}: no COLMAP model here (cameras.bin or cameras.txt)")
    try:
        return pycolmap.Reconstruction(str(p))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with C++ text
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        reason = re.sub(r"^\s*\[[^]]*\]\s*", "", lines[0]) if lines else e.__class__.__name__
        raise BadFile(f"{p}: not a readable COLMAP model ({reason or e.__class__.__name__})") from None
