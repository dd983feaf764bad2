"""What d2cli accepts from an HDF5 file it did not write: the one gate every input read passes.

Nothing in an input file is trusted. HDF5 can make a dataset read *another* file (external
storage, external links, virtual datasets: ``/etc/passwd`` would become descriptors), and
a few bytes on disk can declare a dataset of gigabytes (chunks never written read as the
fill value). Every dataset d2cli reads from an input goes through :func:`read`, which

- accepts only datasets stored in the file itself, reached through hard links;
- refuses a declared size the file cannot hold (more than :data:`MAX_EXPANSION` times the
  bytes actually stored, once above :data:`SMALL_BYTES`) before allocating anything;
- checks the dtype kind and rank, and that floating-point values are finite.

Each refusal is one :class:`~d2cli.errors.BadFile` line naming the file and the entry, so
the job that reads it fails that item only.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from ..errors import BadFile

# a dataset may declare at most this many times the bytes it stores (compressed data,
# chunks never written read as fill values) once it is larger than SMALL_BYTES
MAX_EXPANSION = 64
SMALL_BYTES = 16 << 20

# the exponent bits of IEEE floats: all set = Inf or NaN (checked on the bits, because
# numpy's float16 arithmetic is scalar code and would cost more than the read)
_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000),
             np.dtype(np.float64): (np.uint64, 0x7FF0000000000000)}


def all_finite(a: np.ndarray) -> bool:
    """Whether a float array holds no NaN or Inf (any other dtype: True)."""
    bits = _EXPONENT.get(a.dtype.newbyteorder("="))
    if bits is None:
        return a.dtype.kind != "f" or bool(np.isfinite(a).all())
    uint, mask = bits
    v = np.ascontiguousarray(a).view(uint if a.dtype.isnative else np.dtype(uint).newbyteorder())
    return not bool(((v & mask) == mask).any())


def _name(group: h5py.Group, key: str) -> str:
    return f"{group.file.filename}: entry {group.name.lstrip('/')}/{key}"


def dataset(group: h5py.Group, key: str) -> h5py.Dataset | None:
    """The dataset ``key`` of ``group`` if it is a plain one stored in this file; None if absent.

    Raises BadFile for a link to elsewhere, a group in its place, external storage, a
    virtual dataset, or a declared size the file does not hold.
    """
    link = group.get(key, getlink=True)
    if link is None:
        return None
    where = _name(group, key)
    if not isinstance(link, h5py.HardLink):
        kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
        raise BadFile(f"{where} is {kind}; d2cli reads only data stored in the file itself")
    obj = group[key]
    if not isinstance(obj, h5py.Dataset):
        raise BadFile(f"{where} is not a dataset")
    if obj.is_virtual:
        raise BadFile(f"{where} is a virtual dataset (data in other files); refused")
    if obj.id.get_create_plist().get_external_count():
        raise BadFile(f"{where} keeps its data in external files; refused")
    declared = obj.size * obj.dtype.itemsize
    if declared > SMALL_BYTES:
        stored = obj.id.get_storage_size()
        if declared > MAX_EXPANSION * stored or stored > obj.file.id.get_filesize():
            raise BadFile(f"{where} declares {obj.shape} ({declared} bytes) but the file "
                          f"holds {stored} bytes of it; refused")
    return obj


def read(group: h5py.Group, key: str, *, kind: str = "f", ndim: int | None = None,
         finite: bool = True) -> np.ndarray | None:
    """Read one dataset through :func:`dataset`; None if absent.

    ``kind``: the accepted numpy dtype kinds ("f" float, "iu" integers, "fiu" numbers);
    ``ndim``: the rank it must have; ``finite``: refuse NaN/Inf.
    """
    ds = dataset(group, key)
    if ds is None:
        return None
    where = _name(group, key)
    if ds.dtype.kind not in kind:
        raise BadFile(f"{where} has dtype {ds.dtype}, expected "
                      + {"f": "floats", "iu": "integers"}.get(kind, "numbers"))
    if ndim is not None and ds.ndim != ndim:
        raise BadFile(f"{where} has shape {ds.shape}, expected {ndim} dimension(s)")
    try:
        a = ds[()]
    except (OSError, ValueError) as e:
        raise BadFile(f"{where} cannot be read ({e})") from None
    if finite and not all_finite(np.asarray(a)):
        raise BadFile(f"{where} holds NaN or Inf values")
    return a


def require(group: h5py.Group, key: str, **kw: Any) -> np.ndarray:
    """:func:`read` of a dataset that must be there."""
    a = read(group, key, **kw)
    if a is None:
        raise BadFile(f"{_name(group, key)} is missing")
    return a
