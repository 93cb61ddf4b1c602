"""How the TensorRT plugins launch the Triton kernels, as plain Python (tested without TensorRT or a GPU).

From a plugin node's attributes alone (shapes, not data) this gives each kernel's compile-time parameters,
argument signature in TensorRT's order (``trt_contract``: inputs, M, outputs), launch grid and the plugin's
tactics. The choices are the kernels' own GPU choices (``interpreted=False``), made by the same code the triton
backend runs; ``trt_aot`` compiles them to the PTX a TensorRT build embeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from qdit4sr_export.plugins.trt_contract import CONTRACTS, FIRST_TACTIC
from qdit4sr_export.plugins.trt_ops import LOWBIT_GEMM, ROTATE_QUANTIZE, LowbitGemmAttrs, RotateQuantizeAttrs

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import optimal_clip, qmax

#: The GPU the ahead-of-time PTX targets by default: Hopper (H100/H200), compute capability 9.0.
DEFAULT_ARCH = 90
#: Tokens the GEMM tiles are chosen for (M is dynamic; DiT4SR steps run thousands of tokens per call).
TILE_TOKENS = 4096
#: Token counts whose GEMM tile choices the plugin offers TensorRT as tactics (a step's M: batch x tokens).
TACTIC_TOKENS = (256, 4096, 16384)


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


def prepared_rotate_quantize(a: RotateQuantizeAttrs, device: str = "cpu", *, interpreted: bool = False,
                             h_dot: bool | None = None):
    """The kernel launcher for a node, built from its attributes with placeholder data of the right shapes
    (``h_dot`` None: the kernel's own choice of SVD-G layout; a node's ``b_transposed`` fixes it)."""
    from qdit4sr_export.plugins.activation_spec import ActivationSpec
    from qdit4sr_export.plugins.rotate_quantize import RotateQuantize

    spec = ActivationSpec(n=a.n, rotation=rotation_of(a), clip=a.clip, group_size=a.group_size or None,
                          smooth=torch.ones(a.n) if a.smooth else None,
                          svd_g_b=torch.zeros(a.n, a.rank) if a.rank else None,
                          svd_l_v=torch.zeros(a.svd_l_p, a.svd_l_q, a.n // a.svd_l_q) if a.svd_l_p else None)
    return RotateQuantize(spec, device, interpreted=interpreted, h_dot=h_dot)


def node_h_dot(a: RotateQuantizeAttrs) -> bool | None:
    """The SVD-G layout a node's graph stores: B (one dot) unless ``b_transposed`` (B^T rows)."""
    return (not a.b_transposed) if a.rank else None


def step_of(bits: int) -> float:
    """The float32 step factor of the gaussian grid at ``bits`` (0: float output, no step)."""
    return float(torch.tensor(optimal_clip(bits, "integer") / qmax(bits), dtype=torch.float32)) if bits else 0.0


def rotate_quantize_launch(a: RotateQuantizeAttrs) -> KernelLaunch:
    """The rotate_quantize kernel's launch for a RotateQuantize node (GPU choices)."""
    rq = prepared_rotate_quantize(a, h_dot=node_h_dot(a))
    if rq.local is None and a.svd_l_p:
        raise UserError(f"RotateQuantize: SVD-L blocks of width {a.n // a.svd_l_q} need the torch fallback; "
                        "the plugin has no such path")
    const = rq.constants(a.bits or None, not a.bits, "cuda")
    warps = const.pop("num_warps")
    const = {"STEP": step_of(a.bits), **const}
    code = "*u8" if 0 < a.bits <= 4 else "*i8"
    contract = CONTRACTS[ROTATE_QUANTIZE]
    signature = {name: "*fp32" for name in contract.inputs}
    signature["M"] = "i32"
    signature.update({name: (code if name == "codes" else "*fp32") for name in contract.outputs})
    signature.update({k: "constexpr" for k in const})
    return KernelLaunch("rotate_quantize_plugin_kernel", signature, const, rq.bm, None, warps, 1)


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
    types = {"codes": "*u8" if a_mode == 0 else "*i8", "w_codes": w_type}
    contract = CONTRACTS[LOWBIT_GEMM]
    signature = {name: types.get(name, "*fp32") for name in contract.inputs}
    signature["M"] = "i32"
    signature["y"] = "*fp32"
    signature.update({k: "constexpr" for k in const})
    return KernelLaunch("lowbit_gemm_plugin_kernel", signature, const, const["BM"], const["BN"], warps, stages)


#: Bytes per element of the pointer types in the launches' signatures.
ELEMENT_BYTES = {"*fp32": 4, "*fp16": 2, "*bf16": 2, "*i8": 1, "*u8": 1}


def row_bytes(launch: KernelLaunch) -> dict[str, int]:
    """Bytes per row of the tensors whose rows a kernel reads or writes as whole vectors: the GEMM's activations
    (packed codes, int8 codes or float z), stored weights and output; rotate_quantize's input, codes and z."""
    c = launch.constants
    if launch.kernel == "lowbit_gemm_plugin_kernel":
        k, n = c["K"], c["N"]
        act = {0: ("codes", k // 2), 1: ("codes", k), 2: ("z", k)}[c["A_MODE"]]
        rows = {act[0]: act[1], "w_codes": n // 2 if c["W_MODE"] == 0 else n, "y": n}
    else:
        n, bits = c["N"], c["BITS"]
        rows = {"x": n, **({"codes": n // 2 if bits <= 4 else n} if bits else {}), **({"z": n} if c["STORE_Z"] else {})}
    return {name: count * ELEMENT_BYTES[launch.signature[name]] for name, count in rows.items()}


def tactics(launches: list[KernelLaunch]) -> dict[int, KernelLaunch]:
    """Distinct launches numbered as TensorRT tactics (from ``trt_contract.FIRST_TACTIC``), in first-seen order."""
    out: dict[int, KernelLaunch] = {}
    for launch in launches:
        if launch not in out.values():
            out[FIRST_TACTIC + len(out)] = launch
    return out


def tactic_launch(tactics: dict[int, KernelLaunch], tactic: int) -> KernelLaunch:
    """The launch of ``tactic``; 0 (TensorRT's value before a custom tactic is chosen) is the first tactic."""
    if tactic == 0:
        return next(iter(tactics.values()))
    if tactic not in tactics:
        raise UserError(f"plugin tactic {tactic} is not one of the offered tactics {sorted(tactics)}")
    return tactics[tactic]


def rotate_quantize_tactics(a: RotateQuantizeAttrs) -> dict[int, KernelLaunch]:
    """RotateQuantize offers one tactic: its kernel's tiles do not depend on the token count."""
    return tactics([rotate_quantize_launch(a)])


def lowbit_gemm_tactics(a: LowbitGemmAttrs) -> dict[int, KernelLaunch]:
    """LowbitGemm offers the kernel's own tile choice for each of ``TACTIC_TOKENS`` (distinct ones only):
    TensorRT times them at the profile's shapes and keeps the fastest."""
    return tactics([lowbit_gemm_launch(a, m) for m in TACTIC_TOKENS])
