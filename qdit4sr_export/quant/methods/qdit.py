"""Q-DiT (CVPR 2025): per-layer group sizes (shared by the weight's input-channel groups and the layer's
input activation) chosen by an evolutionary search under a mean group size >= 128; activations dynamic
per token per group; weights by GPTQ with those groups.

Fitness here is the simulated model's output MSE against the FP model on states taken from the FP
calibration trajectory (the paper uses a sample-quality metric on a small image set), with RTN weights
during the search and GPTQ only for the final genome, so a search costs forward passes, not GPTQ runs.
One trajectory pass records both the fitness states and the GPTQ Hessians.
"""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.methods.base import CalibratedConfig
from qdit4sr_export.quant.methods.qdit4sr import is_active
from qdit4sr_export.quant.methods.registry import register


@dataclass(frozen=True)
class QDiTConfig(CalibratedConfig):
    """Search budgets default to what finishes on a small model on 2 CPU cores in minutes; the paper uses
    population 50, top 10, 25 mutations, 25 crossovers, 10-20 generations."""

    population: int = 12
    top_k: int = 4
    mutations: int = 6
    crossovers: int = 6
    mutation_prob: float = 0.1
    generations: int = 3
    min_mean_group: float = 128.0
    eval_states: int = 4  # steps of the FP trajectory (among those a run executes) the fitness is measured at
    eval_samples: int = 4  # calibration samples the fitness is measured on (the first ones)
    gptq: bool = True
    damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_states < 1 or self.eval_samples < 1:
            raise UserError(f"qdit: eval_states and eval_samples must be >= 1, got {self.eval_states} and "
                            f"{self.eval_samples}")
        self.evolution()  # validates the search options

    def evolution(self):
        """The search settings (an :class:`~qdit4sr_export.quant.evolution.EvolutionConfig`, which validates them)."""
        from qdit4sr_export.quant.evolution import EvolutionConfig

        return EvolutionConfig(population=self.population, top_k=self.top_k, mutations=self.mutations,
                               crossovers=self.crossovers, mutation_prob=self.mutation_prob,
                               generations=self.generations, min_mean=self.min_mean_group, seed=self.calib_seed)


def eval_steps(first: int, steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps among ``first..steps-1`` (fewer when fewer run)."""
    n, m = steps - first, min(count, steps - first)
    return sorted({first + round(i * (n - 1) / max(m - 1, 1)) for i in range(m)})


@register("qdit", summary="evolutionary search of per-layer group sizes (mean >= 128), per-token-per-group "
          "activations, GPTQ weights", config=QDiTConfig, needs_calibration=True)
def build_qdit(model, config: QDiTConfig, *, calibration=None, progress: bool = False):
    import copy

    import torch

    from qdit4sr_export.quant.calibration import Hessians, collect
    from qdit4sr_export.quant.evolution import GROUP_CHOICES, evolve_group_sizes
    from qdit4sr_export.quant.gptq import gptq_quantize
    from qdit4sr_export.quant.layer_plan import LayerPlan
    from qdit4sr_export.quant.methods.common import PlanContext, static_bits, trajectory
    from qdit4sr_export.quant.simulate import apply_plan
    from qdit4sr_export.report.progress import progress_bar

    ctx = PlanContext.build(model, steps=config.steps, shift=config.shift)
    abits = static_bits(config.abits, ctx.steps)
    names = list(ctx.linears)
    searched = [n for n in names if is_active(n)]
    allowed = [[g for g in GROUP_CHOICES if ctx.linears[n][1] % g == 0] for n in searched]
    empty = [n for n, a in zip(searched, allowed) if not a]
    if empty:
        raise UserError(f"qdit: no group size in {GROUP_CHOICES} divides the input width of layer '{empty[0]}'")

    picks = eval_steps(ctx.first_step(config.start_sigma), ctx.steps, config.eval_states)
    parts: dict[int, list[tuple[torch.Tensor, ...]]] = {i: [] for i in picks}
    hessians = Hessians(searched if config.gptq else [])
    collect(model, calibration, [hessians], progress=progress,
            on_step=lambda i, args: parts[i].append(args) if i in parts else None, **trajectory(config))
    n = config.eval_samples
    states = [tuple(torch.cat(column)[:n].clone() for column in zip(*parts[i])) for i in picks]
    with torch.inference_mode():
        references = [model(*s) for s in states]

    def layer_plans(groups: dict[str, int], stored: set[str]) -> dict[str, LayerPlan]:
        return {n: LayerPlan(in_features=i, out_features=o, wbits=config.wbits, abits=abits, clip="minmax",
                             group_size=groups.get(n), active=is_active(n), stored_weight=n in stored)
                for n, (o, i) in ctx.linears.items()}

    def cost(genome: tuple[int, ...]) -> float:
        sim = apply_plan(copy.deepcopy(model), ctx.plan("qdit", config, layer_plans(dict(zip(searched, genome)),
                                                                                    set())), check=False)
        with torch.inference_mode():
            err = sum(float((sim.model(*s) - r).pow(2).mean()) for s, r in zip(states, references))
        return err / len(states)

    bar = progress_bar(total=config.generations + 1, desc="evolution", unit="generation", enabled=progress,
               leave=False)
    result = evolve_group_sizes(len(searched), cost, config.evolution(), allowed=allowed,
                                progress=lambda generation, best: bar.update(1))
    bar.close()
    groups = dict(zip(searched, result.best))
    notes = [f"evolution: {result.evaluations} genomes evaluated, best output MSE {result.best_cost:.4g} "
             f"(history {', '.join(f'{c:.4g}' for c in result.history)}), fitness on {len(states[0][0])} "
             f"sample(s) at step(s) {', '.join(map(str, picks))}"]
    tensors = {}
    if config.gptq:
        found = hessians.result()
        for name, hessian in progress_bar(found.items(), desc="GPTQ", unit="layer", enabled=progress, leave=False):
            q = gptq_quantize(ctx.weight(name), hessian, config.wbits, group_size=groups[name], clip="minmax",
                              damp=config.damp)
            tensors[f"{name}.weight.{config.wbits}"] = q.weight
            tensors[f"{name}.weight_scale.{config.wbits}"] = q.scales
        notes.append(f"GPTQ on {len(found)} layer(s) (damping {config.damp}, block 128)")
    return ctx.plan("qdit", config, layer_plans(groups, {k.rsplit(".weight.", 1)[0] for k in tensors
                                                         if ".weight." in k}),
                    notes=notes, tensors=tensors)
