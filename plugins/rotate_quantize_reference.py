"""Torch reference of ``rotate_quantize``: the simulation's own arithmetic (``quant/gaussian.py``,
``quant/hadamard.py``), returning integer codes instead of fake-quantized floats. The kernel's test oracle."""

from __future__ import annotations

import torch
from qdit4sr_export.plugins.activation_spec import ActivationCodes, ActivationSpec
from qdit4sr_export.plugins.packing import pack_int4

from qdit4sr_export.quant.gaussian import qmax, token_scales


def rotate_reference(spec: ActivationSpec, x: torch.Tensor) -> torch.Tensor:
    """z = (x / s) R in float32, (M, n)."""
    z = x.reshape(-1, spec.n).float()
    if spec.smooth is not None:
        z = z / spec.smooth.float()
    return spec.rotation.apply(z) if spec.rotation is not None else z


def quantize_reference(z: torch.Tensor, bits: int, clip: str, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (M, n), float32 scales (M, groups)) with codes * scale == ``fake_quantize_tokens(z)``."""
    m, n = z.shape
    g = group_size or n
    zg = z.reshape(m, n // g, g)
    scale = token_scales(zg, bits, clip=clip)
    q = qmax(bits)
    codes = torch.clamp(torch.round(zg / scale), -q, q)
    return codes.reshape(m, n).to(torch.int8), scale[..., 0]


def svd_l_down(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """t[m, p, q] = sum_i z[m, q s_i + i] v[p, q, i]."""
    _, q, s_i = v.shape
    return torch.einsum("mqi,pqi->mpq", z.reshape(-1, q, s_i), v.float())


def rotate_quantize_reference(spec: ActivationSpec, x: torch.Tensor, bits: int | None, *,
                              store_z: bool = False) -> ActivationCodes:
    """Reference outputs for tokens ``x`` (..., n) at ``bits`` (None: rotate only)."""
    z = rotate_reference(spec, x)
    codes = scales = None
    if bits is not None:
        codes, scales = quantize_reference(z, bits, spec.clip, spec.group_size)
        if bits <= 4:
            codes = pack_int4(codes)
    h = z @ spec.svd_g_b.float() if spec.svd_g_b is not None else None
    t = svd_l_down(z, spec.svd_l_v) if spec.svd_l_v is not None else None
    return ActivationCodes(codes, scales, bits, h, t, z if store_z else None)
