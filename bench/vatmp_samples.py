"""How many calibration samples VaTMP's activation variance needs.

`qdit4sr-export plan` of the example model at W4A6 (VaSMP + VaTMP at 6 bits average, the packaged calibration
photos, 32 crops) with ``-O vatmp_samples=16`` (the default) and ``-O vatmp_samples=0`` (all 32), each in a fresh
process, timed; then how far the two plans' v(l, t) and schedules differ, and how much each active layer's v(l, t)
changes over the steps that run (VaTMP leaves the budget only for a layer whose variance changes by more than
kappa's trade-off ratio, printed too).
Writes bench/results/vatmp_samples.json; ``render`` gives its page (bench/render.py).
Run: python bench/vatmp_samples.py   (about 3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, provenance, publish

from qdit4sr_export.quant.gaussian import kappa_table

MODEL = ROOT / "examples" / "dit4sr-tiny"
BITS = ("--wbits", "auto", "--abits", "auto", "--abits-budget", "6")
CALIB = ROOT / "qdit4sr_export" / "data" / "calib"


def plan(samples: int, out: Path) -> tuple[float, dict]:
    """Plan with ``vatmp_samples=samples`` in a fresh process; (wall seconds, the plan's JSON)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qdit4sr_export", "plan", str(MODEL), "--calib", str(CALIB), "--method",
                    "qdit4sr", *BITS, "-O", f"vatmp_samples={samples}", "-o", str(out)],
                   check=True, capture_output=True, cwd=out.parent)
    return time.perf_counter() - start, json.loads(out.read_text())


def run_steps(values: list) -> np.ndarray:
    return np.array([v for v in values if v is not None], dtype=float)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: plan(n, Path(tmp) / f"plan_{n}.json") for n in (16, 0)}
    (t16, p16), (t_all, p_all) = runs[16], runs[0]
    ratios, spreads, same = [], [], 0
    for name, layer in p_all["layers"].items():
        if layer.get("act_variance") is None:
            continue
        full, head = run_steps(layer["act_variance"]), run_steps(p16["layers"][name]["act_variance"])
        ratios.append(float(np.abs(np.log(head / full)).max()))
        spreads.append(float(full.max() / full.min()))
        same += layer["abits"] == p16["layers"][name]["abits"]
    kappa = kappa_table("integer")
    result = {"model": "examples/dit4sr-tiny", "abits": 6, "bits_options": list(BITS),
              "plan_seconds": {"16": round(t16, 1), "all_32": round(t_all, 1)}, "layers": len(ratios),
              "same_schedule": same, "max_rel_variance_diff": round(float(np.expm1(max(ratios))), 4),
              "median_rel_variance_diff": round(float(np.expm1(np.median(ratios))), 4),
              "max_variance_change_over_run": round(max(spreads), 3),
              "median_variance_change_over_run": round(float(np.median(spreads)), 3),
              "trade_ratio_4_to_3_vs_4_to_5": round((kappa[3] - kappa[4]) / (kappa[4] - kappa[5]), 2),
              "notes": [p16["notes"][-1], p_all["notes"][-1]]}
    publish("vatmp_samples", result, render)


def render(r: dict) -> str:
    bits = " ".join(r.get("bits_options", ["--wbits", "auto", "--abits", "auto", "--abits-budget", str(r["abits"])]))
    respelled = "" if "bits_options" in r else " (the run's options, in today's spelling)"
    return "\n".join([
        "# VaTMP calibration samples", "", provenance(r), "",
        f"`qdit4sr-export plan {r['model']} --calib qdit4sr_export/data/calib {bits} -O vatmp_samples=N`{respelled} "
        "(32 calibration crops, the default count), each in a fresh process. The plans say: "
        + "; ".join(f"\"{note}\"" for note in r["notes"]) + ".", "",
        "| vatmp_samples | plan wall (s) |", "|---|---|",
        f"| 16 (default) | {r['plan_seconds']['16']} |", f"| 0 (all 32) | {r['plan_seconds']['all_32']} |", "",
        f"Active layers with the same activation-bit schedule: {r['same_schedule']} of {r['layers']}. v(l, t) of 16 "
        f"samples against 32: at most {r['max_rel_variance_diff']:.1%} apart (median "
        f"{r['median_rel_variance_diff']:.1%}). Change of a layer's v(l, t) over the steps that run (max / min): "
        f"at most {r['max_variance_change_over_run']}x, median {r['median_variance_change_over_run']}x; trading a "
        f"step from 4 to 3 bits for one from 4 to 5 pays only above {r['trade_ratio_4_to_3_vs_4_to_5']}x."]) + "\n"


if __name__ == "__main__":
    main()
