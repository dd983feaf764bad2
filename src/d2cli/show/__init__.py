"""Pictures of keypoints, matches and sparse models (``d2 show``), as PNG files.

Layout: the drawing functions take arrays and write a PNG (``draw_keypoints``,
``draw_matches``, ``draw_model``; shapes in their docstrings), on the primitives of
``draw``; ``inputs`` reads the files (features, matches, COLMAP databases and models, the
images they name); ``from_files`` holds ``show_*``, the file-level functions behind
``d2 show`` (load, then draw).

Choices made for readability, whatever the input:

* Photos are drawn in faded gray so that the coloured overlay reads the same on any photo.
* Each photo is resampled with Pillow to its size in the picture before drawing (one drawn
  pixel = one output pixel): a 4000 px photo costs no more than a small one, and markers
  and lines keep their on-screen size. Images under 800 px are enlarged so that the
  overlay is not cramped; marker sizes and line widths shrink as the count grows.
* matplotlib's object API on the Agg canvas, never ``pyplot``: no display is needed and
  no global figure state is kept between calls.
* Keypoints are in the features file's convention (pixel centre at integer coordinates);
  COLMAP's (+0.5) is undone when they come from a database.
"""

from __future__ import annotations

from .draw import ShowResult
from .from_files import show_keypoints, show_matches, show_model
from .keypoints import draw_keypoints
from .matches import draw_matches
from .model import draw_model

__all__ = ["ShowResult", "draw_keypoints", "draw_matches", "draw_model", "show_keypoints",
           "show_matches", "show_model"]
