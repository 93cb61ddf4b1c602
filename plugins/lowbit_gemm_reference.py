"""Torch reference of ``lowbit_gemm``: exact integer products (int64), then the same float epilogue order
as the kernel (per group: acc * token scale * weight scale, groups summed in order; + SVD-G, + SVD-L, + bias)."""

from __future__ import annotations

import torch
from qdit4sr_export.plugins.activation_spec import ActivationCodes
from qdit4sr_export.plugins.packing import decode_weight, unpack_int4
from qdit4sr_export.plugins.weight_spec import WeightSpec


def activation_codes(act: ActivationCodes, k: int) -> torch.Tensor:
    """int8 codes (M, K) from packed or int8 storage."""
    return unpack_int4(act.codes) if act.bits <= 4 else act.codes.reshape(-1, k)


def integer_accumulators(act: ActivationCodes, w: WeightSpec) -> torch.Tensor:
    """Exact per-group integer sums (groups, M, N) as int64: sum over the group's k of a[m, k] w[k, n]."""
    a = activation_codes(act, w.k).to(torch.int64)
    wc = decode_weight(w.codes, w.bits, w.k, w.n, w.name).to(torch.int64)
    g = w.group_size or w.k
    return torch.stack([a[:, i:i + g] @ wc[i:i + g] for i in range(0, w.k, g)])


def epilogue(y: torch.Tensor, w: WeightSpec, h: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor:
    """y + h @ A + SVD-L block term + bias, float32."""
    if w.svd_g_a is not None:
        y = y + h.float() @ w.svd_g_a.float()
    if w.svd_l_u is not None:
        m = y.shape[0]
        y = y + torch.einsum("mpq,pqo->mpo", t.float(), w.svd_l_u.float()).reshape(m, w.n)
    if w.bias is not None:
        y = y + w.bias.float()
    return y


def lowbit_gemm_reference(act: ActivationCodes, w: WeightSpec, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(M, N) output for activation codes and weight ``w``; ``act.bits`` None: float activations ``act.z``
    (a step whose activations stay unquantized) times the integer weight."""
    g = w.group_size or w.k
    if act.bits is None:
        z = act.z.reshape(-1, w.k).float()
        wc = decode_weight(w.codes, w.bits, w.k, w.n, w.name).float()
        y = torch.zeros(z.shape[0], w.n, device=z.device)
        for gi, i in enumerate(range(0, w.k, g)):
            y = y + (z[:, i:i + g] @ wc[i:i + g]) * w.scale.reshape(-1, w.n)[gi]
        return epilogue(y, w, act.h, act.t).to(out_dtype)
    acc = integer_accumulators(act, w)
    sw = w.scale.reshape(-1, w.n)
    y = torch.zeros(acc.shape[1], w.n, device=acc.device)
    for gi in range(acc.shape[0]):
        y = y + acc[gi].float() * act.scales[:, gi:gi + 1] * sw[gi]
    return epilogue(y, w, act.h, act.t).to(out_dtype)
