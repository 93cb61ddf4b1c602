"""Every registered method at W4A6 and W4A4 on dit4sr-small: distance to the FP output, size, plan time.

Until the trained example model exists, the weights are the default init and the heavy-tailed proxy
(`qdit4sr_export.model.synthetic`); distance to ground truth needs that model and is not measured here.
Writes bench/results/methods.json and the "Methods" section of BENCHMARKS.md.
Run: python bench/methods.py   (a few minutes on a 2-core CPU)
"""

from __future__ import annotations

import json
import time

import torch
from common import ROOT, machine, sqnr_db, update_benchmarks_md

from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.model.synthetic import heavy_tailed_
from qdit4sr_export.quant.accounting import account
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config, method_names
from qdit4sr_export.quant.simulate import apply_plan

COMMAND = "python bench/methods.py"
STEPS = 4


def fresh(heavy: bool):
    torch.manual_seed(0)
    model = build_dit4sr("dit4sr-small")
    return heavy_tailed_(model, seed=0) if heavy else model


def run() -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(2, 16, 16, 16, generator=g), torch.randn(2, 16, 16, 16, generator=g),
              torch.randn(2, 7, 256, generator=g), torch.randn(2, 128, generator=g), torch.tensor([700.0, 300.0]))
    for heavy in (False, True):
        reference_model = fresh(heavy)
        calib = CalibrationInputs.with_null_prompt(
            torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(1)), reference_model.config)
        with torch.no_grad():
            reference = reference_model(*inputs)
        for abits in (6, 4):
            for name in method_names():
                model = fresh(heavy)
                method = get_method(name)
                options = {"steps": STEPS, "abits": abits, **({"wbits": None} if name == "qdit4sr" else {})}
                start = time.perf_counter()
                plan = method.build(model, make_config(method, options), calibration=calib)
                plan_s = time.perf_counter() - start
                params_m = account(plan, model).params_m
                apply_plan(model, plan)
                with torch.no_grad():
                    out = model(*inputs)
                rows.append({"weights": "heavy-tailed proxy" if heavy else "default init", "setting": f"W4A{abits}",
                             "method": name, "sqnr_db": round(sqnr_db(reference, out), 2),
                             "params_m": round(params_m, 3), "plan_s": round(plan_s, 1)})
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], results: dict) -> str:
    lines = ["## Methods (issue 4)", "", f"Command: `{COMMAND}`. Machine: {results['machine']}. "
             f"Date: {results['date']}. Model: dit4sr-small (FP: {results['fp_params_m']} M parameters), "
             f"{STEPS}-step grid, 4 calibration latents, 2 random inputs; Q-DiT4SR with VaSMP (and VaTMP).", "",
             "| weights | setting | method | SQNR vs FP (dB) | Params (M) | plan time (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['weights']} | {r['setting']} | {r['method']} | {r['sqnr_db']} | {r['params_m']} | {r['plan_s']} |"
              for r in rows]
    lines += ["", "Distance to ground truth needs a trained model and real photos; it is added when the example "
              "model exists. On the synthetic weights, a higher SQNR means closer to the FP model's output."]
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = run()
    fp_params_m = round(sum(p.numel() for p in fresh(False).parameters()) / 1e6, 3)
    results = {"command": COMMAND, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "fp_params_m": fp_params_m, "rows": rows}
    out = ROOT / "bench" / "results" / "methods.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    update_benchmarks_md("methods", markdown(rows, results))


if __name__ == "__main__":
    main()
