"""How the TensorRT plugins launch the Triton kernels, as plain Python (tested without TensorRT or a GPU).

From a plugin node's attributes alone (shapes, not data) this gives each kernel's compile-time parameters,
argument signature, launch grid and, for the ahead-of-time implementation, its PTX: Triton compiles for a named
GPU target without a GPU, so the PTX a TensorRT build would embed is produced (and checked) here too. The choices
are the kernels' own GPU choices (``interpreted=False``), made by the same code the triton backend runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

from qdit4sr_export.quant.gaussian import optimal_clip, qmax

#: The GPU the ahead-of-time PTX targets by default: Hopper (H100/H200), compute capability 9.0.
DEFAULT_ARCH = 90
#: Tokens the GEMM tiles are chosen for (M is dynamic; DiT4SR steps run thousands of tokens per call).
TILE_TOKENS = 4096


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch: its argument signature (Triton types, constexpr values included) and tile sizes."""

    kernel: str
    signature: dict[str, str]
    constants: dict[str, Any]
    rows_per_program: int
    cols_per_program: int | None
    num_warps: int
    num_stages: int

    def grid(self, m: int, n: int = 0) -> int:
        """Programs for ``m`` tokens (and ``n`` output columns for the GEMM)."""
        rows = -(-m // self.rows_per_program)
        return rows if self.cols_per_program is None else rows * -(-n // self.cols_per_program)


def rotation_of(a: RotateQuantizeAttrs):
    """The Hadamard rotation the attributes describe (None without one)."""
    from qdit4sr_export.quant.hadamard import Rotation

    if not a.rotation_n:
        return None
    return Rotation.from_dict({"n": a.rotation_n, "seed": None if a.rotation_seed < 0 else a.rotation_seed,
                               "block": a.rotation_block or None})


def prepared_rotate_quantize(a: RotateQuantizeAttrs, device: str = "cpu", *, interpreted: bool = False):
    """The kernel launcher for a node, built from its attributes with placeholder data of the right shapes."""
    from qdit4sr_export.plugins.activation_spec import ActivationSpec
    from qdit4sr_export.plugins.rotate_quantize import RotateQuantize

    spec = ActivationSpec(n=a.n, rotation=rotation_of(a), clip=a.clip, group_size=a.group_size or None,
                          smooth=torch.ones(a.n) if a.smooth else None,
                          svd_g_b=torch.zeros(a.n, a.rank) if a.rank else None,
                          svd_l_v=torch.zeros(a.svd_l_p, a.svd_l_q, a.n // a.svd_l_q) if a.svd_l_p else None)
    return RotateQuantize(spec, device, interpreted=interpreted)


def rotate_quantize_launch(a: RotateQuantizeAttrs) -> KernelLaunch:
    """The rotate_quantize kernel's launch for a RotateQuantize node (GPU choices)."""
    rq = prepared_rotate_quantize(a)
    if rq.local is None and a.svd_l_p:
        raise ValueError(f"RotateQuantize: SVD-L blocks of width {a.n // a.svd_l_q} need the torch fallback; "
                         "the plugin has no such path")
    const = rq.constants(a.bits or None, not a.bits, "cuda")
    warps = const.pop("num_warps")
    const["step"] = float(torch.tensor(optimal_clip(a.bits, "integer") / qmax(a.bits), dtype=torch.float32)) \
        if a.bits else 0.0
    code = "*u8" if 0 < a.bits <= 4 else "*i8"
    names = ("x_ptr", "smooth_ptr", "signs_ptr", "hk_ptr", "h1_ptr", "h2_ptr", "b_ptr", "v_ptr", "codes_ptr",
             "scale_ptr", "h_ptr", "t_ptr", "z_ptr")
    signature = {name: (code if name == "codes_ptr" else "*fp32") for name in names}
    signature["M"] = "i32"
    signature.update({k: "constexpr" for k in const})
    return KernelLaunch("_rotate_quantize_kernel", signature, const, rq.bm, None, warps, 1)


def prepared_lowbit_gemm(a: LowbitGemmAttrs, device: str = "cpu", *, interpreted: bool = False):
    """The GEMM launcher for a node, built from its attributes with placeholder data of the right shapes."""
    from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
    from qdit4sr_export.plugins.packing import INT8, weight_storage
    from qdit4sr_export.plugins.weight_spec import WeightSpec

    k, n = a.k, a.n
    codes = torch.zeros(a.weight_shape(), dtype=torch.int8 if weight_storage(a.wbits) == INT8 else torch.uint8)
    g = a.group_size or None
    w = WeightSpec(codes=codes, scale=torch.ones((k // g, n) if g else (n,)), bits=a.wbits, k=k, n=n, group_size=g,
                   svd_g_a=torch.zeros(a.rank, n) if a.rank else None,
                   svd_l_u=torch.zeros(a.svd_l_p, a.svd_l_q, a.svd_l_so) if a.svd_l_p else None,
                   bias=torch.zeros(n) if a.bias else None)
    return LowbitGemm(w, device, interpreted=interpreted)


def lowbit_gemm_launch(a: LowbitGemmAttrs, tokens: int = TILE_TOKENS) -> KernelLaunch:
    """The lowbit_gemm kernel's launch for a LowbitGemm node (GPU tiles chosen for ``tokens`` tokens)."""
    a_mode = 2 if not a.abits else (0 if a.abits <= 4 else 1)
    const = prepared_lowbit_gemm(a).constants(a_mode, tokens, "cuda")
    warps, stages = const.pop("num_warps"), const.pop("num_stages")
    const["A_MODE"] = a_mode
    w_type = "*i8" if 5 <= a.wbits <= 7 else "*u8"
    signature = {"codes_ptr": "*u8" if a_mode == 0 else "*i8", "scales_ptr": "*fp32", "z_ptr": "*fp32",
                 "w_ptr": w_type, "ws_ptr": "*fp32", "h_ptr": "*fp32", "ga_ptr": "*fp32", "t_ptr": "*fp32",
                 "u_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": "*fp32", "M": "i32"}
    signature.update({k: "constexpr" for k in const})
    return KernelLaunch("lowbit_gemm_plugin_kernel", signature, const, const["BM"], const["BN"], warps, stages)


@dataclass(frozen=True)
class CompiledKernel:
    """What an ahead-of-time plugin implementation hands TensorRT: the kernel's name, PTX and launch sizes."""

    name: str
    ptx: str
    num_warps: int
    shared_bytes: int


def compile_ptx(launch: KernelLaunch, arch: int = DEFAULT_ARCH) -> CompiledKernel:
    """Compile ``launch``'s kernel to PTX for compute capability ``arch`` (no GPU needed)."""
    import triton
    from qdit4sr_export.plugins import trt_kernels
    from triton.backends.compiler import GPUTarget

    fn = getattr(trt_kernels, launch.kernel)
    if not hasattr(fn, "arg_names"):
        raise RuntimeError("Triton's interpreter is selected (TRITON_INTERPRET=1): unset it to compile PTX")
    src = triton.compiler.ASTSource(fn=fn, signature=launch.signature, constexprs=launch.constants)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    return CompiledKernel(compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps,
                          compiled.metadata.shared)
