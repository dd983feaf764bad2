"""Settings of featuremetric keypoint refinement (recorded for provenance)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError

# layer -> (index after the conv in VGG16's Sequential (pre-ReLU), stride, cell-centre offset,
# context px). A stride-s map cell k is centred at s*k + offset in the input pixels of its
# crop (pool 2x2/2: 2k + 0.5; twice: 4k + 1.5); context = receptive-field radius, the crop
# margin that keeps the zero padding of the crop's border away from the sampled cells.
LAYERS: dict[str, tuple[int, int, float, int]] = {
    "conv1_1": (1, 1, 0.0, 2),
    "conv1_2": (3, 1, 0.0, 4),
    "conv2_1": (6, 2, 0.5, 8),
    "conv2_2": (8, 2, 0.5, 10),
    "conv3_3": (15, 4, 1.5, 24),
}
SOURCES = ("image", *LAYERS)


@dataclass(frozen=True)
class RefineConfig:
    """How keypoints are moved to where their dense features agree.

    The defaults were chosen on the validation set of ``benchmarks/refine.py validate``
    (random homographies of the sample photos, never the evaluation sets): normalised
    cross-correlation of 11 x 11 intensity patches, the reference patch warped by the local
    affine map of its 12 nearest matches, searched +-8 px, a move undone when the best NCC
    is under 0.5 (docs/benchmarks.md).

    source: "image" (grey intensities, NCC of a ``template`` x ``template`` patch) or a VGG
        layer of the D2-Net model ("conv1_2", "conv2_2", ...; the feature vector at a point,
        optionally a ``template`` grid of them, compared by cosine).
    radius: search radius (px, original image) around the keypoint; steps: the grid steps
        of the coarse-to-fine search (each level searches +-1 coarse step around the last
        best, the first level +-radius); the best cell of the last level gets a parabola fit.
    template: side of the point descriptor's sampling grid (odd; 1 = the feature vector
        alone); template_step its spacing in px.
    affine: warp the reference patch with a local affine map fitted to neighbouring
        matches (two-view only), so that viewpoint changes distort less.
    affine_neighbours: matches used per local affine fit.
    max_shift: moves longer than this (px) are undone (a wrong peak, not a refinement).
    min_score: so are moves whose best fit is less similar than this (a patch that does not
        look like its reference anywhere in the window: occlusion, a wrong match).
    min_gain: so are moves whose best fit is not this much more similar than the start.
    back_check: > 0: so are moves whose reverse search (the moved patch sought in the
        reference image around the reference point) lands further than this (px) from it.
    pair_iterations: two-view rounds; later ones refit the affine maps on the refined
        positions and search only +-steps[0].
    max_track: tracks with more keypoints are left unchanged (merged tracks of wrong
        matches).
    block_size: keypoints per network batch; bounds memory, does not change results.
    device: "auto" (a GPU when there is one), "cpu", "cuda:N".
    """

    source: str = "image"
    radius: float = 8.0
    steps: tuple[float, ...] = (1.0, 0.25)
    template: int = 11
    template_step: float = 1.0
    affine: bool = True
    affine_neighbours: int = 12
    max_shift: float = 10.0
    min_score: float = 0.5  # a best fit less similar than this (cosine / NCC) is undone
    min_gain: float = 0.0
    back_check: float = 0.0
    pair_iterations: int = 1
    max_track: int = 512
    block_size: int = 1024
    model: str | None = None  # d2cli.weights.resolve_model name/path; None: the default
    device: str = "auto"  # where it runs (cuda when there is one); not a result setting

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise UsageError(f"refine source must be one of {', '.join(SOURCES)}")
        if self.radius <= 0 or not self.steps or any(s <= 0 for s in self.steps):
            raise UsageError("refine radius and steps must be positive")
        if self.template < 1 or self.template % 2 == 0:
            raise UsageError("refine template must be an odd number >= 1")
        if self.block_size < 1 or self.pair_iterations < 1 or self.max_track < 2:
            raise UsageError("refine block size and pair iterations must be >= 1, max track >= 2")

    @property
    def reach(self) -> float:
        """How far (px) from the crop centre a sampled point may lie."""
        search = self.radius + self.steps[0] + sum(self.steps[1:])
        return search + 1.0 + (self.template // 2) * self.template_step * 1.5

    def as_dict(self) -> dict[str, Any]:
        """The settings that change the results (recorded, compared on resume): all but
        where it runs and how it is blocked."""
        d = asdict(self)
        d["steps"] = list(self.steps)
        del d["device"], d["block_size"]
        return d
