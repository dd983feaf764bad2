"""D2-Net (this package's network) as a :class:`~d2cli.extractors.FeatureExtractor`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..device import pick_device
from ..extract import extract
from ..images import ImageItem
from ..jobs import ProgressFn
from ..settings import MULTI_SCALE, SINGLE_SCALE, ExtractSettings
from ..weights import resolve_model
from . import ExtractionReport, Identity, digest, safe_name


@dataclass(frozen=True)
class D2Net:
    """A D2-Net model (registry name or .pth path; None: the built-in) with its settings."""

    model: str | None = None
    settings: ExtractSettings = ExtractSettings()
    kind: str = "d2"

    @property
    def label(self) -> str:
        label = resolve_model(self.model).name
        scales = tuple(self.settings.scales)
        if scales == MULTI_SCALE:
            label += " MS"
        elif scales != SINGLE_SCALE:
            label += " scales " + ",".join(f"{s:g}" for s in scales)
        if self.settings.precision != "fp32":
            label += f" {self.settings.precision}"
        return label

    def identity(self, device: str) -> Identity:
        info = resolve_model(self.model)
        # auto decided first: the cache holds what ran, whoever asked for it
        settings = self.settings.resolved(pick_device(device)).as_dict()
        key = digest({"model_sha256": info.sha256, "settings": settings})
        return Identity(info.name, info.sha256, settings, f"d2-{safe_name(info.name)}-{key}")

    def extract(self, items: Sequence[ImageItem], root: Path, out: Path, identity: Identity,
                device: str, progress: ProgressFn | None = None) -> ExtractionReport:
        res = extract([it.path for it in items], out, model=self.model,
                      settings=self.settings.resolved(pick_device(device)), image_root=root,
                      device=device, progress=progress)
        return ExtractionReport(extracted=len(res.extracted), reused=len(res.skipped),
                                failed=dict(res.failed), interrupted=res.interrupted)
