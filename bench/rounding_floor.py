"""How far a quantized plan's output moves when its input moves by one float32 ulp: the floor for any lowering.

A lowering that computes the same quantized arithmetic in another float order flips activation codes that sit on a
rounding tie, and later layers quantize the changed values again, so the flip spreads. The simulation of the plan
against itself with every element of the latent input scaled by (1 +/- 2^-23) (seeded signs) shows how large that
effect is on its own: no lowering can be expected to sit closer to the simulation than this, except by computing
bit-identically. Same model, plans, grid and inputs as bench/trt_reference.py (seeded dit4sr-small, 16x16 latent).
Writes bench/results/rounding_floor.json; ``render`` gives its page (bench/render.py).
Run: python bench/rounding_floor.py   (about a minute on 2 CPU threads)
"""

from __future__ import annotations

import copy
import sys

import torch
from common import ROOT, joined, provenance, publish, sqnr_db, table
from trt_reference import setup

from qdit4sr_export.quant.methods import get_method, make_config
from qdit4sr_export.quant.simulate import apply_plan

sys.path.insert(0, str(ROOT / "tests"))
from helpers import make_inputs, seeded_model  # noqa: E402

STEPS = 4
SIDE = 16


def main() -> None:
    model = seeded_model("dit4sr-small").eval()
    method = get_method("qdit4sr")
    x, lr, ctx, pooled, _ = make_inputs(model, batch=1, side=SIDE)
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    nudged = x * (1 + signs * 2.0 ** -23)
    rows = []
    for bits in (4, 8):
        plan = method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": STEPS}))
        sim = copy.deepcopy(model)
        apply_plan(sim, plan)
        per_step = []
        for t in plan.timesteps:
            with torch.no_grad():
                a = sim(x, lr, ctx, pooled, torch.tensor([t]), return_dict=False)[0]
                b = sim(nudged, lr, ctx, pooled, torch.tensor([t]), return_dict=False)[0]
            per_step.append(round(sqnr_db(a, b), 1))
        rows.append({"bits": f"W{bits}A{bits}", "timesteps": [float(t) for t in plan.timesteps],
                     "sqnr_db_per_step": per_step})
        print(rows[-1], flush=True)
    publish("rounding_floor", {"model": "dit4sr-small (seeded)", "latent_side": SIDE, "rows": rows}, render)


def render(result: dict) -> str:
    rows = [[r["bits"], joined(r["timesteps"], ".0f"), joined(r["sqnr_db_per_step"])] for r in result["rows"]]
    lines = ["# Rounding floor", "", provenance(result), "",
             f"{setup(len(result['rows'][0]['timesteps']), result['latent_side'])}: output SQNR of the plan's "
             "simulation against itself with the latent input moved by one float32 ulp per element. A lowering that "
             "is not bit-identical to the simulation cannot be expected to sit above these numbers at the same step.",
             "", *table(["plan", "timesteps", "SQNR per step (dB)"], rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
