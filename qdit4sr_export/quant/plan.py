"""QuantPlan: the versioned JSON contract between quantization numerics and the compiler.

A plan says, per quantized linear (by module name, see :mod:`layer_plan`): weight bits, the input rotation,
the SVD-G rank, the SVD-L block shape, and the activation bits at every timestep of the grid it was made
for. Tensors a method produces (smoothing vectors, learned rotations, GPTQ weights) live in a safetensors
file beside the JSON (``<plan>.tensors.safetensors``), named and checksummed in it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from qdit4sr_export import __version__
from qdit4sr_export.engine.atomic import atomic_path
from qdit4sr_export.engine.jsonfile import read_json_object
from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.quant.layer_plan import LayerPlan

__all__ = ["LayerPlan", "QuantPlan", "architecture_fingerprint", "check_plan_matches", "weights_fingerprint"]

SCHEMA = "qdit4sr-export/quant-plan"
VERSION = 1


@dataclass(frozen=True)
class QuantPlan:
    """A whole-model plan; ``timesteps`` is the sampling grid (scheduler timestep values) it was made for."""

    method: str
    method_config: Mapping[str, Any]
    model_config: Mapping[str, Any]
    fingerprint: Mapping[str, str | None]
    timesteps: tuple[float, ...]
    layers: Mapping[str, LayerPlan]
    notes: tuple[str, ...] = field(default_factory=tuple)
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "tool_version": __version__,
            "method": self.method,
            "method_config": dict(self.method_config),
            "model": {"config": dict(self.model_config), "fingerprint": dict(self.fingerprint)},
            "timesteps": [float(t) for t in self.timesteps],
            "notes": list(self.notes),
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
        }

    def to_json(self, tensor_file: Mapping[str, str] | None = None) -> str:
        d = self.to_dict()
        if tensor_file is not None:
            d["tensor_file"] = dict(tensor_file)
        return json.dumps(d, indent=1, sort_keys=False) + "\n"

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the JSON (and, when the plan has tensors, its sidecar first), each atomically."""
        path = Path(path)
        tensor_file = None
        if self.tensors:
            side = path.with_name(path.stem + ".tensors.safetensors")
            state = {k: v.detach().to("cpu").contiguous() for k, v in sorted(self.tensors.items())}
            with atomic_path(side, overwrite=True) as tmp:
                save_file(state, str(tmp))  # no metadata: a multi-key map would not be byte-deterministic
            tensor_file = {"name": side.name, "sha256": hashlib.sha256(side.read_bytes()).hexdigest()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(self.to_json(tensor_file))
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "plan",
                  tensors: Mapping[str, torch.Tensor] | None = None) -> "QuantPlan":
        if d.get("schema") != SCHEMA:
            raise UserError(f"{source}: not a QuantPlan (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        if d.get("version") != VERSION:
            raise UserError(f"{source}: plan version {d.get('version')!r} is not supported (this tool reads {VERSION})")
        try:
            layers = {name: LayerPlan.from_dict(ld, name) for name, ld in d["layers"].items()}
            return cls(
                method=str(d["method"]),
                method_config=dict(d["method_config"]),
                model_config=dict(d["model"]["config"]),
                fingerprint=dict(d["model"]["fingerprint"]),
                timesteps=tuple(float(t) for t in d["timesteps"]),
                layers=layers,
                notes=tuple(d.get("notes", ())),
                tensors=dict(tensors or {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{source}: missing or malformed key {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "QuantPlan":
        path = Path(path)
        data = read_json_object(path, "plan file")
        tensors = None
        if data.get("tensor_file"):
            ref = data["tensor_file"]
            side = path.with_name(str(ref.get("name", "")))
            if not side.is_file():
                raise UserError(f"{path}: its tensor file {side.name} is missing (it must sit beside the plan)")
            if hashlib.sha256(side.read_bytes()).hexdigest() != ref.get("sha256"):
                raise UserError(f"{path}: tensor file {side.name} does not match the plan's checksum")
            tensors = load_file(str(side))
        return cls.from_dict(data, str(path), tensors)

    def step_for_timestep(self, timestep: float) -> int:
        """Index of the grid timestep nearest to ``timestep`` (schedules are keyed by timestep value)."""
        if not self.timesteps:
            raise UserError("plan has an empty timestep grid")
        return min(range(len(self.timesteps)), key=lambda i: (abs(self.timesteps[i] - timestep), i))


def architecture_fingerprint(config: DiT4SRConfig, linears: Mapping[str, tuple[int, int]]) -> str:
    """sha256 of the config and every quantizable layer's name and shape."""
    payload = json.dumps({"config": config.to_dict(), "linears": sorted(linears.items())}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def weights_fingerprint(model: torch.nn.Module, names: list[str]) -> str | None:
    """sha256 over the named linears' weights (float32 bytes, one layer in memory at a time, from the model or the
    checkpoint it was opened from); None for a model without weights (a preset on the meta device)."""
    from qdit4sr_export.model.weights import source_of

    source = source_of(model)
    return None if source is None else source.fingerprint(names)


def check_plan_matches(plan: QuantPlan, config: DiT4SRConfig, linears: Mapping[str, tuple[int, int]],
                       weights: str | None) -> None:
    """Raise a one-line error when ``plan`` was made for another model (layer names, shapes or weights)."""
    missing = [n for n in plan.layers if n not in linears]
    if missing:
        raise UserError(f"plan names {len(missing)} layer(s) the model lacks, first: {', '.join(missing[:3])}")
    uncovered = [n for n in linears if n not in plan.layers]
    if uncovered:
        raise UserError(f"plan does not cover {len(uncovered)} model layer(s), first: {', '.join(uncovered[:3])}")
    for name, lp in plan.layers.items():
        if (lp.out_features, lp.in_features) != linears[name]:
            raise UserError(
                f"plan layer '{name}' is {lp.out_features}x{lp.in_features} but the model's is "
                f"{linears[name][0]}x{linears[name][1]}"
            )
    arch = architecture_fingerprint(config, linears)
    if plan.fingerprint.get("architecture") != arch:
        raise UserError("plan fingerprint does not match the model (architecture/config differ); rebuild the plan")
    planned = plan.fingerprint.get("weights")
    if planned is not None and weights is not None and planned != weights:
        raise UserError("plan fingerprint does not match the model's weights; the plan was made for another checkpoint")
