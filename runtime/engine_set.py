"""Load and validate an engine set folder (see qdit4sr_export/engine_set.py for what ``build`` writes).

Validation on load: the manifest's schema and version, every listed file present with its size; with
``verify=True`` also every sha256. Variants are looked up by timestep value: the manifest's
``timestep_ranges`` tile [0, 1000], so any step count maps every step to a variant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdit4sr_export.checksum import sha256_file
from qdit4sr_export.errors import UserError

SCHEMA = "qdit4sr-export/engine-set"
VERSION = 1


@dataclass(frozen=True)
class VariantInfo:
    """One variant: its graph file, the build-grid steps it serves, and its timestep intervals."""

    index: int
    file: str
    steps: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...]


class EngineSet:
    """A validated engine set: its manifest, variants, and the pipeline files it carries."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.variants = tuple(
            VariantInfo(int(v["index"]), str(v["file"]), tuple(v["steps"]),
                        tuple((float(lo), float(hi)) for lo, hi in v["timestep_ranges"]))
            for v in manifest["variants"])
        self.timesteps = tuple(float(t) for t in manifest["timesteps"])

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = False) -> "EngineSet":
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise UserError(f"{folder}: not an engine set (no manifest.json)")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise UserError(f"{path}: schema is not {SCHEMA!r}")
        if manifest.get("version") != VERSION:
            raise UserError(f"{path}: engine set version {manifest.get('version')!r} is not supported "
                            f"(this tool reads {VERSION})")
        for key in ("variants", "timesteps", "files", "model"):
            if key not in manifest:
                raise UserError(f"{path}: missing key '{key}'")
        for entry in manifest["files"]:
            file = folder / entry["path"]
            if not file.is_file():
                raise UserError(f"{folder}: file {entry['path']} listed in the manifest is missing")
            if file.stat().st_size != entry["bytes"]:
                raise UserError(f"{folder}: file {entry['path']} has {file.stat().st_size} bytes, "
                                f"the manifest says {entry['bytes']}")
            if verify and sha256_file(file) != entry["sha256"]:
                raise UserError(f"{folder}: file {entry['path']} does not match its sha256 in the manifest")
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
