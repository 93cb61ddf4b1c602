"""The kernels the TensorRT plugins launch, with the plugins' argument order (inputs, outputs, then M).

``rotate_quantize``'s kernel already takes the RotateQuantize node's inputs and outputs in order (its float step is
a compile-time constant in the plugin). The GEMM plugin gets codes and float z as separate inputs (a step whose
activations stay float reads z), so a thin wrapper picks the one its mode reads and calls the GEMM kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl
from qdit4sr_export.plugins.lowbit_gemm import _lowbit_gemm_kernel
from qdit4sr_export.plugins.rotate_quantize import _rotate_quantize_kernel

__all__ = ["_rotate_quantize_kernel", "lowbit_gemm_plugin_kernel"]


@triton.jit
def lowbit_gemm_plugin_kernel(
    codes_ptr, scales_ptr, z_ptr, w_ptr, ws_ptr, h_ptr, ga_ptr, t_ptr, u_ptr, bias_ptr, out_ptr, M,
    N: tl.constexpr, K: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr,
    A_MODE: tl.constexpr, W_MODE: tl.constexpr, RANK: tl.constexpr, RP: tl.constexpr,
    L_P: tl.constexpr, L_Q: tl.constexpr, L_QP: tl.constexpr, S_O: tl.constexpr, L_VEC: tl.constexpr,
    HAS_BIAS: tl.constexpr, IN_T: tl.constexpr, ACC_T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, GROUP_M: tl.constexpr, PREC: tl.constexpr,
):
    if A_MODE == 2:
        a_ptr = z_ptr
    else:
        a_ptr = codes_ptr
    _lowbit_gemm_kernel(a_ptr, scales_ptr, w_ptr, ws_ptr, h_ptr, ga_ptr, t_ptr, u_ptr, bias_ptr, out_ptr, M,
                        N, K, GS, NG, A_MODE, W_MODE, RANK, RP, L_P, L_Q, L_QP, S_O, L_VEC, HAS_BIAS, IN_T, ACC_T,
                        BM, BN, BK, GROUP_M, PREC)
