"""The checks of the arrays the drawing functions take: a wrong shape is a ValueError
naming the argument, before anything is drawn."""

from __future__ import annotations

import numpy as np


def check_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 array, or ValueError."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
        raise ValueError(f"{what}: expected an (H, W, 3) uint8 array, got {image.dtype} "
                         f"{image.shape}")
    return image


def check_rows(a: np.ndarray | None, cols: int, what: str, n: int | None = None) -> np.ndarray:
    """An (N, cols) array (N = ``n`` when given), or ValueError; None -> (0, cols)."""
    a = np.zeros((0, cols)) if a is None else np.asarray(a)
    if a.ndim != 2 or a.shape[1] != cols or (n is not None and len(a) != n):
        rows = "N" if n is None else str(n)
        raise ValueError(f"{what}: expected shape ({rows}, {cols}), got {a.shape}")
    return a


def check_values(a: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    """None, or an (n,) array, or ValueError."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{what}: expected shape ({n},), got {a.shape}")
    return a
