"""The one least-recently-used cache: the last few images or reference lookups a step
reuses (refinement images, localisation references, training images)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """The ``size`` most recently used values, each made on demand by ``make(key)``; the
    least recently used is dropped before a new one is made (at most ``size`` held)."""

    def __init__(self, make: Callable[[K], V], size: int) -> None:
        self.make, self.size = make, max(1, int(size))
        self._values: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        while len(self._values) >= self.size:
            self._values.popitem(last=False)
        value = self.make(key)
        self._values[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)
