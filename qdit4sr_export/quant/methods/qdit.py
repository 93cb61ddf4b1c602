"""Q-DiT (CVPR 2025): per-layer group sizes (shared by the weight's input-channel groups and the layer's
input activation) chosen by an evolutionary search under a mean group size >= 128; activations dynamic
per token per group; weights by GPTQ with those groups.

Fitness here is the simulated model's output MSE against the FP model on states taken from the FP
calibration trajectory (the paper uses a sample-quality metric on a small image set), with RTN weights
during the search and GPTQ only for the final genome, so a search costs forward passes, not GPTQ runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.calibration import collect_hessians, run_trajectory
from qdit4sr_export.quant.evolution import GROUP_CHOICES, EvolutionConfig, evolve_group_sizes
from qdit4sr_export.quant.gptq import gptq_quantize
from qdit4sr_export.quant.layer_plan import LayerPlan
from qdit4sr_export.quant.methods.base import MethodConfig
from qdit4sr_export.quant.methods.common import PlanContext, static_bits
from qdit4sr_export.quant.methods.qdit4sr import is_active
from qdit4sr_export.quant.methods.registry import register
from qdit4sr_export.quant.simulate import apply_plan


@dataclass(frozen=True)
class QDiTConfig(MethodConfig):
    """Search budgets default to what finishes on a small model on 2 CPU cores in minutes; the paper uses
    population 50, top 10, 25 mutations, 25 crossovers, 10-20 generations."""

    population: int = 12
    top_k: int = 4
    mutations: int = 6
    crossovers: int = 6
    mutation_prob: float = 0.1
    generations: int = 3
    min_mean_group: float = 128.0
    eval_states: int = 4  # FP-trajectory states the fitness is measured on
    gptq: bool = True
    damp: float = 0.01
    calib_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_states < 1:
            raise UserError(f"qdit: eval_states must be >= 1, got {self.eval_states}")
        self.evolution()  # validates the search options

    def evolution(self) -> EvolutionConfig:
        return EvolutionConfig(population=self.population, top_k=self.top_k, mutations=self.mutations,
                               crossovers=self.crossovers, mutation_prob=self.mutation_prob,
                               generations=self.generations, min_mean=self.min_mean_group, seed=self.calib_seed)


def _eval_states(model, calibration, config: QDiTConfig, steps: int) -> list[tuple[torch.Tensor, ...]]:
    """Model inputs at ``eval_states`` evenly spaced steps of the FP trajectory."""
    picks = {round(i * (steps - 1) / max(config.eval_states - 1, 1)) for i in range(config.eval_states)}
    states = []
    run_trajectory(model, calibration, steps=steps, shift=config.shift, seed=config.calib_seed,
                   on_step=lambda i, args: states.append(tuple(a.clone() for a in args)) if i in picks else None)
    return states


@register("qdit", summary="evolutionary search of per-layer group sizes (mean >= 128), per-token-per-group "
          "activations, GPTQ weights", config=QDiTConfig, needs_calibration=True)
def build_qdit(model, config: QDiTConfig, *, calibration=None, progress: bool = False):
    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    names = list(ctx.linears)
    searched = [n for n in names if is_active(n)]
    allowed = [[g for g in GROUP_CHOICES if ctx.linears[n][1] % g == 0] for n in searched]
    empty = [n for n, a in zip(searched, allowed) if not a]
    if empty:
        raise UserError(f"qdit: no group size in {GROUP_CHOICES} divides the input width of layer '{empty[0]}'")

    states = _eval_states(model, calibration, config, ctx.steps)
    with torch.no_grad():
        references = [model(*s) for s in states]

    def layer_plans(groups: dict[str, int], stored: set[str]) -> dict[str, LayerPlan]:
        return {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, abits=abits, clip="minmax",
                             group_size=groups.get(n), active=is_active(n), stored_weight=n in stored)
                for n, (o, i) in ctx.linears.items()}

    def cost(genome: tuple[int, ...]) -> float:
        sim = apply_plan(copy.deepcopy(model), ctx.plan("qdit", config, layer_plans(dict(zip(searched, genome)),
                                                                                    set())), check=False)
        with torch.no_grad():
            err = sum(float((sim.model(*s) - r).pow(2).mean()) for s, r in zip(states, references))
        return err / len(states)

    result = evolve_group_sizes(len(searched), cost, config.evolution(), allowed=allowed)
    groups = dict(zip(searched, result.best))
    notes = [f"evolution: {result.evaluations} genomes evaluated, best output MSE {result.best_cost:.4g} "
             f"(history {', '.join(f'{c:.4g}' for c in result.history)})"]
    tensors = {}
    if config.gptq:
        hessians = collect_hessians(model, searched, calibration, steps=ctx.steps, shift=config.shift,
                                    seed=config.calib_seed, progress=progress)
        for name, hessian in hessians.items():
            q = gptq_quantize(ctx.weight(name), hessian, config.wbits, group_size=groups[name], clip="minmax",
                              damp=config.damp)
            tensors[f"{name}.weight.{config.wbits}"] = q.weight
            tensors[f"{name}.weight_scale.{config.wbits}"] = q.scales
        notes.append(f"GPTQ on {len(hessians)} layer(s) (damping {config.damp}, block 128)")
    return ctx.plan("qdit", config, layer_plans(groups, {k.rsplit(".weight.", 1)[0] for k in tensors
                                                         if ".weight." in k}),
                    notes=notes, tensors=tensors)
