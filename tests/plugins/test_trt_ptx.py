"""The PTX the TensorRT plugins hand over, compiled here for sm_90 (Triton compiles for a named GPU without one) and
parsed: the ``.entry`` parameters are exactly what TensorRT passes (inputs, the SymInt32 M, outputs; pointers .u64,
M .u32; nothing after the outputs: Triton's two scratch pointers removed), ``.version`` is the supported PTX ISA
(8.4: CUDA 12.4+ drivers, proven by assembling with the older CUDA 12.9 ptxas Triton also ships), the target is
sm_90a exactly where ``wgmma`` is used, dynamic shared memory fits TensorRT's 48 KiB, and every GEMM tactic's main
loop (the loop of its tensor-core MMAs) fills shared memory with ``cp.async`` copies: the plugins' PTX is compiled for
16-byte aligned tensors (``trt_contract``'s alignment rule).

Compiling needs Triton's compiler, not the interpreter the test session selects: one subprocess per session
compiles every configuration (``plugins/kernel_report.py``, the rows bench/ptx_report.py writes). The default suite
compiles a representative subset of dit4sr-medium's layers; ``-m slow`` every layer shape and setting."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from qdit4sr_export.plugins import ptx as ptx_text
from qdit4sr_export.plugins.trt_contract import (
    MAX_DYNAMIC_SHARED_BYTES,
    PTX_ISA,
    TRITON_TRAILING_SCRATCH,
)

SUBSET = ("k1536_n6144_w4a4_g0_r32_l768x192", "k6144_n1536_w8a8_g128_r32_l768x192",
          "k1536_n1536_w4afloat_g0_r32_l384x128")
LAYERS = {  # (in, out, block) of the subset's layers: attention projections, fc1, fc2 of dit4sr-medium
    "k1536_n6144": (1536, 6144, (768, 192)), "k6144_n1536": (6144, 1536, (768, 192)),
    "k1536_n1536": (1536, 1536, (384, 128))}

SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from qdit4sr_export.plugins.kernel_report import config_rows
from qdit4sr_export.plugins.trt_configs import plan_configs, shapes_plan
from qdit4sr_export.quant.layer_plan import LayerPlan
names, layers, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
if layers:  # the plan's layers of those shapes (what shapes_plan gives them), without building the whole plan
    plan = SimpleNamespace(layers={k: LayerPlan(i, o, 4, (4,), rotation={"n": i, "seed": 0, "block": None},
                                                svd_rank=32, local_block=tuple(b)) for k, (i, o, b) in layers.items()})
else:
    plan = shapes_plan()
configs = [c for c in plan_configs(plan) if not names or c.name in names]
rows = [r for c in configs for r in config_rows(c, 90, out / "ptx", paths=("trt-aot",))]
(out / "rows.json").write_text(json.dumps(rows))
"""


def compile_rows(tmp: Path, names, layers) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(names), json.dumps(layers), str(tmp)], env=env,
                         capture_output=True, text=True, timeout=1800, cwd="/")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp / "rows.json").read_text())
    for row in rows:
        row["ptx"] = (tmp / "ptx" / row["ptx_file"]).read_text() if "ptx_file" in row and "error" not in row else None
    return rows


@pytest.fixture(scope="session")
def subset_rows(tmp_path_factory):
    rows = compile_rows(tmp_path_factory.mktemp("ptx"), list(SUBSET), LAYERS)
    assert {r["config"] for r in rows} == set(SUBSET)
    return rows


@pytest.fixture(scope="session")
def medium_rows(tmp_path_factory):
    return compile_rows(tmp_path_factory.mktemp("ptx-all"), [], {})


def check_entries(rows):
    for row in rows:
        where = f"{row['config']} {row['plugin']}"
        assert "error" not in row, f"{where}: {row.get('error')}"
        got = [(p["ptx_type"], p["pointer"]) for p in row["entry_params"]]
        want = [(".u64", True) if p["kind"] == "pointer" else (".u32", False) for p in row["trt_params"]]
        assert got == want, where  # count, order and types exactly as TensorRT passes them: nothing after outputs
        assert row["stripped_params"] == TRITON_TRAILING_SCRATCH, where  # both scratch pointers removed
        assert row["ptx_version"] == f"{PTX_ISA[0]}.{PTX_ISA[1]}", where
        assert ptx_text.version(row["ptx"]) == PTX_ISA
        uses_a = ptx_text.uses_arch_specific(row["ptx"])
        assert row["ptx_target"] == ("sm_90a" if uses_a else "sm_90"), where


def check_older_ptxas(rows):
    """Triton's CUDA 12.9 ptxas (its assembler for GPUs before sm_90) accepts the PTX at its target: the code uses
    nothing newer than ISA 8.4 says (ptxas refuses an instruction newer than the module's .version)."""
    from triton.backends.nvidia.compiler import get_ptxas

    legacy = Path(get_ptxas(80).path)
    assert get_ptxas(80).version.startswith("12."), get_ptxas(80).version
    for row in rows:
        ptx_text.ptxas_info(row["ptx"], row["ptx_target"], legacy)  # raises with ptxas' log if refused


def check_shared_memory(rows):
    over = [f"{r['config']} {r['plugin']} t{r['tactic']}: {r['shared_bytes']} B" for r in rows
            if r["shared_bytes"] > MAX_DYNAMIC_SHARED_BYTES]
    assert not over, f"over TensorRT's {MAX_DYNAMIC_SHARED_BYTES} B: {over}"
    assert all(r["contract"] == "ok" for r in rows), [r["contract"] for r in rows if r["contract"] != "ok"]


CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global\b")
MMA = re.compile(r"\bwgmma\.mma_async\b")


def main_loop_copies(ptx: str) -> bool:
    """Whether a loop of the PTX both issues tensor-core MMAs and cp.async copies into shared memory."""
    lines = ptx.splitlines()
    return any(any(MMA.search(x) for x in lines[a:b + 1]) and any(CP_ASYNC.search(x) for x in lines[a:b + 1])
               for a, b in ptx_text.loop_regions(ptx))


def check_gemm_pipelined(rows):
    gemm = [r for r in rows if r["plugin"] == "LowbitGemm"]
    assert gemm
    missing = [f"{r['config']} t{r['tactic']}" for r in gemm if not main_loop_copies(r["ptx"])]
    assert not missing, f"GEMM tactics whose main loop has no cp.async: {missing}"


def test_plugin_entries_are_what_tensorrt_passes(subset_rows):
    assert {r["plugin"] for r in subset_rows} == {"RotateQuantize", "LowbitGemm"}
    check_entries(subset_rows)


def test_plugin_ptx_assembles_at_isa_84_with_an_older_ptxas(subset_rows):
    check_older_ptxas(subset_rows)


def test_plugin_kernels_fit_tensorrts_shared_memory(subset_rows):
    check_shared_memory(subset_rows)


def test_every_gemm_tactic_pipelines_its_main_loop_with_cp_async(subset_rows):
    check_gemm_pipelined(subset_rows)
    plain = "$L__BB0_1:\n\twgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {...};\n\tbra.uni $L__BB0_1;\n"
    assert not main_loop_copies(plain)  # the parse: an MMA loop without copies is told apart
    copied = plain.replace("\tbra", "\tcp.async.cg.shared.global [%r1], [%rd1], 16;\n\tbra")
    assert main_loop_copies(copied) and not main_loop_copies(copied.replace("bra.uni $L__BB0_1", "ret"))


def test_scratch_parameters_are_removed_only_when_unreferenced(subset_rows):
    row = next(r for r in subset_rows if r["plugin"] == "LowbitGemm")
    name, text = row["kernel"], row["ptx"]
    params = ptx_text.entry_params(text, name)
    with pytest.raises(ValueError, match=f"{params[-2].name} is referenced"):  # M and y are read / written
        ptx_text.strip_trailing_params(text, name, 2)
    last = f"{params[-1].name}\n)"
    padded = text.replace(last, f"{params[-1].name},\n\t.param .u64 .ptr .global .align 1 {name}_param_99\n)", 1)
    assert len(ptx_text.entry_params(padded, name)) == len(params) + 1
    assert ptx_text.entry_params(ptx_text.strip_trailing_params(padded, name, 1), name) == params


@pytest.mark.slow
def test_every_medium_configuration_obeys_the_contract(medium_rows):
    check_entries(medium_rows)
    check_older_ptxas(medium_rows)
    check_shared_memory(medium_rows)
    check_gemm_pipelined(medium_rows)
