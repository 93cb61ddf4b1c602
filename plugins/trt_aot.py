"""The PTX a TensorRT AOT plugin hands over: a plugin kernel compiled by Triton for a named GPU (no GPU needed),
made to obey TensorRT's launch contract (``trt_contract``) and checked against it.

``compile_plugin_kernel``: refuse rows that are not multiples of 16 bytes, compile for 16-byte aligned tensors
(the contract's alignment rule) at the contract's PTX ISA (Triton's ``ptx_version`` option), assert Triton's
two scratch sizes are 0 and remove the two unreferenced scratch parameters Triton appends to the entry, name the
plain target (``sm_90``) unless an ``a`` feature is used (``wgmma`` needs ``sm_90a``), then check the entry's
parameters, shared memory and ISA. ``check_graph_kernels``: the same for every tactic of every plugin node of an
ONNX graph, before TensorRT builds an engine, so a kernel TensorRT could not launch is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qdit4sr_export.plugins import ptx as ptx_text
from qdit4sr_export.plugins.trt_contract import (
    CONTRACTS,
    PTX_ISA,
    TRITON_TRAILING_SCRATCH,
    check_entry,
    check_launch_metadata,
    check_row_alignment,
    check_target_isa,
    isa_string,
    target_for_capability,
)
from qdit4sr_export.plugins.trt_launch import (
    DEFAULT_ARCH,
    KernelLaunch,
    lowbit_gemm_tactics,
    rotate_quantize_tactics,
    row_bytes,
)
from qdit4sr_export.plugins.trt_ops import (
    DOMAIN,
    LOWBIT_GEMM,
    ROTATE_QUANTIZE,
    LowbitGemmAttrs,
    RotateQuantizeAttrs,
)

from qdit4sr_export.errors import UserError

#: The plugin each kernel belongs to.
KERNEL_PLUGIN = {"rotate_quantize_plugin_kernel": ROTATE_QUANTIZE, "lowbit_gemm_plugin_kernel": LOWBIT_GEMM}


@dataclass(frozen=True)
class CompiledKernel:
    """What an AOT implementation returns to TensorRT (name, PTX, launch sizes) and what it was checked for."""

    name: str
    ptx: str
    num_warps: int
    shared_bytes: int
    target: str
    isa: tuple[int, int]
    params: list = field(default_factory=list)
    #: Parameters Triton appended (its scratch pointers) that were removed from the entry.
    stripped: int = 0


_COMPILED: dict[str, CompiledKernel] = {}


def _triton_compile(launch: KernelLaunch, arch: int, attrs: dict | None):
    import triton
    from qdit4sr_export.plugins import trt_kernels
    from triton.backends.compiler import GPUTarget

    fn = getattr(trt_kernels, launch.kernel)  # a plugin wrapper, or the inner kernel it calls (same module)
    if not hasattr(fn, "arg_names"):
        raise RuntimeError("Triton's interpreter is selected (TRITON_INTERPRET=1): unset it to compile PTX")
    src = triton.compiler.ASTSource(fn=fn, signature=launch.signature, constexprs=launch.constants, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": launch.num_warps, "num_stages": launch.num_stages,
                                   "ptx_version": PTX_ISA[0] * 10 + PTX_ISA[1]})


def aligned_attrs(launch: KernelLaunch) -> dict:
    """Every pointer parameter marked divisible by 16 (``trt_contract`` rule 9), as Triton's JIT specializes the
    triton backend's launches of torch's aligned allocations."""
    names = list(launch.signature)
    return {(names.index(n),): [["tt.divisibility", 16]] for n, t in launch.signature.items() if t.startswith("*")}


def build_plugin_ptx(launch: KernelLaunch, arch: int = DEFAULT_ARCH) -> CompiledKernel:
    """``launch``'s kernel compiled for compute capability ``arch`` (e.g. 90) and made fit for TensorRT: PTX ISA
    of the contract, Triton's scratch pointers removed (after checking both scratch sizes are 0), the plain target
    unless an ``a`` feature is used. Not yet checked against the contract (``compile_plugin_kernel`` does).

    Every tensor is compiled as 16-byte aligned (``trt_contract`` rule 9: the assumption NVIDIA's TensorRT-LLM
    Triton plugin generator makes), so the GEMM's main loop copies its tiles with ``cp.async``; a shape whose
    rows are not multiples of 16 bytes is refused here, in one line."""
    key = repr((launch, arch))
    if key in _COMPILED:
        return _COMPILED[key]
    where = describe(launch)
    contract = CONTRACTS[KERNEL_PLUGIN[launch.kernel]]
    plain = target_for_capability(arch, False)
    check_target_isa(target_for_capability(arch, arch >= 90), where)
    check_row_alignment(row_bytes(launch), where)
    compiled = _triton_compile(launch, arch, aligned_attrs(launch))
    md = compiled.metadata
    check_launch_metadata(md, where)
    code, name = compiled.asm["ptx"], md.name
    extra = len(ptx_text.entry_params(code, name)) - len(contract.names())
    if extra not in (0, TRITON_TRAILING_SCRATCH):
        raise RuntimeError(f"{where}: the entry has {extra} parameters beyond the contract's; expected Triton's "
                           f"{TRITON_TRAILING_SCRATCH} scratch pointers")
    code = ptx_text.strip_trailing_params(code, name, extra)
    target = target_for_capability(arch, ptx_text.uses_arch_specific(code))
    if target == plain:
        code = ptx_text.retarget(code, plain)
    kernel = CompiledKernel(name, code, md.num_warps, md.shared, target, ptx_text.version(code),
                            ptx_text.entry_params(code, name), extra)
    _COMPILED[key] = kernel
    return kernel


def check_kernel(launch: KernelLaunch, kernel: CompiledKernel) -> None:
    """The contract's one-line refusal of a kernel TensorRT could not launch as compiled."""
    check_entry(CONTRACTS[KERNEL_PLUGIN[launch.kernel]], kernel.params, kernel.shared_bytes, kernel.isa,
                describe(launch))


def compile_plugin_kernel(launch: KernelLaunch, arch: int = DEFAULT_ARCH) -> CompiledKernel:
    """``build_plugin_ptx`` and ``check_kernel``: the PTX an AOT implementation returns, or a one-line refusal."""
    kernel = build_plugin_ptx(launch, arch)
    check_kernel(launch, kernel)
    return kernel


def describe(launch: KernelLaunch) -> str:
    """The plugin and the compile-time choices that name a kernel configuration in messages."""
    keys = ("N", "K", "BITS", "A_MODE", "W_MODE", "GS", "RANK", "L_P", "BM", "BN", "BK")
    tiles = " ".join(f"{k}={launch.constants[k]}" for k in keys if k in launch.constants)
    return f"{KERNEL_PLUGIN[launch.kernel]} kernel ({tiles} warps={launch.num_warps} stages={launch.num_stages})"


def node_tactics(op_type: str, attrs: dict) -> dict[int, KernelLaunch]:
    """A plugin node's tactics from its ONNX attributes."""
    if op_type == ROTATE_QUANTIZE:
        return rotate_quantize_tactics(RotateQuantizeAttrs.from_attributes(attrs))
    if op_type == LOWBIT_GEMM:
        return lowbit_gemm_tactics(LowbitGemmAttrs.from_attributes(attrs))
    raise UserError(f"unknown {DOMAIN} plugin op {op_type}")


def plugin_nodes(model_path: Path) -> list[tuple[str, dict]]:
    """(op_type, attributes) of each distinct plugin node of an ONNX graph (weights are not read)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    seen: list[tuple[str, dict]] = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type, attrs) not in seen:
            seen.append((node.op_type, attrs))
    return seen


def check_graph_kernels(model_paths, arch: int) -> dict:
    """Compile and check every tactic of every plugin node in the graphs; what the engines need (PTX ISA, target)."""
    targets, count = set(), 0
    done: set[str] = set()
    for path in model_paths:
        for op_type, attrs in plugin_nodes(Path(path)):
            for launch in node_tactics(op_type, attrs).values():
                key = repr(launch)
                if key in done:
                    continue
                done.add(key)
                targets.add(compile_plugin_kernel(launch, arch).target)
                count += 1
    plain = target_for_capability(arch, False)
    target = plain if targets <= {plain} else target_for_capability(arch, True)
    return {"ptx_isa": isa_string(PTX_ISA), "ptx_target": target, "kernels": count}
