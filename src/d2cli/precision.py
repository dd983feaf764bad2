"""Numeric precision of the network and the matcher: the one place that decides it.

``auto`` (the default) runs the VGG trunk in bf16 where the device has fast bf16
arithmetic, and in fp32 everywhere else:

- a CPU with AMX-BF16 or AVX512-BF16 instructions (Intel Sapphire Rapids and later,
  AMD Zen 4 and later): oneDNN runs bf16 convolutions 3-5x faster than fp32 there;
  without them bf16 is emulated and slower than fp32;
- a CUDA GPU of compute capability 8.0 or newer (Ampere and later): bf16 tensor cores.

``fp32`` is exact: bit-for-bit the reference code's arithmetic (TF32 is turned off on
GPUs). ``tf32``, ``bf16`` and ``fp16`` force that precision on any device. Detection,
sub-pixel refinement and descriptor sampling compare values in the trunk's dtype (exact)
and do all arithmetic in fp32. The matcher's ``auto`` is decided in :mod:`d2cli.mnn`
(bf16 products only on CPUs, where they are faster).
The precision actually used (never ``auto``) is what a features file records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # torch is imported where it is used: `d2 pairs` and friends start without it
    import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
HALF_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # names of the torch dtypes


@lru_cache(maxsize=1)
def cpu_bf16_instructions() -> str | None:
    """The CPU's native bf16 instruction set (``"AMX-BF16"``, ``"AVX512-BF16"``) or None."""
    import torch

    flags: dict[str, bool] = {}
    try:  # PyTorch's own cpuinfo reading (any OS)
        flags = dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError, TypeError):
        try:  # Linux without that private API
            text = Path("/proc/cpuinfo").read_text()
            words = set(text.split())
            flags = {"amx_bf16": "amx_bf16" in words, "avx512_bf16": "avx512_bf16" in words}
        except OSError:
            return None
    if flags.get("amx_bf16"):
        return "AMX-BF16"
    if flags.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


def fast_bf16_reason(device_type: str, cpu_isa: str | None = None,
                     cuda_capability: tuple[int, int] | None = None) -> str | None:
    """The policy: why bf16 is fast on such a device (a short reason), or None.

    ``cpu_isa``: the CPU's native bf16 instructions (:func:`cpu_bf16_instructions`);
    ``cuda_capability``: (major, minor) of the GPU.
    """
    if device_type == "cuda" and cuda_capability is not None and cuda_capability[0] >= 8:
        return f"CUDA compute capability {cuda_capability[0]}.{cuda_capability[1]}"
    if device_type == "cpu" and cpu_isa:
        return f"CPU with {cpu_isa}"
    return None


def bf16_is_fast(device: torch.device) -> str | None:
    """Why bf16 is fast on ``device`` (a short reason), or None where it is not."""
    import torch

    if device.type == "cuda":
        return fast_bf16_reason("cuda", cuda_capability=torch.cuda.get_device_capability(device))
    if device.type == "cpu" and torch.backends.mkldnn.is_available():  # oneDNN runs bf16
        return fast_bf16_reason("cpu", cpu_isa=cpu_bf16_instructions())
    return None


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete precision ``precision`` means on ``device`` (``auto`` decided here)."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_fast(device) else "fp32"


def configure_fp32(device: torch.device, precision: str) -> None:
    """fp32 means fp32: cuDNN and cuBLAS would otherwise use TF32 and break parity."""
    import torch

    if device.type == "cuda":
        allow = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = allow
        torch.backends.cuda.matmul.allow_tf32 = allow


def uses_channels_last(device: torch.device, precision: str) -> bool:
    """NHWC activations: what oneDNN's bf16 kernels and GPU tensor cores run fastest.

    fp32 keeps NCHW on every device: the reference's layout and summation order.
    """
    return precision in HALF_DTYPES or (device.type == "cuda" and precision == "tf32")


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed network calls at ``precision`` (a resolved one)."""
    import torch

    half = HALF_DTYPES.get(precision)
    ctx = (torch.autocast(device.type, dtype=getattr(torch, half)) if half is not None
           else nullcontext())
    with ctx:
        yield
