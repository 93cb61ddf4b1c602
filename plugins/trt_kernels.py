"""The kernels the TensorRT plugins launch: thin wrappers with TensorRT's argument order (``trt_contract``): the
node's tensor inputs, then the token count ``M`` (the one SymInt32 extra), then the node's outputs; everything else
compile-time. Parameter names are the plugin's input and output names.

Each wrapper calls the triton backend's kernel (inlined by Triton), so the inner kernels' parameter lists stay
theirs: ``rotate_quantize``'s float ``step`` becomes the constant ``STEP`` (TensorRT passes no float scalars), and
the GEMM wrapper picks codes or float z by its mode.
"""

from __future__ import annotations

import triton
import triton.language as tl
from qdit4sr_export.plugins.lowbit_gemm import _lowbit_gemm_kernel
from qdit4sr_export.plugins.rotate_quantize import _rotate_quantize_kernel

__all__ = ["rotate_quantize_plugin_kernel", "lowbit_gemm_plugin_kernel"]


@triton.jit
def rotate_quantize_plugin_kernel(
    x, smooth, signs, hk, h1, h2, svd_g_b, svd_l_v, M, codes, scales, h, t, z, STEP: tl.constexpr,
    N: tl.constexpr, T: tl.constexpr, BM: tl.constexpr, KP: tl.constexpr, P: tl.constexpr,
    F1: tl.constexpr, F2: tl.constexpr, HAS_SMOOTH: tl.constexpr, HAS_SIGNS: tl.constexpr, HAS_HK: tl.constexpr,
    BITS: tl.constexpr, QMAX: tl.constexpr, MINMAX: tl.constexpr,
    GROUPED: tl.constexpr, G: tl.constexpr, G_SUB: tl.constexpr, G_C: tl.constexpr, G_NB: tl.constexpr,
    G_NS: tl.constexpr, N_GROUPS: tl.constexpr,
    RANK: tl.constexpr, RP: tl.constexpr, H_DOT: tl.constexpr, L_P: tl.constexpr, L_PP: tl.constexpr,
    L_Q: tl.constexpr, L_SUB: tl.constexpr, L_C: tl.constexpr, L_NB: tl.constexpr, L_NS: tl.constexpr,
    L_VEC: tl.constexpr, STORE_Z: tl.constexpr, PREC: tl.constexpr, ROT_SCALE: tl.constexpr, SPLIT: tl.constexpr,
):
    _rotate_quantize_kernel(x, smooth, signs, hk, h1, h2, svd_g_b, svd_l_v, codes, scales, h, t, z, M, STEP,
                            N, T, BM, KP, P, F1, F2, HAS_SMOOTH, HAS_SIGNS, HAS_HK, BITS, QMAX, MINMAX,
                            GROUPED, G, G_SUB, G_C, G_NB, G_NS, N_GROUPS, RANK, RP, H_DOT, L_P, L_PP, L_Q, L_SUB,
                            L_C, L_NB, L_NS, L_VEC, STORE_Z, PREC, ROT_SCALE, SPLIT)


@triton.jit
def lowbit_gemm_plugin_kernel(
    codes, scales, z, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias, M, y,
    N: tl.constexpr, K: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr,
    A_MODE: tl.constexpr, W_MODE: tl.constexpr, RANK: tl.constexpr,
    L_P: tl.constexpr, L_Q: tl.constexpr, S_O: tl.constexpr, HAS_BIAS: tl.constexpr,
    IN_T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LC: tl.constexpr,
    GROUP_M: tl.constexpr, PREC: tl.constexpr,
):
    if A_MODE == 2:
        a_ptr = z
    else:
        a_ptr = codes
    _lowbit_gemm_kernel(a_ptr, scales, w_codes, w_scales, h, svd_g_a, t, svd_l_u, bias, y, M,
                        N, K, GS, NG, A_MODE, W_MODE, RANK, L_P, L_Q, S_O, HAS_BIAS, IN_T, BM, BN, BK, LC,
                        GROUP_M, PREC)


#: The constant each wrapper adds to its inner kernel's (the rest it passes through under the same names).
WRAPPER_CONSTANTS = {"rotate_quantize_plugin_kernel": ("STEP",), "lowbit_gemm_plugin_kernel": ()}
#: The inner kernel each wrapper calls, for the test that their compile-time parameters still line up.
INNER = {"rotate_quantize_plugin_kernel": _rotate_quantize_kernel, "lowbit_gemm_plugin_kernel": _lowbit_gemm_kernel}
#: Each wrapper's arguments in the order it passes them to its inner kernel's runtime parameters ("codes|z": codes,
#: or z with float activations, A_MODE 2). The triton backend launches the inner kernels with these runtime
#: parameters, so ``bench/ptx_report.py`` compiles the backend's kernels from the plugins' launches.
INNER_RUNTIME_ARGS = {
    "rotate_quantize_plugin_kernel": ("x", "smooth", "signs", "hk", "h1", "h2", "svd_g_b", "svd_l_v", "codes", "scales",
                                      "h", "t", "z", "M", "STEP"),
    "lowbit_gemm_plugin_kernel": ("codes|z", "scales", "w_codes", "w_scales", "h", "svd_g_a", "t", "svd_l_u", "bias",
                                  "y", "M"),
}
