"""What ``-O gptq=true`` adds to the plan time on the example model, against the per-method budgets
(bench/methods.py: qdit4sr 60 s, every other method 300 s): the real ``qdit4sr-export plan`` command with the
default 32 calibration crops, each configuration without and with GPTQ, the two run one after the other in every
round (order alternating between rounds), wall time and CPU time (user + system of the command), and the 1-minute
load average around each run (2 cores; other jobs share them, so the CPU time is the steadier number).

Writes bench/results/gptq_plan_time.json (``common.publish``); ``render(result)`` gives its page.
Run: python bench/gptq_plan_time.py [--rounds 2]   (about 15 minutes on a quiet 2-core CPU)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, provenance, publish, table

MODEL = ROOT / "examples" / "dit4sr-tiny"
CALIB = ROOT / "qdit4sr_export" / "data" / "calib"
PLAN = [sys.executable, "-m", "qdit4sr_export", "plan", str(MODEL), "--calib", str(CALIB), "--json"]
BUDGET_S = {"qdit4sr": 60}
DEFAULT_BUDGET_S = 300
#: (label, method, flags): the paper's Q-DiT4SR (VaSMP, VaTMP at 4 bits), its grouped and smoothed variant, and the
#: two other methods with the option, each at W4A4.
CONFIGS = (("qdit4sr (paper)", "qdit4sr", ["--wbits", "auto", "--abits", "auto", "--abits-budget", "4"]),
           ("qdit4sr + groups 64 + smoothing", "qdit4sr", ["--wbits", "auto", "--abits", "auto", "--abits-budget", "4",
                                                           "-O", "group_size=64", "-O", "smoothing=true"]),
           ("svdquant", "svdquant", ["--wbits", "4", "--abits", "4"]),
           ("quarot", "quarot", ["--wbits", "4", "--abits", "4"]))
GPTQ = ["-O", "gptq=true"]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_plan(method: str, flags: list[str], out: Path) -> dict:
    load, cpu = os.getloadavg()[0], children_cpu_s()
    start = time.perf_counter()
    done = subprocess.run([*PLAN, "--method", method, *flags, "-o", str(out), "--force"], capture_output=True,
                          text=True, cwd=ROOT)
    wall, cpu_s = time.perf_counter() - start, children_cpu_s() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{method} {' '.join(flags)}: plan failed:\n{done.stderr[-2000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu_s, 1), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def run(rounds: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, flags in CONFIGS:
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for r in range(rounds):
                for gptq in ((False, True) if r % 2 == 0 else (True, False)):
                    runs[gptq].append(timed_plan(method, flags + (GPTQ if gptq else []), Path(tmp) / "plan.json"))
                    print(label, "gptq" if gptq else "", runs[gptq][-1], flush=True)
            row = {"config": label, "method": method, "flags": flags, "budget_s": BUDGET_S.get(method, DEFAULT_BUDGET_S)}
            for gptq, key in ((False, "without"), (True, "with")):
                row[key] = {"wall_s": statistics.median(x["wall_s"] for x in runs[gptq]),
                            "cpu_s": statistics.median(x["cpu_s"] for x in runs[gptq]), "runs": runs[gptq]}
            row["cpu_ratio"] = round(row["with"]["cpu_s"] / row["without"]["cpu_s"], 2)
            row["wall_ratio"] = round(row["with"]["wall_s"] / row["without"]["wall_s"], 2)
            rows.append(row)
    return rows


def render(result: dict) -> str:
    lines = ["# GPTQ's plan time on the example model", "", provenance(result), "",
             f"`qdit4sr-export plan examples/dit4sr-tiny --calib qdit4sr_export/data/calib` (32 crops, the pipeline's "
             f"trajectory) with the flags below, without and with `-O gptq=true`, {result['rounds']} round(s) each "
             "(median shown; the two alternate within a round). Wall: the whole command; CPU: its user + system time. "
             "Load: the 1-minute load average over the runs (2 cores).", ""]
    rows = []
    for r in result["rows"]:
        loads = [x["load_before"] for k in ("without", "with") for x in r[k]["runs"]]
        rows.append([r["config"], f"`{' '.join(r['flags'])}`", r["without"]["wall_s"], r["with"]["wall_s"],
                     f"{r['wall_ratio']:.2f}x", r["without"]["cpu_s"], r["with"]["cpu_s"], f"{r['cpu_ratio']:.2f}x",
                     r["budget_s"], "yes" if r["with"]["wall_s"] <= r["budget_s"] else "no",
                     f"{min(loads):.1f}-{max(loads):.1f}"])
    lines += table(["config", "flags", "wall (s)", "wall + GPTQ (s)", "ratio", "CPU (s)", "CPU + GPTQ (s)", "ratio",
                    "budget (s)", "GPTQ plan within budget (wall)", "load"], rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    publish("gptq_plan_time", {"rounds": args.rounds, "rows": run(args.rounds)}, render)


if __name__ == "__main__":
    main()
