"""``d2 export``: a COLMAP model as COLMAP's text or binary files, or its points as PLY.

The text form is what COLMAP's GUI, ``colmap model_converter`` and most scripts read;
PLY opens in MeshLab or CloudCompare. Every output is written atomically: a folder is
filled under a temporary name and renamed, a PLY file goes through
:func:`~d2cli.io.atomic.write_atomic`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError, UsageError
from .io.atomic import move_into, new_temporary_dir, write_atomic
from .io.colmap_model import read_model

FORMATS = ("txt", "bin", "ply")


@dataclass
class ExportResult:
    out: Path
    format: str
    images: int
    points3D: int

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "images": self.images,
                "points3D": self.points3D}


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike,
                 format: str = "txt") -> ExportResult:
    """Write the model in ``model_dir`` to ``out``: a folder (txt, bin) or a .ply file."""
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r} ({', '.join(FORMATS)})")
    rec = read_model(model_dir)
    out = Path(out)
    if format == "ply":
        if out.is_dir():
            raise OutputError(f"{out}: is a folder; name the PLY file")
        with write_atomic(out, suffix=".ply") as tmp:
            rec.export_PLY(str(tmp))
    else:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        tmp = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = new_temporary_dir(out)
            (rec.write_text if format == "txt" else rec.write_binary)(str(tmp))
            move_into(tmp, out, [f.name for f in tmp.iterdir()])  # other files in out stay
        except OSError as e:
            raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, format, rec.num_reg_images(), rec.num_points3D())
