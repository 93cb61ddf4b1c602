"""AdaTSQ: timestep-dynamic, layer-wise activation bits chosen by beam search with Pareto pruning on
(error, average bits), scored end to end against the FP trajectory; weights by GPTQ with a
Fisher-weighted Hessian H' = sum_t alpha_t X_t^T X_t.

Choices this implementation makes (AdaTSQ leaves them to the model):
- Candidate configurations per timestep: "low" (the less sensitive half of the layers at abits - 1),
  "mid" (every layer at abits), "high" (the more sensitive half at abits + 1); a layer's sensitivity is
  its mean input energy on the calibration trajectory. A path's bits are the parameter-weighted average.
- Fisher sensitivity I_t: the mean squared change of the final latent when the FP model's output at step t is
  perturbed by small Gaussian noise, per unit noise energy, to first order (one vector-Jacobian product per
  step; :func:`~qdit4sr_export.quant.temporal.fisher_sensitivity`); alpha_t = I_t / sum I_t.
- The error of a path prefix is the MSE between the latent it reaches and the FP latent at that step, on the
  first ``search_samples`` calibration samples; the state before each step is cached, so the search runs
  O(steps x beam x candidates) model steps.
- Everything follows the calibration trajectory: only the steps a run from ``start_sigma`` executes are
  searched and budgeted; earlier steps keep static ``abits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.methods.base import CalibratedConfig
from qdit4sr_export.quant.methods.qdit4sr import is_active
from qdit4sr_export.quant.methods.registry import register

CANDIDATES = ("low", "mid", "high")


@dataclass(frozen=True)
class AdaTSQConfig(CalibratedConfig):
    ABITS_SCHEDULE: ClassVar[str] = "always"  # the search picks per-timestep bits around abits
    beam_width: int = 4  # AdaTSQ's beam; a width of 3^(steps-1) makes the search exhaustive
    search_samples: int = 8  # calibration samples the search's end-to-end error is measured on (the first)
    damp: float = 0.01
    cache_states: bool = True  # False: every prefix re-runs from the first step (the reference; O(steps^2))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.abits).is_integer() or not 3 <= self.abits <= 7:
            raise UserError(f"adatsq: --abits must be an integer in 3..7 (candidates use abits-1..abits+1), "
                            f"got {self.abits}")
        if self.beam_width < 1 or self.search_samples < 1:
            raise UserError("adatsq: beam_width >= 1 and search_samples >= 1")


def candidate_bits(names: list[str], sensitivity: dict[str, float], abits: int) -> list[dict[str, int]]:
    """Per-layer activation bits of the low / mid / high configurations."""
    ranked = sorted(names, key=lambda n: (sensitivity.get(n, 0.0), n))
    low_half, high_half = set(ranked[: len(ranked) // 2]), set(ranked[len(ranked) // 2:])
    return [{n: abits - 1 if n in low_half else abits for n in names},
            {n: abits for n in names},
            {n: abits + 1 if n in high_half else abits for n in names}]


def search_extensions(steps: int, beam_width: int, candidates: int = len(CANDIDATES)) -> int:
    """Prefixes a beam search evaluates when no budget prunes any: the progress bar's total."""
    return sum(min(beam_width, candidates ** t) * candidates for t in range(steps))


@register("adatsq", summary="per-timestep layer-wise activation bits by Pareto beam search on end-to-end "
          "error; Fisher-weighted GPTQ weights", config=AdaTSQConfig, needs_calibration=True)
def build_adatsq(model, config: AdaTSQConfig, *, calibration=None, progress: bool = False):
    import copy

    import numpy as np

    from qdit4sr_export.quant.beam import BeamConfig, beam_search
    from qdit4sr_export.quant.calibration import ActivationVariance, Hessians
    from qdit4sr_export.quant.gptq import gptq_quantize
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, static_bits, trajectory
    from qdit4sr_export.quant.simulate import apply_plan
    from qdit4sr_export.quant.temporal import PathErrors, fisher_sensitivity, fp_trajectory
    from qdit4sr_export.report.progress import progress_bar

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    steps, abits = ctx.steps, int(config.abits)
    active = [n for n in ctx.linears if is_active(n)]
    energy = ActivationVariance(active, steps)
    traj = fp_trajectory(model, calibration, [energy], progress=progress, **trajectory(config))
    first, run = traj.first, steps - traj.first
    sensitivity = {n: float(np.nanmean(row)) for n, row in zip(active, energy.result()) if not np.isnan(row).all()}
    candidates = candidate_bits(active, sensitivity, abits)
    sizes = {n: o * i for n, (o, i) in ctx.linears.items()}
    total = sum(sizes[n] for n in active)
    cand_avg = [sum(sizes[n] * c[n] for n in active) / total for c in candidates]

    hessians = Hessians(active)
    sens = fisher_sensitivity(model, traj, [hessians], seed=config.calib_seed + 7, progress=progress,
                              weigh=lambda w: setattr(hessians, "weight", w))
    alpha = sens / sens.sum() if sens.sum() > 0 else np.full(run, 1.0 / run)
    tensors = {}
    for n, h in progress_bar(hessians.result().items(), desc="GPTQ", unit="layer", enabled=progress, leave=False):
        q = gptq_quantize(ctx.weight(n), h, config.wbits, clip="minmax", damp=config.damp)
        tensors[f"{n}.weight.{config.wbits}"] = q.weight
        tensors[f"{n}.weight_scale.{config.wbits}"] = q.scales  # codes x scales: stored as INT4 codes
    stored = {k.rsplit(".weight.", 1)[0] for k in tensors if ".weight." in k}

    def layers_for(schedule: list[dict[str, int]]) -> dict[str, LayerPlan]:
        """Plans with ``schedule`` on the steps that run; earlier steps static ``abits`` ("mid")."""
        padded = [candidates[1]] * first + schedule
        return {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, clip="minmax",
                             abits=tuple(c.get(n, abits) for c in padded) if n in active else static_bits(abits, steps),
                             active=is_active(n), stored_weight=n in stored)
                for n, (o, i) in ctx.linears.items()}

    # One simulated model per candidate (constant bits); a path switches between them step by step.
    sims = [apply_plan(copy.deepcopy(model), ctx.plan("adatsq", config, layers_for([c] * run), tensors=tensors),
                       check=False).model for c in candidates]
    errors = PathErrors(sims, traj.subset(config.search_samples), cached=config.cache_states)
    bar = progress_bar(total=search_extensions(run, config.beam_width), desc="beam search", unit="path",
               enabled=progress, leave=False)

    def scored(prefix: tuple[int, ...]) -> float:
        bar.update(1)
        return errors(prefix)

    found = beam_search(run, cand_avg, scored, BeamConfig(beam_width=config.beam_width, budget=float(abits)))
    bar.close()
    schedule = [candidates[i] for i in found.best]
    notes = [f"beam search: path {' '.join(CANDIDATES[i] for i in found.best)} over steps {first}-{steps - 1} "
             f"of {steps}, error {found.best_error:.4g} on {len(errors.fp[0])} sample(s), average activation "
             f"bits {found.best_avg_bits:.3f}, {found.evaluations} evaluations ({errors.calls} model calls)",
             "Fisher weights alpha_t: " + ", ".join(f"{a:.3f}" for a in alpha)]
    return ctx.plan("adatsq", config, layers_for(schedule), notes=notes, tensors=tensors)
