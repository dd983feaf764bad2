"""Global image descriptors from D2's own features, for choosing pairs by retrieval.

One vector per image, stored where hloc's retrieval reads it: ``<name>/global_descriptor``
((D,) float32, L2-normalised) in the features file itself, so ``d2 pairs from-retrieval
--features feats.h5`` (and hloc's ``pairs_from_retrieval``) need no second network and no
second pass over the images. Methods (measured against each other in docs/benchmarks.md,
"Retrieval"):

- ``gem`` (default): generalised-mean pooling (p = 3, Radenovic et al. 2018) of the image's
  D2 local descriptors: (1/N sum_i d_i^p)^(1/p) per channel. D2's descriptors are samples of
  the conv4_3 map at its detections, post-ReLU, so this is GeM of the dense map restricted
  to the places the detector found salient. Costs microseconds per image, and can be
  computed for any existing features file (``d2 global``) without the network.
- ``mean``: the same with p = 1.

At retrieval time the descriptors can be whitened (:func:`whiten`): a PCA whitening learned
from the collection's own descriptors (no training data), with shrinkage because a
collection may hold fewer images than dimensions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import D2Error, EmptyInput, UsageError
from .jobs import ProgressFn, Stage, interruptible

if TYPE_CHECKING:  # numpy is imported where used: the CLI reads the names above at start-up
    import numpy as np

GLOBAL_METHODS = ("gem", "mean")
DEFAULT_METHOD = "gem"
GEM_P = 3  # the exponent of GeM (Radenovic et al.'s default; fixed, not tuned here)
# the features file's attribute naming how its global descriptors were made: descriptors
# of different methods are never compared
METHOD_ATTR = "global_descriptor"


def pooled(desc: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """The global descriptor of one image from its local descriptors.

    ``desc``: (D, N) local descriptors as stored (any float dtype; post-ReLU, so >= 0).
    Returns (D,) float32, L2-normalised; all zeros for an image without keypoints.
    """
    import numpy as np

    if method not in GLOBAL_METHODS:
        raise UsageError(f"unknown global descriptor method {method!r} "
                         f"({', '.join(GLOBAL_METHODS)})")
    desc = np.asarray(desc)
    if desc.ndim != 2:
        raise ValueError(f"local descriptors must be (D, N), got shape {desc.shape}")
    if desc.shape[1] == 0:
        return np.zeros(desc.shape[0], np.float32)
    if desc.dtype == np.float16 and desc.dtype.isnative:
        # numpy's float16 -> float32 cast is scalar code (25 ms for 4k keypoints, as much as
        # all the rest); torch's is vectorised and exact alike
        import torch

        x = torch.from_numpy(np.ascontiguousarray(desc)).float().numpy()
    else:
        x = np.array(desc, dtype=np.float32)  # a copy: modified in place below
    np.maximum(x, 0, out=x)  # D2's are post-ReLU; other files' negatives must not flip signs
    if method == "gem":
        c = x * x
        c *= x  # GEM_P = 3: x^3 by two products, ~5x faster than np.power
        g = np.cbrt(c.mean(axis=1))
    else:
        g = x.mean(axis=1)
    return _unit(g[None])[0]


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero. (N, D) float32."""
    import numpy as np

    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x, dtype=np.float32), where=norm > 0)


def whiten(x: np.ndarray, learn_from: np.ndarray | None = None,
           shrinkage: float = 1.0) -> np.ndarray:
    """PCA-whitened, re-normalised descriptors: (N, D) -> (N, D) float32.

    Learned from ``learn_from`` (M, D) (default: ``x`` itself, i.e. the collection): centre,
    rotate onto the principal axes and divide each by sqrt(eigenvalue + shrinkage * mean
    eigenvalue). The shrinkage keeps the directions a small collection cannot estimate
    (M < D) from being blown up into noise; 0 is plain PCA whitening.
    """
    import numpy as np

    ref = x if learn_from is None else learn_from
    ref = np.asarray(ref, dtype=np.float64)
    mean = ref.mean(axis=0)
    cov = np.cov(ref - mean, rowvar=False) if len(ref) > 1 else np.zeros((ref.shape[1],) * 2)
    vals, vecs = np.linalg.eigh(np.atleast_2d(cov))
    vals = np.clip(vals, 0, None)
    scale = 1 / np.sqrt(vals + shrinkage * max(float(vals.mean()), 1e-12))
    y = ((np.asarray(x, dtype=np.float64) - mean) @ vecs) * scale
    return _unit(y.astype(np.float32))


# --------------------------------------------------------------------------- the job
@dataclass
class GlobalResult:
    """What ``d2 global`` did."""

    features: Path
    method: str
    written: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # no keypoints: an all-zero descriptor
    failed: dict[str, str] = field(default_factory=dict)  # name -> why (the rest done)
    seconds: float = 0.0
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        return {"features": str(self.features), "method": self.method,
                "written": len(self.written), "already": len(self.already),
                "empty": self.empty, "failed": self.failed, "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted}


def add_global_descriptors(features: str | os.PathLike, method: str = DEFAULT_METHOD, *,
                           overwrite: bool = False,
                           progress: ProgressFn | None = None) -> GlobalResult:
    """Write ``<name>/global_descriptor`` for every image of a features file (``d2 global``).

    From the local descriptors already in the file: no images, no network. Images that
    already have one of this ``method`` are left as they are (``overwrite``: redo all);
    one of another method is replaced. The file is rewritten through the crash-safe store:
    after a kill it is the old file or the new one, never a mix.
    """
    from .io.features import FeatureFile
    from .io.h5store import H5Store

    if method not in GLOBAL_METHODS:
        raise UsageError(f"unknown global descriptor method {method!r} "
                         f"({', '.join(GLOBAL_METHODS)})")
    t0 = time.perf_counter()
    path = Path(features)
    result = GlobalResult(path, method)
    with FeatureFile(path) as ff:
        names = ff.names
        if not names:
            raise EmptyInput(f"{path}: no images with keypoints")
        same = ff.attrs.get(METHOD_ATTR) == method and not overwrite
        have = ff.global_names if same else set()
        todo = [n for n in names if n not in have]
        result.already = [n for n in names if n in have]
        stage = Stage(progress, "global", total=len(todo))
        if todo:
            attrs = {**ff.attrs, METHOD_ATTR: method}
            with H5Store(path, attrs=attrs, commit_every=256) as store, \
                    interruptible() as stop:
                for name in stop.each(todo):
                    try:
                        f = ff[name]
                        arrays = f.as_arrays()
                        arrays["global_descriptor"] = pooled(f.descriptors, method)
                    except (D2Error, ValueError) as e:  # one bad entry never costs the others
                        result.failed[name] = f"{name}: {e}"
                        stage.advance(name, error=result.failed[name])
                        continue
                    store.add(name, arrays)
                    (result.empty if len(f) == 0 else result.written).append(name)
                    stage.advance(name)
                result.interrupted = stop.requested
    result.seconds = time.perf_counter() - t0
    return result


def describe_missing(path: Path, missing: Iterable[str]) -> str:
    """The one-line error for images without a global descriptor, naming the fix."""
    missing = sorted(missing)
    return (f"{path}: {len(missing)} image(s) have no global descriptor (e.g. {missing[0]}); "
            f"add them with: d2 global {path}")
