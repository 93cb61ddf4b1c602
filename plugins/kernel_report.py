"""One row per compiled kernel configuration, read without a GPU: what the TensorRT plugins hand TensorRT (the
AOT PTX of each tactic, checked against ``trt_contract``) and what the triton backend compiles (the same tiles,
launched from Python: Triton's JIT specializes 16-byte aligned tensors), each with ``ptxas -v`` of the ptxas
Triton ships (registers, spills), the shared memory, PTX version and target, and whether the code (and a loop of
it) uses async copies, TMA and int8 ``wgmma``. ``bench/ptx_report.py`` writes these rows; the PTX contract tests
read them. Compiling needs Triton's compiler, not its interpreter (run it where TRITON_INTERPRET is unset).
"""

from __future__ import annotations

from pathlib import Path

from qdit4sr_export.plugins import ptx as ptx_text
from qdit4sr_export.plugins.trt_aot import (
    KERNEL_PLUGIN,
    _triton_compile,
    build_plugin_ptx,
    check_kernel,
    describe,
)
from qdit4sr_export.plugins.trt_configs import LayerConfig
from qdit4sr_export.plugins.trt_contract import CONTRACTS, isa_string
from qdit4sr_export.plugins.trt_launch import (
    KernelLaunch,
    lowbit_gemm_launch,
    lowbit_gemm_tactics,
    rotate_quantize_launch,
    rotate_quantize_tactics,
)

from qdit4sr_export.errors import UserError

#: Tokens of the triton backend's launches in the report: one dit4sr-medium step at a 1024x1024 output (4096 image
#: + 4096 LR tokens), divisible by 16 as Triton's JIT then specializes.
BACKEND_TOKENS = 8192
SETTINGS_KEYS = ("N", "K", "BITS", "A_MODE", "W_MODE", "GS", "NG", "RANK", "L_P", "L_Q", "BM", "BN", "BK", "T")


def backend_launch(launch: KernelLaunch, tokens: int = BACKEND_TOKENS) -> tuple[KernelLaunch, dict]:
    """The triton backend's launch of ``launch``'s inner kernel (its own parameter order, a runtime float step),
    and Triton's JIT specialization of it: 16-byte aligned pointers, M divisible by 16 when it is."""
    from qdit4sr_export.plugins import trt_kernels

    inner = trt_kernels.INNER[launch.kernel]
    wrapped = trt_kernels.INNER_RUNTIME_ARGS[launch.kernel]
    names = inner.arg_names[: len(wrapped)]
    signature, attrs = {}, {}
    for i, (name, arg) in enumerate(zip(names, wrapped)):
        if arg == "codes|z":
            arg = "z" if launch.constants.get("A_MODE") == 2 else "codes"
        kind = "fp32" if arg == "STEP" else launch.signature[arg]
        signature[name] = kind
        if kind.startswith("*") or (kind == "i32" and tokens % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    constants = {k: v for k, v in launch.constants.items() if k != "STEP"}
    signature.update({k: "constexpr" for k in constants})
    return KernelLaunch(inner.fn.__name__, signature, constants, launch.rows_per_program, launch.cols_per_program,
                        launch.num_warps, launch.num_stages), attrs


def _facts(ptx: str, name: str, gpu_name: str, shared: int) -> dict:
    info = ptx_text.ptxas_info(ptx, gpu_name)
    feats = ptx_text.features(ptx)
    row = {"kernel": name, "ptx_version": isa_string(ptx_text.version(ptx)), "ptx_target": ptx_text.target(ptx),
           "registers": info.registers, "spill_stores": info.spill_stores, "spill_loads": info.spill_loads,
           "spill_bytes": info.spill_stores + info.spill_loads, "stack_bytes": info.stack_bytes,
           "shared_bytes": shared, "ptxas": info.ptxas,
           "entry_params": [{"name": p.name, "ptx_type": p.ptx_type, "pointer": p.pointer}
                            for p in ptx_text.entry_params(ptx, name)]}
    for key, where in feats.items():
        row[key], row[f"{key}_in_loop"] = where["any"], where["in_loop"]
    return row


def _write(ptx_dir: Path | None, file: str, ptx: str) -> None:
    if ptx_dir is not None:
        ptx_dir.mkdir(parents=True, exist_ok=True)
        (ptx_dir / file).write_text(ptx)


def _settings(launch: KernelLaunch) -> dict:
    return {k: launch.constants[k] for k in SETTINGS_KEYS if k in launch.constants} | {
        "num_warps": launch.num_warps, "num_stages": launch.num_stages}


def plugin_row(config: str, launch: KernelLaunch, tactic: int, arch: int, ptx_dir: Path | None = None) -> dict:
    """The AOT PTX of one plugin tactic: its facts, the parameters TensorRT passes, the contract's verdict."""
    plugin = KERNEL_PLUGIN[launch.kernel]
    file = f"{config}.{plugin}.trt.t{tactic}.ptx"
    row = {"config": config, "plugin": plugin, "path": "trt-aot", "tactic": tactic, "ptx_file": file,
           "settings": _settings(launch), "trt_params": CONTRACTS[plugin].params()}
    try:
        kernel = build_plugin_ptx(launch, arch)
    except Exception as exc:  # noqa: BLE001 - a kernel that does not compile is a row with its error
        return {**row, "error": str(exc).strip().splitlines()[-1]}
    _write(ptx_dir, file, kernel.ptx)
    row.update(_facts(kernel.ptx, kernel.name, kernel.target, kernel.shared_bytes))
    row["stripped_params"] = kernel.stripped
    try:
        check_kernel(launch, kernel)
        row["contract"] = "ok"
    except UserError as exc:
        row["contract"] = str(exc)
    return row


def backend_row(config: str, launch: KernelLaunch, arch: int, ptx_dir: Path | None = None) -> dict:
    """The triton backend's compile of the same kernel configuration (as its JIT specializes it)."""
    plugin = KERNEL_PLUGIN[launch.kernel]
    inner, attrs = backend_launch(launch)
    file = f"{config}.{plugin}.triton.ptx"
    row = {"config": config, "plugin": plugin, "path": "triton", "tactic": None, "ptx_file": file,
           "settings": _settings(launch), "trt_params": None}
    try:
        compiled = _triton_compile(inner, arch, attrs)
    except Exception as exc:  # noqa: BLE001
        return {**row, "error": f"{describe(launch)}: {str(exc).strip().splitlines()[-1]}"}
    ptx = compiled.asm["ptx"]
    _write(ptx_dir, file, ptx)
    row.update(_facts(ptx, compiled.metadata.name, ptx_text.target(ptx), compiled.metadata.shared))
    return row


def config_rows(config: LayerConfig, arch: int = 90, ptx_dir: Path | None = None,
                paths: tuple[str, ...] = ("trt-aot", "triton")) -> list[dict]:
    """Rows of both plugin kernels of one layer configuration: every tactic (trt-aot) and the backend's compile."""
    rows = []
    for attrs, tactics_of, backend_of in (
            (config.rotate_quantize, rotate_quantize_tactics, rotate_quantize_launch),
            (config.lowbit_gemm, lowbit_gemm_tactics, lambda a: lowbit_gemm_launch(a, BACKEND_TOKENS))):
        try:
            tactics = tactics_of(attrs)
        except UserError as exc:  # e.g. an SVD-L block the plugin has no kernel path for
            rows.append({"config": config.name, "plugin": type(attrs).__name__.removesuffix("Attrs"),
                         "path": "trt-aot", "error": str(exc)})
            continue
        if "trt-aot" in paths:
            rows += [plugin_row(config.name, launch, t, arch, ptx_dir) for t, launch in tactics.items()]
        if "triton" in paths:
            rows.append(backend_row(config.name, backend_of(attrs), arch, ptx_dir))
    return rows
