"""QuantPlan: the versioned JSON contract between quantization numerics and the compiler.

A plan says, per quantized linear (by module name): weight bits, the input rotation, the SVD-G rank, the
SVD-L block shape, and the activation bits at every timestep of the grid it was made for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from qdit4sr_export import __version__
from qdit4sr_export.atomic import atomic_path
from qdit4sr_export.errors import UserError
from qdit4sr_export.jsonfile import read_json_object
from qdit4sr_export.model.config import DiT4SRConfig

SCHEMA = "qdit4sr-export/quant-plan"
VERSION = 1


@dataclass(frozen=True)
class LayerPlan:
    """How one ``nn.Linear`` is quantized. ``abits[i]`` is for timestep ``plan.timesteps[i]``; None = FP activations."""

    in_features: int
    out_features: int
    wbits: int
    abits: tuple[int | None, ...]
    rotation: Mapping[str, Any] | None = None  # Rotation.to_dict() of the input dim; None = no rotation
    svd_rank: int = 0
    local_block: tuple[int, int] | None = None
    active: bool = True  # False for layers whose output never reaches the model output
    clip: str = "gaussian"  # scale estimator of both quantizers: "gaussian" (optimal clip) or "minmax" (RTN)
    weight_variance: float | None = None  # VaSMP's statistic (mean output-channel variance of W_H)
    act_variance: tuple[float, ...] | None = None  # VaTMP's v(l, t) per grid timestep

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["abits"] = list(self.abits)
        d["local_block"] = list(self.local_block) if self.local_block else None
        d["rotation"] = dict(self.rotation) if self.rotation is not None else None
        d["act_variance"] = list(self.act_variance) if self.act_variance is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str) -> "LayerPlan":
        try:
            block = d.get("local_block")
            return cls(
                in_features=int(d["in_features"]),
                out_features=int(d["out_features"]),
                wbits=int(d["wbits"]),
                abits=tuple(None if b is None else int(b) for b in d["abits"]),
                rotation=dict(d["rotation"]) if d.get("rotation") is not None else None,
                svd_rank=int(d.get("svd_rank", 0)),
                local_block=(int(block[0]), int(block[1])) if block else None,
                active=bool(d.get("active", True)),
                clip=str(d.get("clip", "gaussian")),
                weight_variance=None if d.get("weight_variance") is None else float(d["weight_variance"]),
                act_variance=None if d.get("act_variance") is None else tuple(float(v) for v in d["act_variance"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UserError(f"plan layer '{name}': malformed entry ({type(exc).__name__}: {exc})") from None


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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        path = Path(path)
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "plan") -> "QuantPlan":
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
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{source}: missing or malformed key {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "QuantPlan":
        path = Path(path)
        data = read_json_object(path, "plan file")
        return cls.from_dict(data, str(path))

    def abits_at(self, step: int) -> dict[str, int | None]:
        return {name: lp.abits[step] for name, lp in self.layers.items()}

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
    """sha256 over the named linears' weights (float32 bytes); None when the model lives on the meta device."""
    h = hashlib.sha256()
    modules = dict(model.named_modules())
    for name in names:
        w = modules[name].weight
        if w.device.type == "meta":
            return None
        h.update(name.encode())
        h.update(w.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


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
