"""TensorRT plugin definitions of ``qdit4sr::RotateQuantize`` and ``qdit4sr::LowbitGemm`` (``tensorrt.plugin``,
TensorRT >= 10.9). Importing this module registers them; it is the only module that imports TensorRT.

Each plugin has ``@trtp.register`` (output shapes and types, from ``trt_ops``), ``@trtp.autotune`` (its one type
and format combination, and its tactics: ``trt_launch``), ``@trtp.aot_impl`` (the Triton kernel compiled to PTX
for the GPU the engine is built on, obeying TensorRT's launch contract: ``trt_aot``, ``trt_contract``) and
``@trtp.impl`` (the same kernels launched from Python, the JIT fallback, with each node's weights bound once:
``trt_bind``). The AOT implementation receives every attribute positionally in the node's order, so its signature
lists them all in the attribute dataclasses' order (``trt_contract`` rule 7). Inputs are positional (``*_in``
where a name is also an attribute). Written against TensorRT's documented API and NVIDIA's samples; it cannot run
where TensorRT is not installed, and nothing here has yet run inside TensorRT.
"""

from __future__ import annotations

from typing import Tuple

import tensorrt as trt
import tensorrt.plugin as trtp
import torch
from qdit4sr_export.plugins import trt_aot, trt_bind, trt_launch
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


def _combination(types: str, tactics: dict) -> list:
    return [trtp.AutoTuneCombination(types, "LINEAR", list(tactics))]


def _aot(launch: trt_launch.KernelLaunch, m, grid_x):
    """What an AOT implementation returns: kernel name, PTX, launch parameters, and the token count M -- the one
    SymInt32 extra, passed after the inputs and before the outputs."""
    kernel = trt_aot.compile_plugin_kernel(launch, _arch())
    params = trtp.KernelLaunchParams()
    params.grid_x = grid_x
    params.block_x = kernel.num_warps * 32
    params.shared_mem = kernel.shared_bytes
    extra = trtp.SymIntExprs(1)
    extra[0] = trtp.SymInt32(m)
    return kernel.name.encode(), kernel.ptx.encode(), params, extra


def _stream(stream: int):
    return torch.cuda.stream(torch.cuda.ExternalStream(stream))


def _cuda(d) -> torch.Tensor:
    return torch.as_tensor(d, device="cuda")  # a view of TensorRT's buffer (__cuda_array_interface__), no copy


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
def rotate_quantize_autotune(x, smooth_in, signs, hk, h1, h2, svd_g_b, svd_l_v, n: int, bits: int, clip: str,
                             group_size: int, rotation_n: int, rotation_seed: int, rotation_block: int, smooth: int,
                             rank: int, svd_l_p: int, svd_l_q: int, b_transposed: int, outputs):
    a = RotateQuantizeAttrs(n, bits, clip, group_size, rotation_n, rotation_seed, rotation_block, smooth, rank,
                            svd_l_p, svd_l_q, b_transposed)
    return _combination("FP32, FP32, FP32, FP32, FP32, FP32, FP32, FP32, UINT8, FP32, FP32, FP32, FP32",
                        trt_launch.rotate_quantize_tactics(a))


@trtp.aot_impl(RQ_ID)
def rotate_quantize_aot(x, smooth_in, signs, hk, h1, h2, svd_g_b, svd_l_v, n: int, bits: int, clip: str,
                        group_size: int, rotation_n: int, rotation_seed: int, rotation_block: int, smooth: int,
                        rank: int, svd_l_p: int, svd_l_q: int, b_transposed: int, outputs, tactic: int):
    a = RotateQuantizeAttrs(n, bits, clip, group_size, rotation_n, rotation_seed, rotation_block, smooth, rank,
                            svd_l_p, svd_l_q, b_transposed)
    launch = trt_launch.tactic_launch(trt_launch.rotate_quantize_tactics(a), tactic)
    m = _tokens(x, n)
    return _aot(launch, m, trtp.cdiv(m, launch.rows_per_program))


@trtp.impl(RQ_ID)
def rotate_quantize_impl(x, smooth_in, signs, hk, h1, h2, svd_g_b, svd_l_v, n: int, bits: int, clip: str,
                         group_size: int, rotation_n: int, rotation_seed: int, rotation_block: int, smooth: int,
                         rank: int, svd_l_p: int, svd_l_q: int, b_transposed: int, outputs, stream: int,
                         tactic: int) -> None:
    a = RotateQuantizeAttrs(n, bits, clip, group_size, rotation_n, rotation_seed, rotation_block, smooth, rank,
                            svd_l_p, svd_l_q, b_transposed)
    with _stream(stream):
        rq = trt_bind.rotate_quantize_launcher(a, _cuda(smooth_in), _cuda(svd_g_b), _cuda(svd_l_v))
        out = rq(_cuda(x), bits or None, store_z=not bits)
        results = [out.codes.view(torch.uint8) if bits else None, out.scales, out.h, out.t, out.z]
        for dst, src in zip(outputs, results):
            if src is not None:
                d = _cuda(dst)
                d.copy_(src.reshape(d.shape))


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
def lowbit_gemm_autotune(codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias_in, k: int, n: int,
                         abits: int, wbits: int, group_size: int, rank: int, svd_l_p: int, svd_l_q: int,
                         svd_l_so: int, bias: int, outputs):
    a = LowbitGemmAttrs(k, n, abits, wbits, group_size, rank, svd_l_p, svd_l_q, svd_l_so, bias)
    return _combination("UINT8, FP32, FP32, UINT8, FP32, FP32, FP32, FP32, FP32, FP32, FP32",
                        trt_launch.lowbit_gemm_tactics(a))


def _gemm_tokens(codes, z, k: int, abits: int):
    return _tokens(codes, k // 2 if 0 < abits <= 4 else k) if abits else _tokens(z, k)


@trtp.aot_impl(GEMM_ID)
def lowbit_gemm_aot(codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias_in, k: int, n: int,
                    abits: int, wbits: int, group_size: int, rank: int, svd_l_p: int, svd_l_q: int, svd_l_so: int,
                    bias: int, outputs, tactic: int):
    a = LowbitGemmAttrs(k, n, abits, wbits, group_size, rank, svd_l_p, svd_l_q, svd_l_so, bias)
    launch = trt_launch.tactic_launch(trt_launch.lowbit_gemm_tactics(a), tactic)
    m = _gemm_tokens(codes, z, k, abits)
    return _aot(launch, m, trtp.cdiv(m, launch.rows_per_program) * -(-n // launch.cols_per_program))


@trtp.impl(GEMM_ID)
def lowbit_gemm_impl(codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias_in, k: int, n: int,
                     abits: int, wbits: int, group_size: int, rank: int, svd_l_p: int, svd_l_q: int, svd_l_so: int,
                     bias: int, outputs, stream: int, tactic: int) -> None:
    a = LowbitGemmAttrs(k, n, abits, wbits, group_size, rank, svd_l_p, svd_l_q, svd_l_so, bias)
    with _stream(stream):
        gemm = trt_bind.lowbit_gemm_launcher(a, *(_cuda(d) for d in (w_codes, w_scales, svd_g_a, svd_l_u, bias_in)))
        act = trt_bind.activation_codes(a, _cuda(codes), _cuda(scales), _cuda(z), _cuda(h), _cuda(t))
        y = _cuda(outputs[0])
        y.copy_(gemm(act, torch.float32).reshape(y.shape))
