"""The quantized linear of the triton backend: ``rotate_quantize`` then ``lowbit_gemm`` on the engine set's codes.

One module per planned layer, holding the layer's input path and its stored weight at every bit width the
engine set has for it; the runner selects (weight bits, activation bits) per variant, so all variants share
one copy of the weights. Layers whose weights are stored in float (LRQ-DiT's twin-log levels:
no integer grid for a tensor-core GEMM) run their matmul in torch on the kernel's activation codes
(dequantized) and add the same epilogue: the one explicit torch fallback of the GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from qdit4sr_export.plugins.activation_spec import ActivationCodes, ActivationSpec
from qdit4sr_export.plugins.lowbit_gemm_reference import epilogue
from qdit4sr_export.plugins.packing import unpack_int4
from qdit4sr_export.plugins.rotate_quantize import RotateQuantize
from torch import nn

from qdit4sr_export.errors import UserError


def dequantize(act: ActivationCodes, n: int) -> torch.Tensor:
    """Float activations codes x scales (M, n); float activations z pass through."""
    if act.bits is None:
        return act.z
    codes = unpack_int4(act.codes) if act.bits <= 4 else act.codes
    m, groups = act.scales.shape
    return (codes.float().reshape(m, groups, n // groups) * act.scales[..., None]).reshape(m, n)


@dataclass(frozen=True)
class EpilogueTerms:
    """The float terms a GEMM adds (what ``lowbit_gemm_reference.epilogue`` reads): SVD-G up, SVD-L up, bias."""

    n: int
    svd_g_a: torch.Tensor | None = None
    svd_l_u: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def to(self, device) -> "EpilogueTerms":
        move = lambda t: None if t is None else t.to(device=device, dtype=torch.float32)
        return EpilogueTerms(self.n, move(self.svd_g_a), move(self.svd_l_u), move(self.bias))


class FloatWeightGemm:
    """Torch fallback for float-stored weights W (K, N): dequantized activations @ W + the same epilogue."""

    def __init__(self, weight: torch.Tensor, terms: EpilogueTerms, device: torch.device | str) -> None:
        if weight.dim() != 2 or weight.shape[1] != terms.n:
            raise UserError(f"float-stored weight must be (K, {terms.n}), got {tuple(weight.shape)}")
        self.weight = weight.to(device=device, dtype=torch.float32)
        self.terms = terms.to(device)

    def __call__(self, act: ActivationCodes, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        y = dequantize(act, self.weight.shape[0]) @ self.weight
        return epilogue(y, self.terms, act.h, act.t).to(out_dtype)


class KernelLinear(nn.Module):
    """``y = x W^T + b`` of one planned layer through the kernels; ``select`` sets the variant's bits."""

    def __init__(self, name: str, spec: ActivationSpec, gemms: dict[int, object], out_features: int,
                 device: torch.device | str) -> None:
        super().__init__()
        self.name = name
        self.in_features = spec.n
        self.out_features = out_features
        self.quantize = RotateQuantize(spec, device)
        self.gemms = gemms
        self.wbits: int | None = None
        self.abits: int | None = None

    def select(self, wbits: int, abits: int | None) -> None:
        if wbits not in self.gemms:
            raise KeyError(f"layer '{self.name}' has no stored {wbits}-bit weight")
        self.wbits, self.abits = wbits, abits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wbits is None:
            raise RuntimeError(f"layer '{self.name}': activate a variant first")
        lead = x.shape[:-1]
        act = self.quantize(x, self.abits, store_z=self.abits is None)
        y = self.gemms[self.wbits](act, out_dtype=x.dtype)
        return y.reshape(*lead, self.out_features)


class DeadLinear(nn.Module):
    """A planned layer whose output never reaches the model output (the exporter pruned it, so the engine set
    stores nothing for it): NaN of the right shape keeps the model's code path intact and makes any use loud."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((*x.shape[:-1], self.out_features), float("nan"))
