"""PTX report: every kernel configuration the TensorRT plugins and the triton backend compile for dit4sr-medium.

For each distinct layer shape of dit4sr-medium's Q-DiT4SR plan at W4A4 and W8A8 (per token and with groups of
128) and W4 with float activations: the plugins' AOT PTX of every tactic (what TensorRT is handed, checked
against plugins/trt_contract.py, compiled for 16-byte aligned tensors as its alignment rule assumes) and the
triton backend's compile of the same tiles (Triton's JIT specialization: 16-byte aligned tensors, M = 8192). Per row: registers, spill bytes and stack (``ptxas -v`` of the ptxas Triton
ships), dynamic shared memory (Triton's metadata), PTX version and target, whether the code uses non-bulk async
copies (cp.async), TMA (cp.async.bulk.tensor) and int8 wgmma, and whether inside a loop; ``trt_params`` lists
what TensorRT passes, in order. No GPU is needed: these are proxies of speed, not timings.

Writes bench/results/ptx_report.json (list under ``kernels``); ``--ptx-dir DIR`` also writes each compiled PTX
there, one file per row (named by its ``ptx_file``). ``--quick``: three representative layers only.
Run: python bench/ptx_report.py [--ptx-dir DIR] [--jobs N]   (2 cores: about 10 minutes; a 16-core machine: 2)
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # compiling: Triton's interpreter must be off before triton is imported
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

from common import ROOT, provenance, publish  # noqa: E402

QUICK = ("k1536_n6144_w4a4_g0_r32_l768x192", "k6144_n1536_w8a8_g128_r32_l768x192",
         "k1536_n1536_w4afloat_g0_r32_l384x128")
GEMM = "LowbitGemm"


def _rows(args: tuple) -> list[dict]:
    config, ptx_dir = args
    from qdit4sr_export.plugins.kernel_report import config_rows

    return config_rows(config, 90, Path(ptx_dir) if ptx_dir else None)


def summary(rows: list[dict]) -> dict:
    """Counts a reader checks first: contract verdicts, and the GEMM rows with no spills and async copies."""
    ok = [r for r in rows if "error" not in r]
    out = {"rows": len(rows), "errors": len(rows) - len(ok)}
    for path in ("trt-aot", "triton"):
        mine = [r for r in ok if r["path"] == path]
        gemm = [r for r in mine if r["plugin"] == GEMM]
        out[path] = {"rows": len(mine), "gemm_rows": len(gemm),
                     "gemm_no_spills": sum(r["spill_bytes"] == 0 for r in gemm),
                     "gemm_cp_async_in_loop": sum(r["cp_async_in_loop"] or r["tma_in_loop"] for r in gemm),
                     "gemm_wgmma_int8": sum(r["wgmma_int8"] for r in gemm),
                     "max_shared_bytes": max((r["shared_bytes"] for r in mine), default=0)}
        if path == "trt-aot":
            out[path]["contract_ok"] = sum(r.get("contract") == "ok" for r in mine)
    return out


def run(quick: bool, ptx_dir: str | None, jobs: int) -> dict:
    import triton
    from qdit4sr_export.plugins.ptx import ptxas_path
    from qdit4sr_export.plugins.trt_configs import plan_configs, shapes_plan
    from qdit4sr_export.plugins.trt_contract import MAX_DYNAMIC_SHARED_BYTES, PTX_ISA, isa_string

    configs = [c for c in plan_configs(shapes_plan()) if not quick or c.name in QUICK]
    # spawn, not fork: a forked child of a process that already runs torch's and Triton's threads can deadlock
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = [r for chunk in pool.map(_rows, [(c, ptx_dir) for c in configs]) for r in chunk]
    ptxas = subprocess.run([str(ptxas_path()), "--version"], capture_output=True, text=True).stdout.strip()
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout  # noqa: E731
    # the kernels compiled: HEAD, plus any uncommitted change under plugins/ (porcelain lines: "XY path")
    source = {"commit": git("rev-parse", "HEAD").strip(),
              "uncommitted": [line[3:] for line in git("status", "--porcelain", "plugins").splitlines() if line]}
    return {"quick": quick, "source": source, "gpu_target": "compute capability 9.0 (H100/H200)",
            "triton": triton.__version__,
            "ptxas": ptxas.splitlines()[-1], "ptx_isa": isa_string(PTX_ISA),
            "max_dynamic_shared_bytes": MAX_DYNAMIC_SHARED_BYTES, "configs": len(configs),
            "summary": summary(rows), "kernels": rows}


def _yes(row: dict, key: str) -> str:
    return ("loop" if row[f"{key}_in_loop"] else "yes") if row[key] else "-"


def _tiles(s: dict) -> str:
    keys = ("BM", "BN", "BK", "T")
    return " ".join(f"{k}{s[k]}" for k in keys if k in s) + f" w{s['num_warps']} s{s['num_stages']}"


def render(result: dict) -> str:
    s = result["summary"]
    lines = ["## PTX report", "",
             f"{provenance(result)} Compiled for "
             f"{result['gpu_target']} with Triton {result['triton']} ({result['ptxas']}), PTX ISA "
             f"{result['ptx_isa']}; no GPU involved: registers and spills from `ptxas -v`, shared memory from "
             "Triton's metadata. `trt-aot`: the plugins' PTX as TensorRT gets it, compiled for 16-byte aligned "
             "tensors (the launch contract's alignment rule: the assumption NVIDIA's TensorRT-LLM Triton plugin "
             "generator makes; TensorRT documents 256-byte alignment only for the engine's own inputs and outputs); "
             "`triton`: the backend's JIT compile of the same tiles (16-byte aligned tensors, M = 8192). "
             "cp.async / TMA / wgmma: `loop` when used inside a loop, `yes` elsewhere only. Kernels compiled from "
             f"commit {result['source']['commit'][:10]}"
             + (f" with uncommitted changes to {', '.join(result['source']['uncommitted'])}"
                if result["source"]["uncommitted"] else "") + ".", "",
             f"{s['rows']} rows, {s['errors']} that did not compile. TensorRT path: "
             f"{s['trt-aot']['contract_ok']} of {s['trt-aot']['rows']} within the launch contract (largest shared "
             f"memory {s['trt-aot']['max_shared_bytes']} B, limit {result['max_dynamic_shared_bytes']} B); GEMM "
             f"rows without spills {s['trt-aot']['gemm_no_spills']} / {s['trt-aot']['gemm_rows']}, with async "
             f"copies in a loop {s['trt-aot']['gemm_cp_async_in_loop']} / {s['trt-aot']['gemm_rows']}. Triton "
             f"backend: GEMM rows without spills {s['triton']['gemm_no_spills']} / {s['triton']['gemm_rows']}, "
             f"with async copies in a loop {s['triton']['gemm_cp_async_in_loop']} / {s['triton']['gemm_rows']}.", "",
             "| config | kernel | path | tactic | tiles | regs | spill B | shared B | PTX | cp.async | TMA "
             "| int8 wgmma | contract |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["kernels"]:
        head = f"| {r['config']} | {r['plugin']} | {r['path']} | {r.get('tactic') or '-'} |"
        if "error" in r:
            lines.append(f"{head} - | - | - | - | - | - | - | - | error: {r['error']} |")
            continue
        contract = "-" if r["path"] != "trt-aot" else ("ok" if r["contract"] == "ok" else
                                                       r["contract"].split(": ", 1)[-1])
        lines.append(f"{head} {_tiles(r['settings'])} | {r['registers']} | {r['spill_bytes']} | "
                     f"{r['shared_bytes']} | {r['ptx_version']} {r['ptx_target']} | {_yes(r, 'cp_async')} | "
                     f"{_yes(r, 'tma')} | {_yes(r, 'wgmma_int8')} | {contract} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptx-dir", default=None, help="Also write each compiled PTX here (one file per row).")
    ap.add_argument("--quick", action="store_true", help="Three representative layers only.")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Compiling processes.")
    ap.add_argument("--out", default=None, help="Result name under bench/results (default ptx_report, "
                                                "ptx_report_quick with --quick).")
    args = ap.parse_args()
    result = run(args.quick, args.ptx_dir, args.jobs)
    publish(args.out or ("ptx_report_quick" if args.quick else "ptx_report"), result, render)


if __name__ == "__main__":
    main()
