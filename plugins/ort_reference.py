"""CPU reference of the TensorRT plugin graph: ``qdit4sr::RotateQuantize`` and ``qdit4sr::LowbitGemm`` as ONNX
Runtime custom ops (onnxruntime-extensions Python ops), each calling its kernel's torch reference.

With them registered, ONNX Runtime runs exactly the graph TensorRT parses, so a ``--target trt`` build is checked
here where TensorRT cannot run: ``compare`` and ``run`` with the default ``ort`` backend use them. The ops read the
same attributes (``trt_ops``) and inputs as the plugins and also check the rotation inputs (signs and Hadamard
factors) against what the attributes describe, so a wrong initializer fails here as it would mislead a kernel.
Slow on large tensors (Python, float64-free torch references): meant for checking, not for speed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from qdit4sr_export.plugins.trt_launch import rotation_of
from qdit4sr_export.plugins.trt_ops import (
    DOMAIN,
    LOWBIT_GEMM,
    LOWBIT_GEMM_INPUTS,
    ROTATE_QUANTIZE,
    ROTATE_QUANTIZE_INPUTS,
    ROTATE_QUANTIZE_OUTPUTS,
    LowbitGemmAttrs,
    RotateQuantizeAttrs,
)


def _check_rotation_inputs(a: RotateQuantizeAttrs, rot, signs, hk, h1, h2) -> None:
    """The graph's sign and factor inputs must be what the attributes describe (what the kernel will read)."""
    from qdit4sr_export.plugins.activation_layout import factor_matrices, rotation_layout

    want = factor_matrices(rotation_layout(a.n, rot)) if rot is not None else {}
    for key, got in (("hk", hk), ("h1", h1), ("h2", h2)):
        if key in want and not np.array_equal(got, want[key].numpy()):
            raise ValueError(f"RotateQuantize: input {key} does not match the rotation its attributes describe")
    if rot is not None and rot.seed is not None and not np.array_equal(signs, rot.signs().float().numpy()):
        raise ValueError("RotateQuantize: input signs do not match rotation_seed")


def _tensor(arr) -> torch.Tensor:
    """A torch tensor of an input: numpy arrays (ONNX Runtime) wrapped, torch tensors (TensorRT views) as they are."""
    return arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(arr))


def activation_spec(a: RotateQuantizeAttrs, smooth, svd_g_b, svd_l_v, rot=None):
    """The kernel's ActivationSpec from the op's attributes and inputs (numpy arrays or torch tensors, not copied)."""
    from qdit4sr_export.plugins.activation_spec import ActivationSpec

    t = _tensor
    b = (t(svd_g_b).t() if a.b_transposed else t(svd_g_b)) if a.rank else None
    return ActivationSpec(n=a.n, rotation=rot, clip=a.clip, group_size=a.group_size or None,
                          smooth=t(smooth) if a.smooth else None, svd_g_b=b,
                          svd_l_v=t(svd_l_v) if a.svd_l_p else None)


def rotate_quantize(*inputs, **attrs):
    """Reference of RotateQuantize: outputs (codes, scales, h, t, z) as ``trt_ops`` shapes them (inputs in
    ``ROTATE_QUANTIZE_INPUTS`` order; positional only, as attribute names repeat input names)."""
    x, smooth, signs, hk, h1, h2, svd_g_b, svd_l_v = inputs
    from qdit4sr_export.plugins.rotate_quantize_reference import rotate_quantize_reference

    a = RotateQuantizeAttrs.from_attributes(attrs)
    rot = rotation_of(a)
    _check_rotation_inputs(a, rot, signs, hk, h1, h2)
    lead = x.shape[:-1]
    spec = activation_spec(a, smooth, svd_g_b, svd_l_v, rot)
    out = rotate_quantize_reference(spec, torch.from_numpy(np.ascontiguousarray(x)), a.bits or None,
                                    store_z=not a.bits)
    shapes = a.output_shapes(lead)
    one = np.zeros(1, np.float32)
    codes = out.codes.view(torch.uint8).numpy().reshape(shapes[0]) if a.bits else np.zeros(1, np.uint8)
    scales = out.scales.numpy().reshape(shapes[1]) if a.bits else one
    h = out.h.numpy().reshape(shapes[2]) if a.rank else one
    t = out.t.numpy().reshape(shapes[3]) if a.svd_l_p else one
    z = out.z.numpy().reshape(shapes[4]) if not a.bits else one
    return codes, scales.astype(np.float32), h.astype(np.float32), t.astype(np.float32), z.astype(np.float32)


def weight_spec(a: LowbitGemmAttrs, w_codes, w_scales, svd_g_a, svd_l_u, bias):
    """The kernel's WeightSpec from the op's attributes and inputs (numpy arrays or torch tensors; stored bytes
    reinterpreted, not copied)."""
    from qdit4sr_export.plugins.packing import INT8, weight_storage
    from qdit4sr_export.plugins.weight_spec import WeightSpec

    t = _tensor
    codes = t(w_codes)
    if weight_storage(a.wbits) == INT8:
        codes = codes.view(torch.int8)
    return WeightSpec(codes=codes, scale=t(w_scales), bits=a.wbits, k=a.k, n=a.n, group_size=a.group_size or None,
                      svd_g_a=t(svd_g_a) if a.rank else None,
                      svd_l_u=t(svd_l_u) if a.svd_l_p else None, bias=t(bias) if a.bias else None)


def lowbit_gemm(*inputs, **attrs):
    """Reference of LowbitGemm: y (..., n) in float32 (inputs in ``LOWBIT_GEMM_INPUTS`` order)."""
    codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias = inputs
    from qdit4sr_export.plugins.lowbit_gemm_reference import lowbit_gemm_reference
    from qdit4sr_export.plugins.trt_bind import activation_codes

    a = LowbitGemmAttrs.from_attributes(attrs)
    w = weight_spec(a, w_codes, w_scales, svd_g_a, svd_l_u, bias)
    lead = (codes if a.abits else z).shape[:-1]
    act = activation_codes(a, *(_tensor(arr) for arr in (codes, scales, z, h, t)))
    y = lowbit_gemm_reference(act, w, torch.float32)
    return y.numpy().reshape(*lead, a.n)


def _attr_types(cls) -> dict:
    from onnxruntime_extensions import PyCustomOpDef

    kinds = {int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float, str: PyCustomOpDef.dt_string}
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: kinds[hints[f.name]] for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def custom_ops_library() -> str:
    """Register the two ops (once per process) and return the onnxruntime-extensions library path to give to
    ``SessionOptions.register_custom_ops_library``."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        from qdit4sr_export.errors import UserError

        raise UserError("running a --target trt graph on ONNX Runtime needs onnxruntime-extensions "
                        "(pip install 'qdit4sr-export[trt]')") from None
    f, u8 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_uint8
    onnx_op(op_type=f"{DOMAIN}::{ROTATE_QUANTIZE}", inputs=[f] * len(ROTATE_QUANTIZE_INPUTS),
            outputs=[u8] + [f] * (len(ROTATE_QUANTIZE_OUTPUTS) - 1),
            attrs=_attr_types(RotateQuantizeAttrs))(rotate_quantize)
    types = {"codes": u8, "w_codes": u8}
    onnx_op(op_type=f"{DOMAIN}::{LOWBIT_GEMM}", inputs=[types.get(n, f) for n in LOWBIT_GEMM_INPUTS], outputs=[f],
            attrs=_attr_types(LowbitGemmAttrs))(lowbit_gemm)
    return get_library_path()
