"""InLoc database scans: per-cutout XYZ maps in MATLAB ``.mat`` files (for ``d2 localize``).

InLoc layout (as hloc's ``localize_inloc`` reads it)::

    database/cutouts/<floor>/<scan>/<BLD>_cutout_<scan>_<yaw>_<pitch>.jpg      the image
    database/cutouts/<floor>/<scan>/<...>.jpg.mat                               XYZcut: H x W x 3
    database/alignments/<floor>/transformations/<BLD>_trans_<scan>.txt          P_after_GICP

``XYZcut`` holds the 3D point seen by each pixel (scan coordinates), NaN where the scan has
no depth. Optionally the points are mapped to the building's frame with the scan's 4x4
``P_after_GICP`` (lines 8-11 of the transformations file): X_w = P[:3,:3] X + P[:3,3].

The MAT reader needs no SciPy: version 5 files (MATLAB's default up to -v7, zlib-compressed
or not) are parsed here, version 7.3 files are HDF5 and read with h5py. Only numeric arrays
are decoded; other variables are skipped.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from .errors import BadFile

# MAT v5 element types (MATLAB "MAT-File Format", table 1-1)
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8",
              12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
# array classes that hold plain numbers (mxDOUBLE_CLASS .. mxUINT64_CLASS)
_MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4",
              14: "i8", 15: "u8"}
_H5_CLASSES = {b"double": "f8", b"single": "f4", b"int8": "i1", b"uint8": "u1", b"int16": "i2",
               b"uint16": "u2", b"int32": "i4", b"uint32": "u4", b"int64": "i8", b"uint64": "u8"}


# --------------------------------------------------------------------------- MAT files
def read_mat_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """One numeric variable of a MAT file (v5/v6/v7, or v7.3), in MATLAB's index order.

    Raises :class:`BadFile` with a one-line reason when the file or variable is unusable.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(128)
    except OSError as e:
        raise BadFile(f"{p}: cannot read ({e.strerror})") from None
    if len(head) < 128 or not head.startswith(b"MATLAB"):
        raise BadFile(f"{p}: not a MATLAB .mat file (version 5 or later)")
    version = head[124:126]
    if version in (b"\x00\x02", b"\x02\x00") or h5py.is_hdf5(p):
        return _read_mat73(p, name)
    return _read_mat5(p, head, name)


def _read_mat73(p: Path, name: str) -> np.ndarray:
    try:
        with h5py.File(p, "r") as f:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise BadFile(f"{p}: no variable {name!r}")
            ds = f[name]
            cls = ds.attrs.get("MATLAB_class", b"double")
            cls = cls.encode() if isinstance(cls, str) else bytes(cls)
            if cls not in _H5_CLASSES:
                raise BadFile(f"{p}: variable {name!r} is a MATLAB {cls.decode()}, not numbers")
            # HDF5 stores MATLAB's column-major array with the dimensions reversed
            return np.asarray(ds[()], dtype=_H5_CLASSES[cls]).transpose()
    except OSError as e:
        raise BadFile(f"{p}: unreadable MAT 7.3 (HDF5) file ({e})") from None


def _read_mat5(p: Path, head: bytes, name: str) -> np.ndarray:
    if head[126:128] == b"IM":
        order = "<"
    elif head[126:128] == b"MI":
        order = ">"
    else:
        raise BadFile(f"{p}: not a MAT version 5 file (no endian indicator)")
    data = p.read_bytes()[128:]
    pos = 0
    while pos + 8 <= len(data):
        mtype, nbytes = struct.unpack_from(order + "II", data, pos)
        body = data[pos + 8:pos + 8 + nbytes]
        pos += 8 + nbytes  # top-level elements: no padding after them
        if mtype == _MI_COMPRESSED:
            try:
                body = zlib.decompress(body)
            except zlib.error:
                raise BadFile(f"{p}: corrupt compressed variable") from None
            if len(body) < 8:
                continue
            mtype, nbytes = struct.unpack_from(order + "II", body, 0)
            body = body[8:8 + nbytes]
        if mtype != _MI_MATRIX:
            continue
        found = _parse_matrix(body, order, name, p)
        if found is not None:
            return found
    raise BadFile(f"{p}: no numeric variable {name!r}")


def _subelements(body: bytes, order: str) -> list[tuple[int, bytes]]:
    """The (type, data) sub-elements of a miMATRIX, honouring the small-element form."""
    out, pos = [], 0
    while pos + 8 <= len(body):
        first, second = struct.unpack_from(order + "II", body, pos)
        if first >> 16:  # small element: 2-byte size, 2-byte type, data in the next 4 bytes
            out.append((first & 0xFFFF, body[pos + 4:pos + 4 + (first >> 16)]))
            pos += 8
        else:
            out.append((first, body[pos + 8:pos + 8 + second]))
            pos += 8 + ((second + 7) // 8) * 8  # padded to 8 bytes
    return out


def _parse_matrix(body: bytes, order: str, name: str, p: Path) -> np.ndarray | None:
    """The array if this miMATRIX is the variable ``name`` and numeric, else None."""
    subs = _subelements(body, order)
    if len(subs) < 3:
        return None
    flags = struct.unpack_from(order + "I", subs[0][1], 0)[0]
    cls, is_complex = flags & 0xFF, bool(flags & 0x0800)
    if subs[2][1].decode("ascii", "replace") != name:
        return None
    if cls not in _MX_DTYPES or is_complex or len(subs) < 4:
        raise BadFile(f"{p}: variable {name!r} is not a real numeric array")
    dims = np.frombuffer(subs[1][1], dtype=order + "i4")
    mi_type, raw = subs[3]
    if mi_type not in _MI_DTYPES:
        raise BadFile(f"{p}: variable {name!r} has an unknown storage type {mi_type}")
    # MATLAB may store a double array in a smaller integer type when that is lossless
    values = np.frombuffer(raw, dtype=order + _MI_DTYPES[mi_type]).astype(_MX_DTYPES[cls])
    if values.size != int(np.prod(dims)):
        raise BadFile(f"{p}: variable {name!r} is truncated")
    return values.reshape(tuple(int(d) for d in dims), order="F")


# --------------------------------------------------------------------------- scans
def read_xyzcut(path: str | os.PathLike) -> np.ndarray:
    """A cutout's XYZ map, (H, W, 3) float64 with NaN where there is no 3D point."""
    xyz = read_mat_array(path, "XYZcut")
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise BadFile(f"{path}: XYZcut must be H x W x 3, got {' x '.join(map(str, xyz.shape))}")
    return np.asarray(xyz, dtype=np.float64)


def sample_xyz(xyz: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """XYZ at keypoints (x, y; pixel centres at integers), (N, 3), NaN where unknown.

    Bilinear between the four surrounding pixels when all of them have a 3D point;
    otherwise the nearest pixel's point (at a depth edge, mixing a foreground and a
    background point would invent a point in between); NaN outside the map, as hloc.
    """
    h, w = xyz.shape[:2]
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    x, y = kp[:, 0], kp[:, 1]
    inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    out = np.full((len(kp), 3), np.nan)
    if not inside.any():
        return out
    x, y = x[inside], y[inside]
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    bil = ((1 - fx) * (1 - fy) * xyz[y0, x0] + fx * (1 - fy) * xyz[y0, x1]
           + (1 - fx) * fy * xyz[y1, x0] + fx * fy * xyz[y1, x1])
    nearest = xyz[np.rint(y).astype(np.int64), np.rint(x).astype(np.int64)]
    ok = np.isfinite(bil).all(axis=1)
    out[inside] = np.where(ok[:, None], bil, nearest)
    out[~np.isfinite(out).all(axis=1)] = np.nan  # a partly-NaN point is no point
    return out


_CUTOUT = re.compile(r"^(?P<bld>[^_/]+)_cutout_(?P<scan>[^_/]+)_")


def alignment_path(alignments: str | os.PathLike, name: str) -> Path | None:
    """The transformations file of a cutout ``.../<floor>/<scan>/<BLD>_cutout_<scan>_...``."""
    parts = PurePosixPath(name).parts
    m = _CUTOUT.match(parts[-1])
    if m is None or len(parts) < 3:
        return None
    floor = parts[-3]
    return Path(alignments) / floor / "transformations" / f"{m['bld']}_trans_{m['scan']}.txt"


def read_alignment(path: str | os.PathLike) -> np.ndarray:
    """``P_after_GICP``: the 4x4 matrix on lines 8-11 of an InLoc transformations file."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
        P = np.array([[float(v) for v in ln.split()] for ln in lines[7:11]])
    except (OSError, ValueError):
        raise BadFile(f"{p}: not an InLoc transformations file (4x4 on lines 8-11)") from None
    if P.shape != (4, 4) or not np.isfinite(P).all():
        raise BadFile(f"{p}: not an InLoc transformations file (4x4 on lines 8-11)")
    return P
