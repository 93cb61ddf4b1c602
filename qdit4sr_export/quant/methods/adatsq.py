"""AdaTSQ: timestep-dynamic, layer-wise activation bits chosen by beam search with Pareto pruning on
(error, average bits), scored end to end against the FP trajectory; weights by GPTQ with a
Fisher-weighted Hessian H' = sum_t alpha_t X_t^T X_t.

Choices this implementation makes (AdaTSQ leaves them to the model):
- Candidate configurations per timestep: "low" (the less sensitive half of the layers at abits - 1),
  "mid" (every layer at abits), "high" (the more sensitive half at abits + 1); a layer's sensitivity is
  its mean input energy on the calibration trajectory. A path's bits are the parameter-weighted average.
- Fisher sensitivity I_t by finite differences: the mean squared change of the final latent when the FP
  model's output at step t is perturbed by Gaussian noise (relative size 1e-2), per unit noise energy;
  alpha_t = I_t / sum I_t.
- The error of a path prefix is the MSE between the latent it reaches and the FP latent at that step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.beam import BeamConfig, beam_search
from qdit4sr_export.quant.calibration import collect_activation_variance, collect_hessians, run_trajectory
from qdit4sr_export.quant.gptq import gptq_quantize
from qdit4sr_export.quant.layer_plan import LayerPlan
from qdit4sr_export.quant.methods.base import MethodConfig
from qdit4sr_export.quant.methods.common import PlanContext, static_bits
from qdit4sr_export.quant.methods.qdit4sr import is_active
from qdit4sr_export.quant.methods.registry import register
from qdit4sr_export.quant.simulate import apply_plan
from qdit4sr_export.sampling import flow_schedule

CANDIDATES = ("low", "mid", "high")


@dataclass(frozen=True)
class AdaTSQConfig(MethodConfig):
    beam_width: int = 4  # AdaTSQ's beam; a width of 3^(steps-1) makes the search exhaustive
    fisher_noise: float = 1e-2
    damp: float = 0.01
    calib_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.abits).is_integer() or not 3 <= self.abits <= 7:
            raise UserError(f"adatsq: --abits must be an integer in 3..7 (candidates use abits-1..abits+1), "
                            f"got {self.abits}")
        if self.beam_width < 1 or self.fisher_noise <= 0:
            raise UserError("adatsq: beam_width >= 1 and fisher_noise > 0")


def _candidate_bits(names: list[str], sensitivity: dict[str, float], abits: int) -> list[dict[str, int]]:
    """Per-layer activation bits of the low / mid / high configurations."""
    ranked = sorted(names, key=lambda n: (sensitivity.get(n, 0.0), n))
    low_half, high_half = set(ranked[: len(ranked) // 2]), set(ranked[len(ranked) // 2:])
    return [{n: abits - 1 if n in low_half else abits for n in names},
            {n: abits for n in names},
            {n: abits + 1 if n in high_half else abits for n in names}]


def _fisher_weights(model, fp_args: list[tuple[torch.Tensor, ...]], final: torch.Tensor, sigmas: torch.Tensor,
                    config: AdaTSQConfig) -> np.ndarray:
    """alpha_t from the final-latent sensitivity to a perturbation of the model output at step t."""
    steps = len(fp_args)
    g = torch.Generator().manual_seed(config.calib_seed + 7)
    sens = np.zeros(steps)
    for t, (x, lr, txt, pooled, ts) in enumerate(fp_args):
        with torch.no_grad():
            v = model(x, lr, txt, pooled, ts)
            noise = torch.randn(v.shape, generator=g) * config.fisher_noise * v.std()
            y = x + (sigmas[t + 1] - sigmas[t]) * (v + noise)
            for s in range(t + 1, steps):
                y = y + (sigmas[s + 1] - sigmas[s]) * model(y, *fp_args[s][1:])
        sens[t] = float((y - final).pow(2).mean() / noise.pow(2).mean())
    return sens / sens.sum() if sens.sum() > 0 else np.full(steps, 1.0 / steps)


@register("adatsq", summary="per-timestep layer-wise activation bits by Pareto beam search on end-to-end "
          "error; Fisher-weighted GPTQ weights", config=AdaTSQConfig, needs_calibration=True)
def build_adatsq(model, config: AdaTSQConfig, *, calibration=None, progress: bool = False):
    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    steps, abits = ctx.steps, int(config.abits)
    names = list(ctx.linears)
    active = [n for n in names if is_active(n)]
    energy = collect_activation_variance(model, active, calibration, steps=steps, shift=config.shift,
                                         seed=config.calib_seed)
    sensitivity = {n: float(np.nanmean(row)) for n, row in zip(active, energy) if not np.isnan(row).all()}
    candidates = _candidate_bits(active, sensitivity, abits)
    sizes = {n: o * i for n, (o, i) in ctx.linears.items()}
    total = sum(sizes[n] for n in active)
    cand_avg = [sum(sizes[n] * c[n] for n in active) / total for c in candidates]

    fp_args: list[tuple[torch.Tensor, ...]] = []
    final = run_trajectory(model, calibration, steps=steps, shift=config.shift, seed=config.calib_seed,
                           on_step=lambda i, args: fp_args.append(args))
    fp_latents = [args[0] for args in fp_args] + [final]
    _, sigmas = flow_schedule(steps, shift=config.shift)
    alpha = _fisher_weights(model, fp_args, final, sigmas, config)
    hessians = collect_hessians(model, active, calibration, steps=steps, shift=config.shift,
                                seed=config.calib_seed, step_weights=alpha, progress=progress)
    tensors = {}
    for n, h in hessians.items():
        q = gptq_quantize(ctx.weight(n), h, config.wbits, clip="minmax", damp=config.damp)
        tensors[f"{n}.weight.{config.wbits}"] = q.weight
        tensors[f"{n}.weight_scale.{config.wbits}"] = q.scales  # codes x scales: stored as INT4 codes
    stored = {k.rsplit(".weight.", 1)[0] for k in tensors if ".weight." in k}

    def layers_for(schedule: list[dict[str, int]]) -> dict[str, LayerPlan]:
        padded = schedule + [candidates[1]] * (steps - len(schedule))
        return {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, clip="minmax",
                             abits=tuple(c.get(n, abits) for c in padded) if n in active else static_bits(abits, steps),
                             active=is_active(n), stored_weight=n in stored)
                for n, (o, i) in ctx.linears.items()}

    # One simulated model per candidate (constant bits); a path switches between them step by step.
    sims = []
    for c in candidates:
        plan = ctx.plan("adatsq", config, layers_for([c] * steps), tensors=tensors)
        sims.append(apply_plan(copy.deepcopy(model), plan, check=False).model)
    latents: dict[tuple[int, ...], torch.Tensor] = {(): fp_latents[0]}

    def latent(prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in latents:
            t = len(prefix) - 1
            x = latent(prefix[:-1])
            with torch.no_grad():
                latents[prefix] = x + (sigmas[t + 1] - sigmas[t]) * sims[prefix[-1]](x, *fp_args[t][1:])
        return latents[prefix]

    def error(prefix: tuple[int, ...]) -> float:
        return float((latent(prefix) - fp_latents[len(prefix)]).pow(2).mean())

    found = beam_search(steps, cand_avg, error, BeamConfig(beam_width=config.beam_width, budget=float(abits)))
    schedule = [candidates[i] for i in found.best]
    notes = [f"beam search: path {' '.join(CANDIDATES[i] for i in found.best)}, error {found.best_error:.4g}, "
             f"average activation bits {found.best_avg_bits:.3f}, {found.evaluations} evaluations",
             "Fisher weights alpha_t: " + ", ".join(f"{a:.3f}" for a in alpha)]
    return ctx.plan("adatsq", config, layers_for(schedule), notes=notes, tensors=tensors)
