"""Choosing the torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``."""

from __future__ import annotations

import torch

from .errors import UsageError


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} requested but no CUDA GPU is available")
    return dev
