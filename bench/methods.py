"""Every registered method at W4A6 and W4A4 on the example model (examples/dit4sr-tiny): plan time of the
`qdit4sr-export plan` command with the default 32 calibration crops, distance to the FP output, size.

Each plan is the real command, run as a subprocess and timed end to end (start-up, model and autoencoder
loading, calibration on the pipeline's trajectory, the method's search): wall time, the time a user waits, and
CPU time (user + system), which other jobs on the machine change far less. The machine's 1-minute load
average is recorded before and after each run (other jobs share the 2 cores); ``--threads 1`` runs the plans
single-threaded, whose CPU time bounds a quiet machine's wall time. The plan is then applied to
the model (the torch simulation) and compared with the FP model's output on held-out inputs: LR latents of
two crops of the held-out photos in examples/lr, noised to the pipeline's start sigma, at its first step.
Writes bench/results/methods.json (``common.write_result``; a run of some methods or settings writes
methods_partial.json); ``render(result)`` gives its page.
Run: python bench/methods.py   (about 30 minutes on a quiet 2-core CPU)
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, provenance, sqnr_db, table, write_result

from qdit4sr_export.model import load_dit4sr
from qdit4sr_export.model.folder import pipeline_trajectory
from qdit4sr_export.model.sampling import flow_schedule, start_index
from qdit4sr_export.quant.accounting import account
from qdit4sr_export.quant.calib_images import latents_from_folder
from qdit4sr_export.quant.methods import method_names
from qdit4sr_export.quant.plan import QuantPlan
from qdit4sr_export.quant.simulate import apply_plan

MODEL = ROOT / "examples" / "dit4sr-tiny"
CALIB = ROOT / "qdit4sr_export" / "data" / "calib"
PLAN = [sys.executable, "-m", "qdit4sr_export", "plan", str(MODEL), "--calib", str(CALIB), "--json"]
BUDGET_S = {"qdit4sr": 60}  # the plan-time goal: qdit4sr within 1 minute, every other method within 5
DEFAULT_BUDGET_S = 300


def held_out_inputs(model) -> tuple[torch.Tensor, ...]:
    """The model's inputs at the first step a pipeline run executes, for two held-out LR crops."""
    trajectory = pipeline_trajectory(MODEL)
    timesteps, sigmas = flow_schedule(trajectory["steps"], shift=trajectory.get("shift", 3.0))
    first = start_index(sigmas, trajectory["start_sigma"])
    cfg = model.config
    lr = latents_from_folder(ROOT / "examples" / "lr", MODEL, count=2, seed=5,
                             max_latent_side=cfg.pos_embed_max_size * cfg.patch_size)
    noise = torch.randn(lr.shape, generator=torch.Generator().manual_seed(6))
    x = (1 - sigmas[first]) * lr + sigmas[first] * noise
    text = torch.zeros(2, 1, cfg.joint_attention_dim)
    return x, lr, text, torch.zeros(2, cfg.pooled_projection_dim), timesteps[first].expand(2)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(names: list[str], settings: list[int], env: dict[str, str]) -> list[dict]:
    rows = []
    fp = load_dit4sr(MODEL).eval()
    inputs = held_out_inputs(fp)
    with torch.no_grad():
        reference = fp(*inputs)
    with tempfile.TemporaryDirectory() as tmp:
        for abits in settings:
            for name in names:
                out = Path(tmp) / f"{name}-a{abits}.json"
                wbits = ["--wbits", "auto"] if name == "qdit4sr" else ["--wbits", "4"]
                load, cpu = load_average(), children_cpu_s()
                start = time.perf_counter()
                done = subprocess.run([*PLAN, "--method", name, "--abits", str(abits), *wbits, "-o", str(out)],
                                      capture_output=True, text=True, cwd=ROOT, env=env)
                plan_s, cpu_s = time.perf_counter() - start, children_cpu_s() - cpu
                if done.returncode != 0:
                    raise SystemExit(f"{name} W4A{abits}: plan failed:\n{done.stderr}")
                plan = QuantPlan.load(out)
                model = load_dit4sr(MODEL).eval()
                params_m = account(plan, model).params_m
                apply_plan(model, plan)
                with torch.no_grad():
                    approx = model(*inputs)
                rows.append({"setting": f"W4A{abits}", "method": name, "sqnr_db": round(sqnr_db(reference, approx), 2),
                             "params_m": round(params_m, 3), "plan_s": round(plan_s, 1), "plan_cpu_s": round(cpu_s, 1),
                             "budget_s": BUDGET_S.get(name, DEFAULT_BUDGET_S), "load_before": load,
                             "load_after": load_average(), "notes": list(plan.notes)})
                print({k: v for k, v in rows[-1].items() if k != "notes"}, flush=True)
    return rows


def render(result: dict) -> str:
    """The page: each method's distance to the FP output, size and plan time."""
    t = result["trajectory"]
    lines = ["# Methods on the example model", "", provenance(result), "",
             f"Model: examples/dit4sr-tiny ({result['fp_params_m']} M parameters); `qdit4sr-export plan` with `--calib "
             f"qdit4sr_export/data/calib` (32 crops, the default), on the pipeline's trajectory: {t['steps']}-step "
             f"grid, start sigma {t['start_sigma']} ({t['steps_run']} steps run); `--wbits auto` for qdit4sr (VaSMP), "
             "`--wbits 4` for the others. Plan time: the whole command, wall clock. SQNR: the simulated plan's output "
             "against the FP model's on 2 held-out LR crops (examples/lr) at the pipeline's first step. Params (M): "
             "32-bit parameter units (a b-bit weight counts b/32, FP low-rank branches 1). CPU: user + system time "
             "of the command. Budget: the plan-time goal (qdit4sr within 1 minute, the others within 5). Load: the "
             "1-minute load average before and after the run (2 cores; above 2 means other jobs were running). "
             f"Plan threads: {result['threads']}.", "",
             *table(["setting", "method", "SQNR vs FP (dB)", "Params (M)", "plan wall (s)", "plan CPU (s)",
                     "budget (s)", "load before / after"],
                    [[r["setting"], r["method"], r["sqnr_db"], r["params_m"], r["plan_s"], r["plan_cpu_s"],
                      r["budget_s"], f"{r['load_before']} / {r['load_after']}"] for r in result["rows"]])]
    notes = [(r["setting"], r["method"], note) for r in result["rows"] for note in r.get("notes", [])]
    if notes:
        lines += ["", "What each plan reported (its notes):", ""]
        lines += [f"- {setting} {method}: {note}" for setting, method, note in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--abits", default="6,4", help="comma-separated activation bits (default: 6,4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the plans (default: torch's)")
    args = parser.parse_args()
    names = args.methods.split(",") if args.methods else method_names(quantizing_only=True)
    settings = [int(a) for a in args.abits.split(",")]
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    rows = run(names, settings, env)
    trajectory = pipeline_trajectory(MODEL)
    _, sigmas = flow_schedule(trajectory["steps"], shift=trajectory.get("shift", 3.0))
    trajectory["steps_run"] = trajectory["steps"] - start_index(sigmas, trajectory["start_sigma"])
    fp_params_m = round(sum(p.numel() for p in load_dit4sr(MODEL).parameters()) / 1e6, 3)
    results = {"threads": torch.get_num_threads(), "fp_params_m": fp_params_m, "trajectory": trajectory, "rows": rows}
    complete = args.methods is None and args.abits == "6,4"  # only a complete run replaces the page's result
    print(f"wrote {write_result('methods' if complete else 'methods_partial', results)}")


if __name__ == "__main__":
    main()
