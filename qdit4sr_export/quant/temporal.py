"""AdaTSQ's view of the calibration trajectory: the FP states before each step, each step's Fisher sensitivity
(by one vector-Jacobian product per step), and the end-to-end error of a per-step choice of simulated models,
with the state before each step cached so a path prefix costs one step, not a re-run from the start.

Step k (``first <= k < steps``) maps x_k to x_{k+1} = x_k + d_k v(x_k, t_k), d_k = sigma_{k+1} - sigma_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from qdit4sr_export.quant.calibration import CalibrationInputs, Statistic, collect, watching
from qdit4sr_export.report.progress import progress_bar


@dataclass
class FPTrajectory:
    """The FP model's trajectory over the calibration inputs, batch by batch: ``states[k][b]`` is x_k of batch b,
    ``conditions[b]`` its (lr, text, pooled), ``final[b]`` its last latent."""

    first: int
    steps: int
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    states: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    conditions: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    final: list[torch.Tensor] = field(default_factory=list)

    def delta(self, k: int) -> float:
        return float(self.sigmas[k + 1] - self.sigmas[k])

    def args(self, k: int, b: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's inputs at step k for batch b with latent x."""
        lr, text, pooled = self.conditions[b]
        return x, lr, text, pooled, self.timesteps[k].expand(x.shape[0])

    def subset(self, n: int) -> "FPTrajectory":
        """The same trajectory for the first ``n`` samples, as one batch (what a search scores on)."""
        def head(parts: Sequence[torch.Tensor]) -> torch.Tensor:
            return torch.cat(list(parts))[:n]
        return FPTrajectory(self.first, self.steps, self.timesteps, self.sigmas,
                            {k: [head(v)] for k, v in self.states.items()},
                            [tuple(head(c) for c in zip(*self.conditions))], [head(self.final)])


def fp_trajectory(model: nn.Module, inputs: CalibrationInputs, statistics: Sequence[Statistic], *, steps: int,
                  shift: float, start_sigma: float, seed: int, batch_size: int = 8,
                  progress: bool = False) -> FPTrajectory:
    """One calibration pass that keeps the state before every step (and feeds ``statistics``)."""
    from qdit4sr_export.model.sampling import flow_schedule, start_index

    timesteps, sigmas = flow_schedule(steps, shift=shift)
    traj = FPTrajectory(start_index(sigmas, start_sigma), steps, timesteps, sigmas)

    def keep(k: int, args: tuple[torch.Tensor, ...]) -> None:
        if k == traj.first:
            traj.conditions.append(args[1:4])
        traj.states.setdefault(k, []).append(args[0])

    final = collect(model, inputs, statistics, steps=steps, shift=shift, start_sigma=start_sigma, seed=seed,
                    batch_size=batch_size, progress=progress, on_step=keep)
    # Copies outside inference mode: normal tensors, which autograd may save.
    traj.states = {k: [x.clone() for x in v] for k, v in traj.states.items()}
    traj.conditions = [tuple(c.clone() for c in cond) for cond in traj.conditions]
    traj.final = [part.clone() for part in torch.split(final, [len(c[0]) for c in traj.conditions])]
    return traj


def fisher_sensitivity(model: nn.Module, traj: FPTrajectory, statistics: Sequence[Statistic], *, seed: int,
                       weigh: Callable[[float], None] | None = None, progress: bool = False) -> np.ndarray:
    """I_k for each step that runs: the mean squared change of the final latents per unit noise energy when the
    model's output at step k is perturbed by small Gaussian noise, to first order
    d_k^2 ||J_k||_F^2 / D (J_k = d x_final / d x_{k+1}, D elements), estimated with one seeded Gaussian probe u as
    d_k^2 ||J_k^T u||^2 / D. The J_k^T u come from one vector-Jacobian product per step and batch, last step
    first. Each step's forward calls also feed ``statistics``; ``weigh(I_k)`` is called before step k's calls
    (AdaTSQ's Fisher-weighted Hessian takes its step weight from it)."""
    generator = torch.Generator().manual_seed(seed)
    probes = [torch.randn(f.shape, generator=generator) for f in traj.final]
    size = sum(f.numel() for f in traj.final)
    sens = np.zeros(traj.steps - traj.first)
    grads = [p.requires_grad for p in model.parameters()]
    bar = progress_bar(total=len(sens) * len(probes), desc="fisher", unit="step", enabled=progress, leave=False)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with watching(model, statistics) as current:
            for k in reversed(range(traj.first, traj.steps)):
                d = traj.delta(k)
                sens[k - traj.first] = d * d * sum(float(g.double().pow(2).sum()) for g in probes) / size
                if weigh is not None:
                    weigh(float(sens[k - traj.first]))
                current["step"] = k
                for b, g in enumerate(probes):
                    x = traj.states[k][b].detach().requires_grad_(k > traj.first)
                    with torch.enable_grad():
                        v = model(*traj.args(k, b, x))
                    if k > traj.first:  # the earliest step's J^T u is not needed
                        (jv,) = torch.autograd.grad(v, x, grad_outputs=g)
                        probes[b] = g + d * jv
                    bar.update(1)
    finally:
        for p, flag in zip(model.parameters(), grads):
            p.requires_grad_(flag)
        bar.close()
    return sens


class PathErrors:
    """``errors(prefix)``: the end-to-end error of running step ``first + j`` with ``models[prefix[j]]``: the MSE
    between the latent the prefix reaches and the FP latent after as many steps.

    ``cached`` (the default) keeps the latent each prefix reaches while its extensions may still need it (the
    current and the previous prefix length), so a prefix costs one step of one model: a beam search over S steps
    and C candidates runs O(S x beam x C) steps. Uncached, each prefix re-runs from the first step (O(S^2 ...)),
    the reference the cached search must equal. ``calls`` counts model forward calls."""

    def __init__(self, models: Sequence[nn.Module], traj: FPTrajectory, *, cached: bool = True,
                 batch_size: int = 8) -> None:
        self.models, self.traj, self.cached, self.batch_size = list(models), traj, cached, batch_size
        self.fp = [torch.cat(traj.states[k]) for k in range(traj.first, traj.steps)] + [torch.cat(traj.final)]
        self.conditions = [torch.cat(c) for c in zip(*traj.conditions)]
        self.latents: dict[tuple[int, ...], torch.Tensor] = {(): self.fp[0]}
        self.calls = 0

    def step(self, candidate: int, j: int, x: torch.Tensor) -> torch.Tensor:
        """One Euler step ``first + j`` of ``models[candidate]`` from x, in batches."""
        k = self.traj.first + j
        out = []
        with torch.inference_mode():
            for s in range(0, x.shape[0], self.batch_size):
                xb = x[s:s + self.batch_size]
                cond = tuple(c[s:s + self.batch_size] for c in self.conditions)
                v = self.models[candidate](xb, *cond, self.traj.timesteps[k].expand(xb.shape[0]))
                self.calls += 1
                out.append(xb + self.traj.delta(k) * v)
        return torch.cat(out)

    def latent(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if not self.cached:
            x = self.fp[0]
            for j, c in enumerate(prefix):
                x = self.step(c, j, x)
            return x
        if prefix not in self.latents:
            parent = self.latent(prefix[:-1])
            for old in [p for p in self.latents if 0 < len(p) < len(prefix) - 1]:
                del self.latents[old]  # no prefix of this length or longer extends them
            self.latents[prefix] = self.step(prefix[-1], len(prefix) - 1, parent)
        return self.latents[prefix]

    def __call__(self, prefix: tuple[int, ...]) -> float:
        return float((self.latent(prefix) - self.fp[len(prefix)]).double().pow(2).mean())
