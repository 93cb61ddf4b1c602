"""Everything one NVIDIA GPU session runs, in under 8 minutes on one H100, into ONE JSON.

Parts, each a subprocess with its own time limit (a part that fails or runs out of time is recorded as such, and
the others still run):
  tests   pytest -m gpu over tests/plugins, tests/runtime, tests/compiler (kernels compiled at dit4sr-medium
          widths, the triton backend with CUDA graphs, TensorRT engines where TensorRT is installed)
  kernels bench/gpu_kernels.py: W4A4/W8A8 GEMM vs torch bf16 at M=8192, K,N in {1536, 6144}; low-rank epilogue
  step    bench/gpu_step.py --blocks 2: one dit4sr-medium step (2 blocks, 1024x1024 output), triton W4A4 vs bf16
  ort     bench/ort_cuda.py: ONNX Runtime CUDA EP vs CPU on dit4sr-medium blocks (FP32, W4A4)
  ptx     bench/ptx_report.py: every kernel configuration's PTX facts (no GPU needed; included for one record)
Targets checked: W4A4 GEMM >= 1.6x torch bf16 at every medium shape, low-rank epilogue
overhead <= 15%, step >= 1.4x bf16. Writes bench/results/gpu_all.json (``render``: its Markdown section).

``--quick`` runs every part in its CPU form (kernels and step tiny in Triton's interpreter, ort on dit4sr-tiny
without CUDA, the ptx report on three layers; the gpu tests skip without a GPU): it checks the plumbing and writes
bench/results/gpu_all_quick.json, whose numbers are not performance figures.
Run: bench/gpu_all.sh   (needs a CUDA build of torch, triton, onnxruntime-gpu: pip install -e '.[dev,gpu]')
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from common import ROOT, provenance, publish

RESULTS = ROOT / "bench" / "results"
#: name -> (command, quick command, result file, quick result file, seconds allowed). The limits add up to 8 min.
PARTS = {
    "kernels": (["bench/gpu_kernels.py"], ["bench/gpu_kernels.py", "--tiny", "--interpret"], "gpu_kernels",
                "gpu_kernels_tiny", 110),
    "step": (["bench/gpu_step.py", "--blocks", "2"], ["bench/gpu_step.py", "--tiny", "--interpret"], "gpu_step",
             "gpu_step_tiny", 90),
    "ort": (["bench/ort_cuda.py"], ["bench/ort_cuda.py", "--quick"], "ort_cuda", "ort_cuda_quick", 90),
    "ptx": (["bench/ptx_report.py"], ["bench/ptx_report.py", "--quick"], "ptx_report", "ptx_report_quick", 90),
}
TESTS_SECONDS = 100
#: The CPU forms (--quick) are slower than the GPU runs, and the 8-minute budget is the GPU's: their limits are wider.
QUICK_SLACK = 5
TARGETS = {"gemm_w4a4_vs_bf16": (">=", 1.6), "lowrank_epilogue_overhead": ("<=", 0.15), "step_vs_bf16": (">=", 1.4)}


def _run(cmd: list[str], seconds: int) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=seconds)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        tail = (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired as exc:
        status, tail = f"timed out after {seconds} s", ((exc.stdout or b"") + (exc.stderr or b""))[-1500:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
    return {"command": "python " + " ".join(cmd), "status": status, "seconds": round(time.perf_counter() - start, 1),
            "log_tail": tail if status != "ok" else ""}


def run_tests(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        part = _run(["-m", "pytest", "-m", "gpu", "tests/plugins", "tests/runtime", "tests/compiler", "-q",
                     "-p", "no:cacheprovider", f"--junitxml={junit}"],
                    TESTS_SECONDS * (QUICK_SLACK if quick else 1))
        if junit.is_file():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            part["counts"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            part["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None]
    # pytest exits 1 on failures, 5 when every test was deselected: both are results, not plumbing errors
    return part


def run_part(name: str, quick: bool) -> dict:
    cmd, quick_cmd, out, quick_out, seconds = PARTS[name]
    path = RESULTS / f"{quick_out if quick else out}.json"
    before = path.stat().st_mtime if path.is_file() else None
    part = _run(quick_cmd if quick else cmd, seconds * (QUICK_SLACK if quick else 1))
    fresh = path.is_file() and path.stat().st_mtime != before
    part["result"] = json.loads(path.read_text()) if part["status"] == "ok" and fresh else None
    return part


def targets(parts: dict, quick: bool) -> dict:
    """Each GPU target: the measured value (worst over the medium shapes) and whether it is met (no verdict
    for a quick run: interpreted tiny shapes say nothing about GPU speed)."""
    values: dict[str, float | None] = dict.fromkeys(TARGETS)
    kernels = parts["kernels"]["result"]
    if kernels:
        values["gemm_w4a4_vs_bf16"] = min(r["speedup_vs_bf16"]["w4a4_gemm"] for r in kernels["rows"])
        values["lowrank_epilogue_overhead"] = max(r["lowrank_overhead"]["gemm_epilogue"] for r in kernels["rows"])
    step = parts["step"]["result"]
    if step:
        values["step_vs_bf16"] = step["speedup"].get("cuda_graph", step["speedup"]["eager"])
    out = {}
    for key, (op, bound) in TARGETS.items():
        v = values[key]
        out[key] = {"value": v, "target": f"{op} {bound}",
                    "met": None if v is None or quick else (v >= bound if op == ">=" else v <= bound)}
    return out


def render(result: dict) -> str:
    import gpu_kernels
    import gpu_step
    import ort_cuda
    import ptx_report

    lines = ["## GPU session: bench/gpu_all.sh", "",
             f"{provenance(result)} GPU: "
             f"{result['gpu']}. Total {result['seconds']} s." + (" Quick run: CPU forms of every part (not "
                                                                 "performance figures)." if result["quick"] else ""),
             "", "| part | status | seconds |", "|---|---|---|"]
    for name, part in result["parts"].items():
        lines.append(f"| {name} | {part['status']} | {part['seconds']} |")
    tests = result["parts"]["tests"]
    if "counts" in tests:
        c = tests["counts"]
        lines += ["", f"gpu tests: {c['tests']} run, {c['failures'] + c['errors']} failed, {c['skipped']} skipped"
                  + (f" (failed: {', '.join(tests['failed'])})" if tests["failed"] else "") + "."]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for key, t in result["targets"].items():
        shown = "-" if t["value"] is None else f"{t['value']:.3g}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {key} {t['target']} | {shown} | {met} |")
    for name, module in (("kernels", gpu_kernels), ("step", gpu_step), ("ort", ort_cuda), ("ptx", ptx_report)):
        if result["parts"][name]["result"]:
            lines += ["", module.render(result["parts"][name]["result"]).replace("## ", "### ", 1)]
    return "\n".join(lines) + "\n"


def gpu_name() -> str:
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(0) if "
                            "torch.cuda.is_available() else 'none visible to torch')"], capture_output=True, text=True)
    return probe.stdout.strip() or "unknown (torch did not start)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU forms of every part: checks the plumbing.")
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)  # parts choose: compiled on the GPU, --interpret in quick form
    start = time.perf_counter()
    parts = {"tests": run_tests(args.quick)}
    for name in PARTS:
        parts[name] = run_part(name, args.quick)
        print(f"{name}: {parts[name]['status']} ({parts[name]['seconds']} s)", flush=True)
    result = {"quick": args.quick, "gpu": gpu_name(), "seconds": round(time.perf_counter() - start, 1),
              "parts": parts, "targets": targets(parts, args.quick)}
    publish("gpu_all_quick" if args.quick else "gpu_all", result, render)


if __name__ == "__main__":
    main()
