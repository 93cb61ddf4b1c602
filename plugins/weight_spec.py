"""WeightSpec: one quantized linear's stored weight and epilogue terms, as the engine set holds them.

Codes are the engine set's bytes (``packing`` module doc: INT4 (K, N/2), INT8 (K, N) or UINT8 + 128 (K, N));
scales float32 per output channel (N,) or per input group (K/g, N); SVD-G up ``a`` (r, N) =
``{layer}.svd_g.a``; SVD-L up ``u`` (P, Q, s_o) = ``{layer}.svd_l.u`` (sigma folded in); bias (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from qdit4sr_export.plugins.packing import INT4, weight_storage

from qdit4sr_export.errors import UserError


@dataclass(frozen=True)
class WeightSpec:
    """A layer's integer weight (stored bytes) and the float terms its GEMM epilogue adds."""

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    k: int
    n: int
    group_size: int | None = None
    svd_g_a: torch.Tensor | None = None
    svd_l_u: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        where = f"layer '{self.name}'" if self.name else "weight"
        kind = weight_storage(self.bits)
        if kind == INT4 and self.n % 2:
            raise UserError(f"{where}: {self.n} output channels is odd; packed INT4 weights need an even N "
                            "(the kernel reads (K, N/2) bytes)")
        shape = (self.k, self.n // 2) if kind == INT4 else (self.k, self.n)
        want = torch.int8 if kind == "INT8" else torch.uint8
        if tuple(self.codes.shape) != shape or self.codes.dtype != want:
            raise UserError(f"{where}: stored {self.bits}-bit codes must be {want} {shape}, "
                            f"got {self.codes.dtype} {tuple(self.codes.shape)}")
        g = self.group_size
        if g is not None and (g < 2 or g % 2 or self.k % g):
            raise UserError(f"{where}: group size {g} must be even and divide {self.k} input channels")
        sshape = (self.k // g, self.n) if g else (self.n,)
        if tuple(self.scale.shape) != sshape or self.scale.dtype != torch.float32:
            raise UserError(f"{where}: weight scales must be float32 {sshape}, got {self.scale.dtype} "
                            f"{tuple(self.scale.shape)}")
        if self.svd_g_a is not None and (self.svd_g_a.dim() != 2 or self.svd_g_a.shape[1] != self.n):
            raise UserError(f"{where}: svd_g.a must be (rank, {self.n}), got {tuple(self.svd_g_a.shape)}")
        u = self.svd_l_u
        if u is not None and (u.dim() != 3 or u.shape[0] * u.shape[2] != self.n):
            raise UserError(f"{where}: svd_l.u must be (P, Q, s_o) with P s_o = {self.n}, got {tuple(u.shape)}")
        if self.bias is not None and tuple(self.bias.shape) != (self.n,):
            raise UserError(f"{where}: bias must be ({self.n},), got {tuple(self.bias.shape)}")

    @property
    def rank(self) -> int:
        return 0 if self.svd_g_a is None else int(self.svd_g_a.shape[0])

    @property
    def groups(self) -> int:
        return self.k // self.group_size if self.group_size else 1
