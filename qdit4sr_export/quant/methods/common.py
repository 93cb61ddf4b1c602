"""Pieces every method's plan builder shares: the layers, the timestep grid, fingerprints, rotations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.sampling import flow_schedule, start_index
from qdit4sr_export.model.transformer import DiT4SRTransformer
from qdit4sr_export.model.weights import has_weights, source_of
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.layer_plan import LayerPlan
from qdit4sr_export.quant.plan import QuantPlan, architecture_fingerprint, weights_fingerprint


@dataclass
class PlanContext:
    """What a plan builder knows about the model before choosing anything."""

    model: DiT4SRTransformer
    linears: dict[str, tuple[int, int]]  # name -> (out, in)
    timesteps: tuple[float, ...]
    on_meta: bool
    fingerprint: dict[str, str | None] = field(default_factory=dict)
    sigmas: tuple[float, ...] = ()

    @classmethod
    def build(cls, model: DiT4SRTransformer, *, steps: int, shift: float) -> "PlanContext":
        linears = quantizable_linears(model)
        on_meta = not has_weights(model)
        timesteps, sigmas = flow_schedule(steps, shift=shift)
        fingerprint = {
            "architecture": architecture_fingerprint(model.config, linears),
            "weights": None if on_meta else weights_fingerprint(model, sorted(linears)),
        }
        return cls(model, linears, tuple(float(t) for t in timesteps), on_meta, fingerprint,
                   tuple(float(s) for s in sigmas))

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def first_step(self, start_sigma: float) -> int:
        """The first grid step a run from ``start_sigma`` executes (0: every step)."""
        return start_index(self.sigmas, start_sigma)

    def each_layer(self, desc: str, progress: bool):
        """``linears.items()`` with a progress bar when ``progress``: at the released size the per-layer search
        after calibration is a large part of a plan, so a long run shows where it is."""
        from qdit4sr_export.report.progress import progress_bar

        return progress_bar(self.linears.items(), desc=desc, unit="layer", total=len(self.linears), enabled=progress,
                    leave=False)

    def weight(self, name: str) -> torch.Tensor:
        """A layer's FP weight (float32, read from the checkpoint when the model was opened lazily: one layer in
        memory at a time); a one-line error when the model has no weights (a preset)."""
        if self.on_meta:
            raise UserError("this method reads the weights: give a checkpoint, not a preset name")
        return source_of(self.model).tensor(f"{name}.weight")

    def require_weights(self, why: str) -> None:
        if self.on_meta:
            raise UserError(f"{why} reads the weights: give a checkpoint, not a preset name")

    def plan(self, method: str, config: Any, layers: Mapping[str, LayerPlan], *, notes: list[str] | None = None,
             tensors: Mapping[str, torch.Tensor] | None = None) -> QuantPlan:
        return QuantPlan(method=method, method_config=config.to_dict(), model_config=self.model.config.to_dict(),
                         fingerprint=self.fingerprint, timesteps=self.timesteps, layers=dict(layers),
                         notes=tuple(notes or ()), tensors=dict(tensors or {}))


def trajectory(config: Any) -> dict[str, Any]:
    """:func:`~qdit4sr_export.quant.calibration.run_trajectory`'s keywords for a calibrated method's config: its
    grid, the pipeline's start sigma and the noise seed, the one trajectory all its statistics come from."""
    return {"steps": config.steps, "shift": config.shift, "start_sigma": config.start_sigma, "seed": config.calib_seed}


def hadamard_rotations(linears: Mapping[str, tuple[int, int]], *, seed: int | None,
                       block: int | None = None) -> dict[str, Rotation]:
    """An orthonormal Hadamard of each layer's input dimension; errors name the layer."""
    rotations = {}
    for name, (_, inp) in linears.items():
        try:
            rotations[name] = Rotation(n=inp, seed=seed, block=block)
        except UserError as exc:
            raise UserError(f"layer '{name}': {exc}") from None
    return rotations


def check_rank(linears: Mapping[str, tuple[int, int]], rank: int, option: str = "svd_rank") -> None:
    for name, (out, inp) in linears.items():
        if rank > min(out, inp):
            raise UserError(f"{option}={rank} is larger than min(out, in) = {min(out, inp)} of layer '{name}'")


def static_bits(bits: float, steps: int, option: str = "--abits") -> tuple[int, ...]:
    """A constant activation schedule; fractional bits need a method that schedules them."""
    if not float(bits).is_integer():
        raise UserError(f"{option} {bits} is fractional: this method uses the same bits at every timestep")
    return (int(bits),) * steps
