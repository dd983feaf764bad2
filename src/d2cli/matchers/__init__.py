"""Descriptor matchers: two descriptor sets -> matches, behind one small interface.

A matcher is a callable ``(desc0 (N0, D), desc1 (N1, D)) -> (matches (M, 2) int64
[i0, i1], scores (M,) float32)`` on L2-normalised float rows (see
:class:`DescriptorMatcher`); :func:`d2cli.match.match` (``d2 match``) reads the
descriptors, calls the matcher that :class:`~d2cli.settings.MatchSettings` names, and
writes the hloc-layout matches file. So a new matcher is one file that adds itself to
:data:`MATCHERS`; ``mnn`` (:mod:`d2cli.mnn`, exact mutual nearest neighbours, the D2-Net
and hloc matcher) is the one there is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import UsageError
from ..mnn import mnn
from ..settings import MatchSettings


class DescriptorMatcher(Protocol):
    def __call__(self, desc0: torch.Tensor, desc1: torch.Tensor, *,
                 tile: tuple[int, int] | None = None, precision: str = "fp32",
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matches (M, 2) int64 and their scores (M,) float32, on the CPU. ``tile`` and
        ``precision`` are hints a matcher may ignore (they never change its matches)."""
        ...


@dataclass(frozen=True)
class MutualNearestNeighbours:
    """:func:`d2cli.mnn.mnn` with the settings' ratio test and distance bound."""

    ratio: float | None = None
    max_distance: float | None = None

    def __call__(self, desc0: torch.Tensor, desc1: torch.Tensor, *,
                 tile: tuple[int, int] | None = None, precision: str = "fp32",
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return mnn(desc0, desc1, ratio=self.ratio, max_distance=self.max_distance, tile=tile,
                   precision=precision)


# name (MatchSettings.matcher, recorded in the matches file) -> matcher from the settings
MATCHERS: dict[str, Callable[[MatchSettings], DescriptorMatcher]] = {
    "mnn": lambda s: MutualNearestNeighbours(s.ratio, s.max_distance),
}


def make_matcher(settings: MatchSettings) -> DescriptorMatcher:
    """The matcher ``settings.matcher`` names; an unknown name is a usage error."""
    try:
        return MATCHERS[settings.matcher](settings)
    except KeyError:
        raise UsageError(f"unknown matcher {settings.matcher!r} "
                         f"(one of {', '.join(sorted(MATCHERS))})") from None


__all__ = ["MATCHERS", "DescriptorMatcher", "MutualNearestNeighbours", "make_matcher"]
