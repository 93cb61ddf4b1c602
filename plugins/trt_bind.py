"""The plugins' JIT fallback (``@trtp.impl``) binds each node's weights once: the kernel launchers, built on views
of the weight buffers TensorRT passes (never copied to the host, never rebuilt per call).

A launcher is cached under the node's attributes and the address, shape, type and device of each weight input.
An engine's weights sit at fixed device addresses for its lifetime, so every call after the first finds its
launcher. The launchers hold views of those buffers (the ``RotateQuantize``/``LowbitGemm`` constructors keep
float32 contiguous tensors as they are), plus what they derive from the attributes alone (Hadamard factors), so
an entry can never hold stale weight data: the same address always reads the current contents. TensorRT-free and
GPU-free: the same functions run on CPU tensors (Triton's interpreter), which is how they are tested.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

#: Launchers kept (least recently used dropped first): far more than the distinct plugin nodes of an engine set.
CACHE_SIZE = 1024
_CACHE: OrderedDict[tuple, object] = OrderedDict()


def _key(kind: str, attrs, tensors: tuple[torch.Tensor, ...]) -> tuple:
    return (kind, attrs, tuple((str(t.device), t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors))


def _cached(key: tuple, make):
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = _CACHE[key] = make()
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def cache_size() -> int:
    return len(_CACHE)


def rotate_quantize_launcher(a: RotateQuantizeAttrs, smooth: torch.Tensor, svd_g_b: torch.Tensor,
                             svd_l_v: torch.Tensor):
    """The node's ``RotateQuantize`` on its weight buffers (smoothing vector, SVD-G down factor, SVD-L factors)."""
    from qdit4sr_export.plugins.ort_reference import activation_spec
    from qdit4sr_export.plugins.rotate_quantize import RotateQuantize
    from qdit4sr_export.plugins.trt_launch import node_h_dot, rotation_of

    def make():
        spec = activation_spec(a, smooth, svd_g_b, svd_l_v, rotation_of(a))
        return RotateQuantize(spec, smooth.device, h_dot=node_h_dot(a))

    return _cached(_key("RotateQuantize", a, (smooth, svd_g_b, svd_l_v)), make)


def lowbit_gemm_launcher(a: LowbitGemmAttrs, w_codes: torch.Tensor, w_scales: torch.Tensor, svd_g_a: torch.Tensor,
                         svd_l_u: torch.Tensor, bias: torch.Tensor):
    """The node's ``LowbitGemm`` on its weight buffers (stored codes, scales, SVD-G/SVD-L up factors, bias)."""
    from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
    from qdit4sr_export.plugins.ort_reference import weight_spec

    def make():
        return LowbitGemm(weight_spec(a, w_codes, w_scales, svd_g_a, svd_l_u, bias), w_codes.device)

    return _cached(_key("LowbitGemm", a, (w_codes, w_scales, svd_g_a, svd_l_u, bias)), make)


def activation_codes(a: LowbitGemmAttrs, codes: torch.Tensor, scales: torch.Tensor, z: torch.Tensor,
                     h: torch.Tensor, t: torch.Tensor):
    """The GEMM's activation inputs (as RotateQuantize wrote them) as views, for ``LowbitGemm``."""
    from qdit4sr_export.plugins.activation_spec import ActivationCodes

    k = a.k
    if a.abits:
        m = codes.numel() // (k // 2 if a.abits <= 4 else k)
        act = ActivationCodes(codes.reshape(m, -1) if a.abits <= 4 else codes.view(torch.int8).reshape(m, k),
                              scales.reshape(m, -1), a.abits)
    else:
        m = z.numel() // k
        act = ActivationCodes(None, None, None, z=z.reshape(m, k))
    act.h = h.reshape(m, a.rank) if a.rank else None
    act.t = t.reshape(m, a.svd_l_p, a.svd_l_q) if a.svd_l_p else None
    return act
