"""TensorRT plugin definitions of ``qdit4sr::RotateQuantize`` and ``qdit4sr::LowbitGemm`` (``tensorrt.plugin``,
TensorRT >= 10.9). Importing this module registers them; it is the only module that imports TensorRT.

Each plugin has ``@trtp.register`` (output shapes and types, from ``trt_ops``), ``@trtp.autotune`` (its one type
and format combination), ``@trtp.aot_impl`` (the Triton kernel compiled to PTX for the GPU the engine is built on,
with its launch grid as shape expressions: ``trt_launch``) and ``@trtp.impl`` (the same kernels launched from
Python, the JIT fallback). Attribute names are the ONNX node's; inputs are positional (``*_in`` where a name is
also an attribute). Written against TensorRT's documented API; it cannot be run where TensorRT is not installed.
"""

from __future__ import annotations

from typing import Tuple

import tensorrt as trt
import tensorrt.plugin as trtp
import torch
from qdit4sr_export.plugins import trt_launch
from qdit4sr_export.plugins.trt_ops import LOWBIT_GEMM, NAMESPACE, ROTATE_QUANTIZE, LowbitGemmAttrs, RotateQuantizeAttrs

RQ_ID = f"{NAMESPACE}::{ROTATE_QUANTIZE}"
GEMM_ID = f"{NAMESPACE}::{LOWBIT_GEMM}"
_TYPES = {"FLOAT": trt.float32, "UINT8": trt.uint8}


def _arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _lead(desc) -> tuple:
    return tuple(desc.shape_expr[i] for i in range(desc.ndim - 1))


def _tokens(desc, width: int):
    return desc.shape_expr.numel() // width


def _aot(launch: trt_launch.KernelLaunch, m, grid_x):
    """What an AOT implementation returns: kernel name, PTX, launch parameters, and the token count argument."""
    kernel = trt_launch.compile_ptx(launch, _arch())
    params = trtp.KernelLaunchParams()
    params.grid_x = grid_x
    params.block_x = kernel.num_warps * 32
    params.shared_mem = kernel.shared_bytes
    extra = trtp.SymIntExprs(1)
    extra[0] = trtp.SymInt32(m)
    return kernel.name.encode(), kernel.ptx.encode(), params, extra


# ---------------------------------------------------------------------------------------------------- RotateQuantize

@trtp.register(RQ_ID)
def rotate_quantize_desc(x: trtp.TensorDesc, smooth_in: trtp.TensorDesc, signs: trtp.TensorDesc,
                         hk: trtp.TensorDesc, h1: trtp.TensorDesc, h2: trtp.TensorDesc, svd_g_b: trtp.TensorDesc,
                         svd_l_v: trtp.TensorDesc, n: int, bits: int, clip: str, group_size: int, rotation_n: int,
                         rotation_seed: int, rotation_block: int, smooth: int, rank: int, svd_l_p: int, svd_l_q: int,
                         b_transposed: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc,
                                                     trtp.TensorDesc, trtp.TensorDesc]:
    a = RotateQuantizeAttrs(n, bits, clip, group_size, rotation_n, rotation_seed, rotation_block, smooth, rank,
                            svd_l_p, svd_l_q, b_transposed)
    shapes, types = a.output_shapes(_lead(x)), a.output_types()
    return tuple(trtp.from_shape_expr(s, dtype=_TYPES[t]) for s, t in zip(shapes, types))


@trtp.autotune(RQ_ID)
def rotate_quantize_autotune(x, smooth_in, signs, hk, h1, h2, svd_g_b, svd_l_v, outputs):
    return [trtp.AutoTuneCombination("FP32, FP32, FP32, FP32, FP32, FP32, FP32, FP32, UINT8, FP32, FP32, FP32, FP32")]


@trtp.aot_impl(RQ_ID)
def rotate_quantize_aot(x, smooth_in, signs, hk, h1, h2, svd_g_b, svd_l_v, n: int, bits: int, clip: str,
                        group_size: int, rotation_n: int, rotation_seed: int, rotation_block: int, smooth: int,
                        rank: int, svd_l_p: int, svd_l_q: int, b_transposed: int, outputs, tactic: int):
    a = RotateQuantizeAttrs(n, bits, clip, group_size, rotation_n, rotation_seed, rotation_block, smooth, rank,
                            svd_l_p, svd_l_q, b_transposed)
    launch = trt_launch.rotate_quantize_launch(a)
    m = _tokens(x, n)
    return _aot(launch, m, trtp.cdiv(m, launch.rows_per_program))


@trtp.impl(RQ_ID)
def rotate_quantize_impl(x, smooth_in, signs, hk, h1, h2, svd_g_b, svd_l_v, n: int, bits: int, clip: str,
                         group_size: int, rotation_n: int, rotation_seed: int, rotation_block: int, smooth: int,
                         rank: int, svd_l_p: int, svd_l_q: int, b_transposed: int, outputs, stream: int) -> None:
    from qdit4sr_export.plugins.ort_reference import activation_spec
    from qdit4sr_export.plugins.rotate_quantize import RotateQuantize

    a = RotateQuantizeAttrs(n, bits, clip, group_size, rotation_n, rotation_seed, rotation_block, smooth, rank,
                            svd_l_p, svd_l_q, b_transposed)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        t = lambda d: torch.as_tensor(d, device="cuda")  # noqa: E731
        spec = activation_spec(a, t(smooth_in).cpu().numpy(), t(svd_g_b).cpu().numpy(), t(svd_l_v).cpu().numpy(),
                               trt_launch.rotation_of(a))
        out = RotateQuantize(spec, "cuda")(t(x), bits or None, store_z=not bits)
        results = [out.codes.view(torch.uint8) if bits else None, out.scales, out.h, out.t, out.z]
        for dst, src in zip(outputs, results):
            if src is not None:
                t(dst).copy_(src.reshape(t(dst).shape))


# -------------------------------------------------------------------------------------------------------- LowbitGemm

@trtp.register(GEMM_ID)
def lowbit_gemm_desc(codes: trtp.TensorDesc, scales: trtp.TensorDesc, z: trtp.TensorDesc, w_codes: trtp.TensorDesc,
                     w_scales: trtp.TensorDesc, h: trtp.TensorDesc, svd_g_a: trtp.TensorDesc, t: trtp.TensorDesc,
                     svd_l_u: trtp.TensorDesc, bias_in: trtp.TensorDesc, k: int, n: int, abits: int, wbits: int,
                     group_size: int, rank: int, svd_l_p: int, svd_l_q: int, svd_l_so: int,
                     bias: int) -> trtp.TensorDesc:
    a = LowbitGemmAttrs(k, n, abits, wbits, group_size, rank, svd_l_p, svd_l_q, svd_l_so, bias)
    source = codes if abits else z
    return trtp.from_shape_expr(a.output_shape(_lead(source)), dtype=trt.float32)


@trtp.autotune(GEMM_ID)
def lowbit_gemm_autotune(codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias_in, outputs):
    return [trtp.AutoTuneCombination("UINT8, FP32, FP32, UINT8, FP32, FP32, FP32, FP32, FP32, FP32, FP32")]


@trtp.aot_impl(GEMM_ID)
def lowbit_gemm_aot(codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias_in, k: int, n: int,
                    abits: int, wbits: int, group_size: int, rank: int, svd_l_p: int, svd_l_q: int, svd_l_so: int,
                    bias: int, outputs, tactic: int):
    a = LowbitGemmAttrs(k, n, abits, wbits, group_size, rank, svd_l_p, svd_l_q, svd_l_so, bias)
    launch = trt_launch.lowbit_gemm_launch(a)
    m = _tokens(codes, k // 2 if 0 < abits <= 4 else k) if abits else _tokens(z, k)
    return _aot(launch, m, trtp.cdiv(m, launch.rows_per_program) * -(-n // launch.cols_per_program))


@trtp.impl(GEMM_ID)
def lowbit_gemm_impl(codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias_in, k: int, n: int,
                     abits: int, wbits: int, group_size: int, rank: int, svd_l_p: int, svd_l_q: int, svd_l_so: int,
                     bias: int, outputs, stream: int) -> None:
    from qdit4sr_export.plugins.activation_spec import ActivationCodes
    from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
    from qdit4sr_export.plugins.ort_reference import weight_spec

    a = LowbitGemmAttrs(k, n, abits, wbits, group_size, rank, svd_l_p, svd_l_q, svd_l_so, bias)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        tt = lambda d: torch.as_tensor(d, device="cuda")  # noqa: E731
        w = weight_spec(a, *(tt(d).cpu().numpy() for d in (w_codes, w_scales, svd_g_a, svd_l_u, bias_in)))
        if abits:
            c = tt(codes)
            m = c.numel() // (k // 2 if abits <= 4 else k)
            act = ActivationCodes(c.reshape(m, -1) if abits <= 4 else c.view(torch.int8).reshape(m, k),
                                  tt(scales).reshape(m, -1), abits)
        else:
            m = tt(z).numel() // k
            act = ActivationCodes(None, None, None, z=tt(z).reshape(m, k))
        act.h = tt(h).reshape(m, rank) if rank else None
        act.t = tt(t).reshape(m, svd_l_p, svd_l_q) if svd_l_p else None
        y = LowbitGemm(w, "cuda")(act, torch.float32)
        tt(outputs[0]).copy_(y.reshape(tt(outputs[0]).shape))
