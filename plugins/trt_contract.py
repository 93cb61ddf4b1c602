"""TensorRT's ahead-of-time (AOT) plugin launch convention, as data, and the checks every plugin kernel passes.

Sources, cited at each rule:
  [aot-doc]  ``tensorrt.plugin.aot_impl``'s docstring (python/packaging/bindings_wheel/tensorrt/plugin/_lib.py in
             NVIDIA/TensorRT; also in the tensorrt-cu12-bindings 11.4 wheel, read 2026-12-06: measured-facts.md).
  [aot-impl] ``_TemplateAOTPlugin.get_launch_params`` (.../tensorrt/plugin/_plugin_class.py, same repository).
  [sample]   NVIDIA's sample samples/python/quickly_deployable_plugins/oait_kernels.py (``circ_pad_kernel``) and
             qdp_defs.py (``circ_pad_plugin_aot_impl``, the multi-tactic ``Tactic`` enum).
  [facts]    shared/docs/measured-facts.md, "TensorRT's ahead-of-time plugin launch".
  [ptx-isa]  NVIDIA's PTX ISA manual, "Release notes" (which CUDA release introduced each PTX ISA version) and
             Triton's own table of the same (triton/backends/nvidia/compiler.py, ``ptx_get_version``).
  [trtllm]   NVIDIA TensorRT-LLM's generator of TensorRT plugins from Triton kernels,
             examples/openai_triton/plugin_autogen/kernel_config.py: every tensor argument is declared with
             ``hints=['16', '16']`` (divisible by 16), which its generated plugin compiles into the kernel.
  [trt-api]  TensorRT's C++ API, NvInferRuntime.h, ``IExecutionContext::setTensorAddress``: "The pointer must have
             at least 256-byte alignment." (the engine's own input and output tensors).
Nothing here imports TensorRT or needs a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from qdit4sr_export.plugins.trt_ops import (
    LOWBIT_GEMM,
    LOWBIT_GEMM_INPUTS,
    ROTATE_QUANTIZE,
    ROTATE_QUANTIZE_INPUTS,
    ROTATE_QUANTIZE_OUTPUTS,
)

from qdit4sr_export.errors import UserError

# Rule 1, order [aot-doc]: "extra_args: Symbolic expressions for scalar inputs to the kernel, located after the tensor
# inputs and before the tensor outputs"; [sample] orders circ_pad_kernel's parameters X, 13 int32 scalars, Y.
ORDER = ("inputs", "extras", "outputs")
# Rule 2, extras [aot-impl]: every extra argument must be a ``trtp.SymInt32`` (anything else raises TypeError), so a
# kernel's runtime scalars are 32-bit integers (PTX .u32/.s32); floats must be compile-time constants.
SCALAR_PTX_TYPES = (".u32", ".s32", ".b32")
# Tensors are passed as device addresses (PTX .u64 parameters; Triton declares them ``.ptr .global``).
POINTER_PTX_TYPE = ".u64"
# Rule 3, code [aot-doc]: "compiled_kernel: Compiled form of the kernel. Presently, only PTX is supported."
CODE_FORMAT = "ptx"
# Rule 4, no trailing parameters: TensorRT passes exactly inputs + extras + outputs [aot-doc]. Triton >= 3.3 appends
# two ``.u64 .ptr`` parameters (global and profile scratch) to every entry [facts]; with both scratch sizes 0 they
# are unreferenced, and the PTX handed to TensorRT has them removed (``trt_aot``).
TRITON_TRAILING_SCRATCH = 2
# Rule 5, shared memory [facts]: ``KernelLaunchParams.shared_mem`` only sets the size; a public AOT plugin reports the
# launcher does not opt in above 48 KiB ("2 stages needed 78 KiB and failed"), the CUDA default without
# cudaFuncAttributeMaxDynamicSharedMemorySize.
MAX_DYNAMIC_SHARED_BYTES = 48 * 1024
# Rule 6, launch shape [aot-impl]: KernelLaunchParams has grid_x/y/z, block_x/y/z and shared_mem only: no thread-block
# clusters (num_ctas 1), no cooperative or programmatic-dependent launch; block_x = the kernel's warps x 32.
WARP_SIZE = 32
# Rule 7, attributes [aot-impl]: the AOT implementation is called as ``aot_impl(*input_descs, *attrs.values(),
# output_descs, tactic)``: every attribute, positionally, in the node's attribute order; so ``aot_impl`` declares them
# all, in the order the lowering writes them (the attribute dataclasses' field order).
# Rule 8, tactics [sample]: custom tactics are small positive integers (its ``Tactic`` enum starts at 1).
FIRST_TACTIC = 1
# Rule 9, alignment [trtllm] [trt-api]: every tensor a plugin kernel receives starts on a 16-byte boundary, and the
# plugins' PTX is compiled assuming so (Triton's ``tt.divisibility`` 16 on every pointer), which lets the GEMM's
# main loop copy its tiles with 16-byte ``cp.async``. What NVIDIA documents is narrower: 256-byte alignment of the
# engine's own input and output addresses [trt-api]; for the tensors TensorRT allocates between layers and passes to
# plugins it documents none. The assumption is the one NVIDIA's own Triton plugin generator makes for every tensor
# [trtllm]. Rows then stay aligned only when each row is a multiple of 16 bytes: a shape whose row is not is refused
# when its kernel is built (``check_row_alignment``), rather than compiled into misaligned copies.
TENSOR_ALIGNMENT = 16

# PTX ISA and drivers [ptx-isa]: a driver JIT-compiles PTX up to the ISA of its CUDA release. The plugins' PTX is
# compiled at ISA 8.4 (CUDA 12.4), so engines run with any driver of CUDA 12.4 or later.
PTX_ISA = (8, 4)
MIN_DRIVER_CUDA = (12, 4)
#: The oldest PTX ISA that can name each target ([ptx-isa], "Target ISA notes"): a GPU newer than PTX_ISA knows is
#: refused at build rather than compiled to PTX its driver would reject.
TARGET_MIN_ISA = {"sm_80": (7, 0), "sm_86": (7, 1), "sm_87": (7, 4), "sm_89": (7, 8), "sm_90": (7, 8),
                  "sm_90a": (8, 0), "sm_100a": (8, 6), "sm_101a": (8, 6), "sm_120a": (8, 7)}


@dataclass(frozen=True)
class LaunchContract:
    """The parameters TensorRT passes to one plugin's kernel, in order."""

    plugin: str
    inputs: tuple[str, ...]
    extras: tuple[str, ...]
    outputs: tuple[str, ...]

    def names(self) -> list[str]:
        return [*self.inputs, *self.extras, *self.outputs]

    def params(self) -> list[dict[str, str]]:
        """Each parameter as ``{"name", "kind"}``, kind "pointer" (a tensor) or "scalar" (a SymInt32 extra)."""
        return [{"name": n, "kind": "scalar" if n in self.extras else "pointer"} for n in self.names()]


#: Both plugins pass one extra, the token count M (rows of x / codes), a SymInt32 of the input shape.
CONTRACTS = {
    ROTATE_QUANTIZE: LaunchContract(ROTATE_QUANTIZE, ROTATE_QUANTIZE_INPUTS, ("M",), ROTATE_QUANTIZE_OUTPUTS),
    LOWBIT_GEMM: LaunchContract(LOWBIT_GEMM, LOWBIT_GEMM_INPUTS, ("M",), ("y",)),
}


def check_entry(contract: LaunchContract, params, shared_bytes: int, isa: tuple[int, int], where: str) -> None:
    """Refuse, in one line, an entry (``ptx.EntryParam`` list) that TensorRT would launch wrongly."""
    want = contract.params()
    if len(params) != len(want):
        raise UserError(f"{where}: the PTX entry declares {len(params)} parameters; TensorRT passes {len(want)} "
                        f"({len(contract.inputs)} inputs, {len(contract.extras)} SymInt32, {len(contract.outputs)} "
                        "outputs)")
    for i, (p, w) in enumerate(zip(params, want)):
        ok = (p.ptx_type == POINTER_PTX_TYPE and p.pointer) if w["kind"] == "pointer" else \
            (p.ptx_type in SCALAR_PTX_TYPES and not p.pointer)
        if not ok:
            raise UserError(f"{where}: PTX parameter {i} ({p.ptx_type}{' pointer' if p.pointer else ''}) is not what "
                            f"TensorRT passes there ({w['name']}, a {w['kind']})")
    if shared_bytes > MAX_DYNAMIC_SHARED_BYTES:
        raise UserError(f"{where}: needs {shared_bytes} bytes of dynamic shared memory; TensorRT's AOT launch allows "
                        f"at most {MAX_DYNAMIC_SHARED_BYTES} ({MAX_DYNAMIC_SHARED_BYTES / 1024:g} KiB)")
    if isa > PTX_ISA:
        raise UserError(f"{where}: PTX ISA {isa[0]}.{isa[1]} is newer than the supported {PTX_ISA[0]}.{PTX_ISA[1]} "
                        f"(CUDA {MIN_DRIVER_CUDA[0]}.{MIN_DRIVER_CUDA[1]}+ drivers)")


def check_row_alignment(row_bytes: dict[str, int], where: str) -> None:
    """Rule 9: refuse, in one line, a tensor whose rows are not a multiple of ``TENSOR_ALIGNMENT`` bytes."""
    for name, size in row_bytes.items():
        if size % TENSOR_ALIGNMENT:
            raise UserError(f"{where}: rows of {name} are {size} bytes, not a multiple of {TENSOR_ALIGNMENT}; the "
                            f"plugins' PTX assumes {TENSOR_ALIGNMENT}-byte aligned rows")


def check_launch_metadata(metadata, where: str) -> None:
    """Refuse a compiled kernel that needs what TensorRT's launcher cannot give (Triton's compiled metadata)."""
    scratch = {"global": metadata.global_scratch_size, "profile": metadata.profile_scratch_size}
    for kind, size in scratch.items():
        if size:
            raise UserError(f"{where}: needs {size} bytes of Triton {kind} scratch memory; TensorRT passes no scratch "
                            "buffer (the limit is 0)")
    if metadata.num_ctas != 1:
        raise UserError(f"{where}: uses clusters of {metadata.num_ctas} CTAs; TensorRT's AOT launch has no cluster "
                        "dimensions (the limit is 1)")
    for flag in ("launch_cooperative_grid", "launch_pdl"):
        if getattr(metadata, flag, False):
            raise UserError(f"{where}: needs {flag}; TensorRT's AOT launch supports neither cooperative nor "
                            "programmatic-dependent launches")


def isa_string(isa: tuple[int, int]) -> str:
    return f"{isa[0]}.{isa[1]}"


def parse_version(text: str) -> tuple[int, int]:
    major, minor = str(text).split(".")[:2]
    return int(major), int(minor)


def max_ptx_isa(driver_cuda: tuple[int, int]) -> tuple[int, int]:
    """The newest PTX ISA a driver of CUDA release ``driver_cuda`` (major, minor) compiles [ptx-isa]."""
    major, minor = driver_cuda
    if major >= 13:
        return 9 + major - 13, minor
    if major == 12:  # 12.0-12.5 -> 8.0-8.5; 12.6 stayed at 8.5; 12.8 -> 8.7, 12.9 -> 8.8
        return 8, minor if minor < 6 else minor - 1
    if major == 11:
        return 7, minor
    raise UserError(f"CUDA driver {major}.{minor} is too old: the plugins need CUDA "
                    f"{isa_string(MIN_DRIVER_CUDA)}+ (PTX ISA {isa_string(PTX_ISA)})")


def check_driver(needed_isa: tuple[int, int], driver_cuda: tuple[int, int], where: str) -> None:
    """One-line refusal when the driver cannot JIT-compile PTX of ISA ``needed_isa``."""
    have = max_ptx_isa(driver_cuda)
    if have < needed_isa:
        raise UserError(f"{where}: the engines need PTX ISA {isa_string(needed_isa)} (a CUDA "
                        f"{isa_string(MIN_DRIVER_CUDA)}+ driver); this driver is CUDA {isa_string(driver_cuda)} "
                        f"(PTX ISA {isa_string(have)}): update the NVIDIA driver")


def target_for_capability(capability: int, arch_specific: bool) -> str:
    """PTX target for compute capability ``capability`` (e.g. 90): ``sm_90a`` when an ``a`` feature is used."""
    return f"sm_{capability}{'a' if arch_specific else ''}"


def check_target_isa(ptx_target: str, where: str) -> None:
    """Refuse a GPU whose PTX target needs a newer ISA than the plugins are compiled at."""
    need = TARGET_MIN_ISA.get(ptx_target)
    if need is None or need > PTX_ISA:
        raise UserError(f"{where}: GPU target {ptx_target} needs PTX ISA "
                        f"{isa_string(need) if need else 'newer than supported'}; the plugins are compiled at PTX ISA "
                        f"{isa_string(PTX_ISA)} (CUDA {isa_string(MIN_DRIVER_CUDA)}+ drivers)")


def check_capability(ptx_target: str, capability: tuple[int, int], where: str) -> None:
    """One-line refusal when PTX for ``ptx_target`` cannot run on a GPU of ``capability``: an ``a`` target runs on
    exactly its compute capability, a plain one on it and later GPUs (PTX JIT)."""
    digits = ptx_target.removeprefix("sm_").rstrip("a")
    need = (int(digits[:-1]), int(digits[-1]))
    ok = capability == need if ptx_target.endswith("a") else capability >= need
    if not ok:
        raise UserError(f"{where}: the engines' kernels are PTX for {ptx_target} (compute capability "
                        f"{need[0]}.{need[1]}{'' if ptx_target.endswith('a') else '+'}); this GPU is "
                        f"{capability[0]}.{capability[1]}: rebuild the engines on this GPU")
