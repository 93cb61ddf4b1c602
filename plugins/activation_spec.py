"""ActivationSpec: everything static about a quantized linear's input path, shared by the kernel and its reference.

Order on the layer input x (each step optional, as ``quant/layer_plan.py`` defines it): smoothing ``x / s``,
rotation ``z = x R``, per-token (or per-token-per-group) quantization at the step's bits with the plan's
clip; beside it the H-SVD branches read the float z: SVD-G down ``h = z B`` (B = ``{layer}.svd_g.b``, n x r)
and SVD-L down ``t[m, p, q] = sum_i z[m, q s_i + i] v[p, q, i]`` (v = ``{layer}.svd_l.v``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import CLIPS


@dataclass(frozen=True)
class ActivationSpec:
    """A layer's input transform; ``rotation`` is a quant ``Rotation`` or an LRQ-DiT ``BlockRotation``."""

    n: int
    rotation: Any = None
    clip: str = "gaussian"
    group_size: int | None = None
    smooth: torch.Tensor | None = None
    svd_g_b: torch.Tensor | None = None
    svd_l_v: torch.Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        where = f"layer '{self.name}': " if self.name else ""
        if self.clip not in CLIPS:
            raise UserError(f"{where}clip {self.clip!r} is not one of {CLIPS}")
        if self.group_size is not None and (self.group_size < 1 or self.n % self.group_size):
            raise UserError(f"{where}group size {self.group_size} does not divide {self.n} channels")
        if self.smooth is not None and tuple(self.smooth.shape) != (self.n,):
            raise UserError(f"{where}smoothing vector must be ({self.n},), got {tuple(self.smooth.shape)}")
        if self.svd_g_b is not None and (self.svd_g_b.dim() != 2 or self.svd_g_b.shape[0] != self.n):
            raise UserError(f"{where}svd_g.b must be ({self.n}, rank), got {tuple(self.svd_g_b.shape)}")
        v = self.svd_l_v
        if v is not None and (v.dim() != 3 or v.shape[1] * v.shape[2] != self.n):
            raise UserError(f"{where}svd_l.v must be (P, Q, s_i) with Q s_i = {self.n}, got {tuple(v.shape)}")

    @property
    def rank(self) -> int:
        return 0 if self.svd_g_b is None else int(self.svd_g_b.shape[1])

    @property
    def where(self) -> str:
        return f"layer '{self.name}'" if self.name else "this layer"


@dataclass
class ActivationCodes:
    """What ``rotate_quantize`` returns for (M, n) tokens: codes (packed (M, n/2) uint8 for <= 4 bits, (M, n)
    int8 otherwise; None without bits), float32 scales (M, groups), h (M, r), t (M, P, Q), z (M, n) when asked."""

    codes: torch.Tensor | None
    scales: torch.Tensor | None
    bits: int | None
    h: torch.Tensor | None = None
    t: torch.Tensor | None = None
    z: torch.Tensor | None = None
