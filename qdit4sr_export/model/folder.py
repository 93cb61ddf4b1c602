"""The pipeline folder a model comes in (``transformer/`` beside ``vae/``, ``pipeline.json``, ``scheduler/``), the
sampling trajectory it states, and the checkpoint file suffixes accepted; no torch, so the CLI checks them before
loading anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qdit4sr_export.engine.jsonfile import read_json_object
from qdit4sr_export.errors import UserError


#: Single-file checkpoints by suffix (a folder is a diffusers checkpoint or a pipeline folder).
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def check_checkpoint_path(path: Path) -> None:
    """A one-line error for a file that cannot be a checkpoint (by its suffix), before torch loads."""
    if path.is_file() and path.suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"{path}: unsupported checkpoint format '{path.suffix or '(no suffix)'}'; expected a "
                        f"diffusers folder, a .safetensors file or a {'/'.join(CHECKPOINT_SUFFIXES[1:])} state dict")


def model_root(model_path: Path) -> Path | None:
    """The pipeline folder holding ``transformer/`` (given it or ``transformer/`` itself), if any."""
    path = model_path if model_path.is_dir() else model_path.parent
    for root in (path, path.parent):
        if (root / "transformer").is_dir():
            return root
    return None


def pipeline_trajectory(model_path: Path) -> dict[str, Any]:
    """The trajectory runs of this model follow: ``steps`` and ``start_sigma`` from ``pipeline.json``, ``shift`` from
    ``scheduler/scheduler_config.json``; keys the folder does not state are left out (none for a bare file)."""
    root = model_root(model_path) if model_path.exists() else None
    if root is None:
        return {}
    found: dict[str, Any] = {}
    if (root / "pipeline.json").is_file():
        path = root / "pipeline.json"
        settings = read_json_object(path, "pipeline settings")
        steps, sigma = settings.get("steps"), settings.get("start_sigma")
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise UserError(f"{path}: steps must be an integer >= 1, got {steps!r}")
            found["steps"] = steps
        if sigma is not None:
            if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 1:
                raise UserError(f"{path}: start_sigma must be a number in (0, 1], got {sigma!r}")
            found["start_sigma"] = float(sigma)
    scheduler = root / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        shift = read_json_object(scheduler, "scheduler config").get("shift")
        if shift is not None:
            if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
                raise UserError(f"{scheduler}: shift must be a number > 0, got {shift!r}")
            found["shift"] = float(shift)
    return found
