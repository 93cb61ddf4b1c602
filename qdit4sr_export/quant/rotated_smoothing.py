"""Q-DiT4SR's optional data-aware step: per-layer channel smoothing applied before the Hadamard rotation, chosen
on calibration activations by the layer's own quantized output error.

Candidates are "no smoothing" and SVDQuant's scales s = max|X|^alpha / max|W|^(1 - alpha) for each alpha of the
grid. Each candidate is scored with the simulation's own layer (:class:`~qdit4sr_export.quant.simulate.
FakeQuantLinear`: smoothing, rotation, H-SVD, the residual on the plan's grid and scales, activations at the
given bits), so the search minimises exactly the error the plan will have; "no smoothing" wins ties, so the
step never scores worse than the paper's method on the calibration rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.layer_plan import LayerPlan
from qdit4sr_export.quant.simulate import FakeQuantLinear, StepState
from qdit4sr_export.quant.smoothing import ALPHA_GRID, smoothing_scales


@dataclass(frozen=True)
class SmoothingChoice:
    """The winning alpha (None: no smoothing), its scales (apply as x / s, W * s), its error, and every
    candidate's error in order (no smoothing first, then the alphas)."""

    alpha: float | None
    scales: torch.Tensor | None
    error: float
    errors: tuple[float, ...]


def layer_output_error(x: torch.Tensor, weight: torch.Tensor, plan: LayerPlan, abits: int,
                       scales: torch.Tensor | None) -> float:
    """|| x W^T - layer(x) ||_F for the simulated layer ``plan`` at ``abits`` activation bits (``scales``: the
    smoothing divisor, or None for an unsmoothed layer); ``plan.abits`` is ignored."""
    linear = nn.Linear(plan.in_features, plan.out_features, bias=False)
    linear.weight = nn.Parameter(weight.detach().to(torch.float32), requires_grad=False)
    layer_plan = dataclasses.replace(plan, abits=(abits,), smoothing=scales is not None)
    state = StepState()
    state.step = 0
    tensors = {"layer.smooth": scales} if scales is not None else {}
    layer = FakeQuantLinear(linear, layer_plan, state, name="layer", tensors=tensors)
    with torch.no_grad():
        return float(torch.linalg.vector_norm(x @ linear.weight.T - layer(x)))


def search_rotated_smoothing(x: torch.Tensor, weight: torch.Tensor, plan: LayerPlan, *, abits: int,
                             alphas: Sequence[float] = ALPHA_GRID) -> SmoothingChoice:
    """The candidate (no smoothing, or one alpha) whose simulated layer is closest to the FP layer on rows ``x``
    (tokens, shape (N, in)); ties go to the earlier candidate."""
    if x.ndim != 2 or x.shape[1] != plan.in_features or tuple(weight.shape) != (plan.out_features, plan.in_features):
        raise UserError(f"smoothing search: rows {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit a "
                        f"{plan.in_features} -> {plan.out_features} layer")
    x = x.detach().to(torch.float32)
    w = weight.detach().to(torch.float32)
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(w).all())):
        raise UserError("smoothing search: the layer's calibration rows or weight are not finite")
    act_max, w_max = x.abs().amax(dim=0), w.abs().amax(dim=0)
    candidates: list[tuple[float | None, torch.Tensor | None]] = [(None, None)]
    candidates += [(float(a), smoothing_scales(act_max, w_max, a)) for a in alphas]
    errors, best = [], 0
    for i, (alpha, scales) in enumerate(candidates):
        err = layer_output_error(x, w, plan, abits, scales)
        if not math.isfinite(err):
            raise UserError(f"smoothing search: the output error is not finite at alpha {alpha} (non-finite "
                            "activations or weights?)")
        errors.append(err)
        if err < errors[best]:
            best = i
    alpha, scales = candidates[best]
    return SmoothingChoice(alpha=alpha, scales=scales, error=errors[best], errors=tuple(errors))


def search_model_smoothing(model: nn.Module, plans: dict[str, LayerPlan], weight_of, calibration, *, abits: int,
                           alphas: Sequence[float], rows_per_step: int, trajectory: dict,
                           progress: bool = False, record: list | None = None) -> dict[str, SmoothingChoice]:
    """:func:`search_rotated_smoothing` for every layer of ``plans`` that runs on the calibration trajectory of the
    FP ``model`` (``rows_per_step`` sampled tokens per layer, step and batch); ``weight_of(name)`` reads a layer's
    FP weight. Layers that never ran are left out. ``record``: a list that receives the trajectory's first-block
    inputs (:mod:`~qdit4sr_export.quant.hessian_pass`), for GPTQ."""
    from contextlib import nullcontext

    from qdit4sr_export.model.weights import lazy_copy, materialize, on_meta
    from qdit4sr_export.quant.calibration import InputSamples, collect
    from qdit4sr_export.quant.hessian_pass import recording_block_inputs
    from qdit4sr_export.report.progress import progress_bar

    fp = materialize(lazy_copy(model)) if on_meta(model) else model  # a lazily opened model runs in float32
    sampled = InputSamples(list(plans), rows_per_step=rows_per_step, seed=trajectory.get("seed", 0))
    with recording_block_inputs(fp) if record is not None else nullcontext([]) as calls:
        collect(fp, calibration, [sampled], progress=progress, **trajectory)
    if record is not None:
        record += calls
    samples = sampled.result()
    del fp
    chosen = {}
    for name in progress_bar([n for n in plans if n in samples], desc="smoothing search", unit="layer",
                     enabled=progress):
        chosen[name] = search_rotated_smoothing(samples[name], weight_of(name), plans[name], abits=abits,
                                                alphas=alphas)
    return chosen
