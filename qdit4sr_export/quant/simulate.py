"""Fake-quant simulation of a QuantPlan: the numerical oracle for every lowering.

Each planned ``nn.Linear`` becomes a :class:`FakeQuantLinear` computing Eq. 11 of the paper:
``y = Q_w(W_res - W_L) Q_G(z) + (W_G + W_L) z + bias`` with ``z = x R`` (R the orthonormal Hadamard of
the input dim, so ``W x = (W R)(x R)``), ``Q_G`` per-token at the activation bits scheduled for the
current timestep, ``Q_w`` per output channel at the layer's weight bits. Attention matmuls and softmax
stay in float (the paper keeps softmax at 8 bits).
"""

from __future__ import annotations

import torch
from torch import nn

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.gaussian import fake_quantize_tokens, fake_quantize_weight
from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.hsvd import hsvd
from qdit4sr_export.quant.plan import LayerPlan, QuantPlan, check_plan_matches, weights_fingerprint


class StepState:
    """Shared mutable state: which timestep-grid index the simulated model is at (None = weights only)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.quantize_activations = True


class FakeQuantLinear(nn.Module):
    """Eq. 11 for one layer; weights are decomposed and quantized once, at construction."""

    def __init__(self, linear: nn.Linear, plan: LayerPlan, state: StepState) -> None:
        super().__init__()
        self.plan = plan
        self.state = state
        weight = linear.weight.detach().to(torch.float32)
        self.rotation = Rotation.from_dict(plan.rotation) if plan.rotation is not None else None
        w_h = self.rotation.apply(weight) if self.rotation is not None else weight
        if plan.svd_rank > 0 or plan.local_block is not None:
            dec = hsvd(w_h, rank=plan.svd_rank, local_rank=1 if plan.local_block else 0, block=plan.local_block)
            fp_branch, residual = dec.fp_dense(), dec.residual
        else:
            fp_branch, residual = None, w_h
        dtype = linear.weight.dtype
        self.register_buffer("w_quant", fake_quantize_weight(residual, plan.wbits, clip=plan.clip).to(dtype))
        self.register_buffer("w_fp", fp_branch.to(dtype) if fp_branch is not None else None)
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)

    def current_abits(self) -> int | None:
        if not self.state.quantize_activations or self.state.step is None:
            return None
        return self.plan.abits[self.state.step]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.rotation.apply(x) if self.rotation is not None else x
        abits = self.current_abits()
        zq = fake_quantize_tokens(z, abits, clip=self.plan.clip) if abits is not None else z
        y = torch.nn.functional.linear(zq, self.w_quant)
        if self.w_fp is not None:
            y = y + torch.nn.functional.linear(z, self.w_fp)
        if self.bias is not None:
            y = y + self.bias
        return y


class SimulatedModel:
    """Handle returned by :func:`apply_plan`: the model (modified in place) and its timestep state."""

    def __init__(self, model: nn.Module, plan: QuantPlan, state: StepState) -> None:
        self.model = model
        self.plan = plan
        self.state = state

    def set_step(self, step: int | None) -> None:
        if step is not None and not 0 <= step < len(self.plan.timesteps):
            raise UserError(f"step {step} is outside the plan's grid of {len(self.plan.timesteps)} timesteps")
        self.state.step = step

    def weights_only(self, enabled: bool = True) -> None:
        """Quantize weights only (the state in which VaTMP collects activation statistics)."""
        self.state.quantize_activations = not enabled


def apply_plan(model: nn.Module, plan: QuantPlan, *, check: bool = True) -> SimulatedModel:
    """Swap every planned linear of ``model`` for a :class:`FakeQuantLinear`, in place.

    The current timestep is read from each forward call's ``timestep`` argument and mapped to the
    nearest timestep of the plan's grid, so the scheduled activation bits follow the trajectory.
    """
    linears = quantizable_linears(model)
    if check:
        check_plan_matches(plan, model.config, linears, weights_fingerprint(model, sorted(plan.layers)))
    state = StepState()
    modules = dict(model.named_modules())
    for name, lp in plan.layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, FakeQuantLinear(modules[name], lp, state))

    def follow_timestep(module, args, kwargs):
        t = kwargs.get("timestep", args[4] if len(args) > 4 else None)
        if t is not None:
            value = float(torch.as_tensor(t).reshape(-1)[0])
            state.step = plan.step_for_timestep(value)

    model.register_forward_pre_hook(follow_timestep, with_kwargs=True)
    return SimulatedModel(model, plan, state)
