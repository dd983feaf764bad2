"""Timing shared by the benchmark scripts (imported: benchmarks/ is on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """One warm-up call each, then ``repeats`` alternating rounds; the best seconds of each.

    Alternating makes the other processes of a shared machine disturb every function alike.
    """
    out = {}
    for k, f in fns.items():
        f()
        out[k] = float("inf")
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            out[k] = min(out[k], time.perf_counter() - t)
    return out
