"""Fake-quant simulation of a QuantPlan: the numerical oracle for every lowering.

Each planned ``nn.Linear`` becomes a :class:`FakeQuantLinear` computing Eq. 11 of the paper (other
methods add smoothing, group-wise scales, TLQ levels or stored weights; see ``layer_plan``):
``y = Q_w(W_res - W_L) Q_G(z) + (W_G + W_L) z + bias`` with ``z = x R`` (R the orthonormal Hadamard of
the input dim, so ``W x = (W R)(x R)``), ``Q_G`` per-token at the activation bits scheduled for the
current timestep, ``Q_w`` per output channel at the layer's weight bits. Attention matmuls and softmax
stay in float (the paper keeps softmax at 8 bits).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.weights import materialize, source_of
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.gaussian import QuantizedWeight, fake_quantize_tokens, fake_quantize_weight, quantize_weight
from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.hsvd import HSVD, hsvd
from qdit4sr_export.quant.plan import LayerPlan, QuantPlan, check_plan_matches, weights_fingerprint


class StepState:
    """Shared mutable state: which timestep-grid index the simulated model is at (None = weights only)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.quantize_activations = True


def make_rotation(spec: Mapping[str, Any] | None, name: str, tensors: Mapping[str, torch.Tensor]):
    """The rotation object a layer plan names (anything with ``apply``), or None."""
    if spec is None:
        return None
    spec = dict(spec)
    if spec.pop("kind", "hadamard") == "hadamard":
        return Rotation.from_dict(spec)
    from qdit4sr_export.quant.outlier_rotation import BlockRotation

    def get(part: str) -> torch.Tensor | None:
        return tensors.get(f"{name}.rotation.{part}")

    blocks_1 = get("blocks_1")
    if blocks_1 is None:
        raise UserError(f"plan lacks tensor '{name}.rotation.blocks_1' of layer '{name}'s outlier rotation")
    return BlockRotation(n=int(spec["n"]), block=int(spec["block"]), perm_before=get("perm_before"),
                         blocks_1=blocks_1, perm=get("perm"), blocks_2=get("blocks_2"))


def quantize_residual(residual: torch.Tensor, plan: LayerPlan, bits: int) -> torch.Tensor:
    """The residual weight as the quantized layer sees it, in the plan's weight format."""
    if plan.weight_format == "tlq":
        from qdit4sr_export.quant.tlq import TLQParams, tlq_fake_quantize

        return tlq_fake_quantize(residual, TLQParams.from_dict({**plan.tlq, "bits": bits}))
    return fake_quantize_weight(residual, bits, clip=plan.clip, group_size=plan.group_size)


def split_weight(weight: torch.Tensor, plan: LayerPlan, name: str, tensors: Mapping[str, torch.Tensor]
                 ) -> tuple[torch.Tensor | None, Any, HSVD | None, torch.Tensor]:
    """A layer's weight as the plan transforms it: (smoothing divisor or None, rotation or None, H-SVD branch or None,
    the residual to quantize), all from the float32 weight (``W s``, then ``(W s) R``, then the FP branch split off)."""
    weight = weight.detach().to(torch.float32)
    smooth = None
    if plan.smoothing:
        if f"{name}.smooth" not in tensors:
            raise UserError(f"plan lacks tensor '{name}.smooth' (layer '{name}' is smoothed)")
        smooth = tensors[f"{name}.smooth"].to(torch.float32)
        weight = weight * smooth
    rotation = make_rotation(plan.rotation, name, tensors)
    w_h = rotation.apply(weight) if rotation is not None else weight
    if plan.svd_rank > 0 or plan.local_block is not None:
        branch = hsvd(w_h, rank=plan.svd_rank, local_rank=1 if plan.local_block else 0, block=plan.local_block)
        return smooth, rotation, branch, branch.residual
    return smooth, rotation, None, w_h


def stored_weight(tensors: Mapping[str, torch.Tensor], name: str, bits: int,
                  plan: LayerPlan) -> QuantizedWeight | torch.Tensor:
    """The quantized residual a method stored in the plan: int8 codes ``<layer>.weight.<bits>`` with their float32
    scales ``<layer>.weight_scale.<bits>`` (one per row and group; GPTQ) as a QuantizedWeight in the simulation's
    row layout, or a float weight as stored."""
    key = f"{name}.weight.{bits}"
    if key not in tensors:
        raise UserError(f"plan lacks tensor '{key}' (layer '{name}' stores its quantized weight)")
    stored = tensors[key]
    if stored.dtype != torch.int8:
        return stored
    scales = tensors.get(f"{name}.weight_scale.{bits}")
    groups = plan.in_features // (plan.group_size or plan.in_features)
    if scales is None or tuple(scales.shape) != (plan.out_features, groups) or \
            tuple(stored.shape) != (plan.out_features, plan.in_features):
        raise UserError(f"plan tensors of layer '{name}': int8 codes {tuple(stored.shape)} need float32 scales of "
                        f"shape {(plan.out_features, groups)} under '{name}.weight_scale.{bits}'")
    return QuantizedWeight(stored.reshape(plan.out_features * groups, -1), scales.to(torch.float32).reshape(-1, 1),
                           bits)


class FakeQuantLinear(nn.Module):
    """Eq. 11 for one layer (plus the smoothing, groups and weight formats other methods need); weights are
    transformed and quantized once, at construction, for every weight bit-width the plan schedules.

    Storage is compact, so a 2.7B model simulates in a few GB: integer-grid weights as int8 codes and float32 scales,
    the FP branch as its H-SVD factors; the float weights are rebuilt per call (bit-identical: the same ``codes *
    scale`` and ``fp_dense`` the quantizer and ``hsvd`` define). TLQ levels and method-stored weights stay float."""

    def __init__(self, linear: nn.Linear, plan: LayerPlan, state: StepState, *, name: str = "",
                 tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        tensors = tensors or {}
        self.plan = plan
        self.state = state
        self.dtype = dtype = linear.weight.dtype
        smooth, self.rotation, self.branch, residual = split_weight(linear.weight, plan, name, tensors)
        self.register_buffer("smooth", smooth.to(dtype) if smooth is not None else None)
        self.shape = tuple(residual.shape)
        if self.branch is not None:
            self.branch.residual = None  # only the factors are kept
        self.codes: dict[int, QuantizedWeight] = {}
        for bits in plan.distinct_weight_bits():
            if plan.stored_weight:
                stored = stored_weight(tensors, name, bits, plan)
                if isinstance(stored, QuantizedWeight):
                    self.codes[bits] = stored
                else:
                    self.register_buffer(f"w_quant_{bits}", stored.to(dtype))
            elif plan.weight_format == "int":
                rows = residual if plan.group_size is None else residual.reshape(-1, plan.group_size)
                self.codes[bits] = quantize_weight(rows, bits, clip=plan.clip)
            else:
                self.register_buffer(f"w_quant_{bits}", quantize_residual(residual, plan, bits).to(dtype))
        del residual
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)
        self.cache: dict | None = None  # rebuilt float weights, kept when the caller opts in (small models)

    def _cached(self, key, make):
        if self.cache is None:
            return make()
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def quantized_weight(self, bits: int) -> torch.Tensor:
        """The layer's quantized residual at ``bits`` (what ``quantize_residual`` gives), in the layer's dtype."""
        if bits in self.codes:
            return self._cached(bits, lambda: self.codes[bits].dequantize(torch.float32).reshape(self.shape)
                                .to(self.dtype))
        return getattr(self, f"w_quant_{bits}")

    @property
    def w_fp(self) -> torch.Tensor | None:
        """The FP branch ``W_G + W_L`` as one matrix (None without H-SVD)."""
        if self.branch is None:
            return None
        return self._cached("fp", lambda: self.branch.fp_dense().to(self.dtype))

    def current_abits(self) -> int | None:
        if not self.state.quantize_activations or self.state.step is None:
            return None
        return self.plan.abits[self.state.step]

    def current_wbits(self) -> int:
        return self.plan.wbits if self.state.step is None else self.plan.weight_bits_at(self.state.step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        z = self.rotation.apply(x) if self.rotation is not None else x
        abits = self.current_abits()
        zq = fake_quantize_tokens(z, abits, clip=self.plan.clip, group_size=self.plan.group_size) if abits else z
        y = torch.nn.functional.linear(zq, self.quantized_weight(self.current_wbits()))
        w_fp = self.w_fp
        if w_fp is not None:
            y = y + torch.nn.functional.linear(z, w_fp)
        if self.bias is not None:
            y = y + self.bias
        return y


class SimulatedModel:
    """Handle returned by :func:`apply_plan`: the model (modified in place) and its timestep state."""

    def __init__(self, model: nn.Module, plan: QuantPlan, state: StepState) -> None:
        self.model = model
        self.plan = plan
        self.state = state

    def cache_weights(self) -> None:
        """Keep each layer's rebuilt float weights between calls: the same numbers, several times faster, at the
        cost of a float copy of every weight (fine for small models; the default rebuilds them per call)."""
        for module in self.model.modules():
            if isinstance(module, FakeQuantLinear):
                module.cache = {}

    def weights_only(self, enabled: bool = True) -> None:
        """Quantize weights only (the state in which VaTMP collects activation statistics)."""
        self.state.quantize_activations = not enabled


def _loaded_linear(linear: nn.Linear, source, name: str) -> nn.Linear:
    """A float32 copy of a meta linear with its weight and bias read from ``source``."""
    loaded = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    loaded.weight = nn.Parameter(source.tensor(f"{name}.weight"), requires_grad=False)
    if linear.bias is not None:
        loaded.bias = nn.Parameter(source.tensor(f"{name}.bias"), requires_grad=False)
    return loaded


def apply_plan(model: nn.Module, plan: QuantPlan, *, check: bool = True) -> SimulatedModel:
    """Swap every planned linear of ``model`` for a :class:`FakeQuantLinear`, in place.

    The current timestep is read from each forward call's ``timestep`` argument and mapped to the
    nearest timestep of the plan's grid, so the scheduled activation bits follow the trajectory.
    """
    linears = quantizable_linears(model)
    if check:
        check_plan_matches(plan, model.config, linears, weights_fingerprint(model, sorted(plan.layers)))
    state = StepState()
    source = source_of(model)
    materialize(model, skip=plan.layers)  # a lazily opened model: everything but the planned layers, in float32
    modules = dict(model.named_modules())
    for name, lp in plan.layers.items():
        parent_name, _, child = name.rpartition(".")
        linear = modules[name]
        if linear.weight.device.type == "meta":  # read this layer alone, quantize it, drop the float weight
            linear = _loaded_linear(linear, source, name)
        setattr(modules[parent_name], child, FakeQuantLinear(linear, lp, state, name=name, tensors=plan.tensors))

    def follow_timestep(module, args, kwargs):
        t = kwargs.get("timestep", args[4] if len(args) > 4 else None)
        if t is not None:
            value = float(torch.as_tensor(t).reshape(-1)[0])
            state.step = plan.step_for_timestep(value)

    model.register_forward_pre_hook(follow_timestep, with_kwargs=True)
    return SimulatedModel(model, plan, state)
