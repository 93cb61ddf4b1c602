"""Load and validate an engine set folder (the format: :mod:`qdit4sr_export.engine.format`).

Validation on load: the manifest's schema and version, every listed file present with its size and, by
default, a quick checksum (full sha256 of small files, sampled of large ones); ``verify="full"`` hashes every
file. Variants are looked up by timestep value: the manifest's ``timestep_ranges`` tile [0, 1000], so any step
count maps every step to a variant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from qdit4sr_export.engine.format import WeightsFile, check_files, read_manifest
from qdit4sr_export.errors import UserError


@dataclass(frozen=True)
class VariantInfo:
    """One variant: its graph file, the build-grid steps it serves, its timestep intervals, and each quantized
    layer's (weight bits, activation bits) there (activation bits None: float)."""

    index: int
    file: str
    steps: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...]
    layers: Mapping[str, tuple[int, int | None]] = field(default_factory=dict, compare=False, repr=False)


class EngineSet:
    """A validated engine set: its manifest, variants, and the pipeline files it carries."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.variants = tuple(
            VariantInfo(int(v["index"]), str(v["file"]), tuple(v["steps"]),
                        tuple((float(lo), float(hi)) for lo, hi in v["timestep_ranges"]),
                        MappingProxyType({n: (int(b["wbits"]), None if b["abits"] is None else int(b["abits"]))
                                          for n, b in v.get("layers", {}).items()}))
            for v in manifest["variants"])
        self.timesteps = tuple(float(t) for t in manifest["timesteps"])
        self.quantized_layers: dict[str, dict[str, Any]] = dict(manifest["quantized_layers"])
        self.weights = WeightsFile.of(folder, manifest)

    @classmethod
    def load(cls, folder: str | Path, *, verify: str = "quick") -> "EngineSet":
        """Read and check the engine set at ``folder``; ``verify`` is "size", "quick" (default) or "full"."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        check_files(folder, manifest["files"], verify)
        return cls(folder, manifest)

    def variant_for_timestep(self, timestep: float) -> VariantInfo:
        """The variant whose timestep interval holds ``timestep`` (an interval is (low, high]; 0 is in the last)."""
        t = float(timestep)
        for v in self.variants:
            for lo, hi in v.ranges:
                if lo < t <= hi or (t == lo == 0.0):
                    return v
        raise UserError(f"timestep {t} is outside every variant's range (0..1000)")

    @property
    def max_latent(self) -> int | None:
        """The largest latent side the set accepts (its positional crop); None: the model's whole table."""
        value = self.manifest.get("max_latent")
        return int(value) if value is not None else None

    def check_latent(self, height: int, width: int) -> None:
        """A one-line error for a latent larger than the positional crop the set was built with."""
        m = self.max_latent
        if m is not None and max(height, width) > m:
            raise UserError(f"{self.folder}: latent {height}x{width} is larger than this engine set accepts "
                            f"({m}x{m}, built with --max-latent-side {m}); use latent tiles of at most {m} (run --tile)")

    @property
    def plan_path(self) -> Path | None:
        plan = self.manifest.get("plan")
        return self.folder / plan if plan else None

    def file(self, relative: str) -> Path | None:
        """A pipeline file of the set (``vae``, ``pipeline.json``, ...), or None if the set lacks it."""
        path = self.folder / relative
        return path if path.exists() else None

    def pipeline_config(self) -> dict[str, Any]:
        """``pipeline.json`` (defaults for steps, guidance, start noise level, colour fix)."""
        path = self.file("pipeline.json")
        return json.loads(path.read_text()) if path is not None else {}

    def shift(self) -> float:
        path = self.file("scheduler/scheduler_config.json")
        return float(json.loads(path.read_text()).get("shift", 3.0)) if path is not None else 3.0

    def config(self) -> dict[str, Any]:
        return dict(self.manifest["model"]["config"])
