"""The TensorRT plugin graph checked where TensorRT cannot run: its CPU reference against the simulation.

Builds ``--target trt`` engine sets of seeded dit4sr-small (fp32 and fp16 graphs) and the ``--target ort`` set of
the same plan, runs each through the runtime's ONNX Runtime sessions (the trt graphs on the plugin ops' reference
implementations) at every timestep of the plan, and reports each against the fake-quant simulation of the plan
(SQNR per step, same inputs). The ort graph is the baseline: both lowerings carry the same arithmetic, so where
they sit below ~120 dB it is activation codes on a rounding tie that float summation order flips.
Writes bench/results/trt_reference.json; ``render`` gives its page (bench/render.py).
Run: python bench/trt_reference.py   (about 15 minutes on 2 CPU threads)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import ROOT, joined, provenance, publish, table

from qdit4sr_export.compiler.build import build_engine_set
from qdit4sr_export.compiler.targets import get_target
from qdit4sr_export.quant.methods import get_method, make_config

sys.path.insert(0, str(ROOT / "tests"))
from helpers import seeded_model, simulation_sqnr_per_step  # noqa: E402

STEPS = 4
BUILDS = (("ort", None), ("trt", "fp32"), ("trt", "fp16"))


def main() -> None:
    model = seeded_model("dit4sr-small").eval()
    method = get_method("qdit4sr")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (4, 8):
            plan = method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": STEPS}))
            for target, precision in BUILDS:
                folder = Path(tmp) / f"{target}-{precision}-{bits}"
                options = get_target(target).configure({"precision": precision} if precision else {})
                build_engine_set(model, "in-memory", folder, plan=plan, steps=STEPS, max_variants=None,
                                 build_info={}, progress=False, target=target, target_options=options)
                sqnrs = simulation_sqnr_per_step(model, folder, plan, side=16)
                rows.append({"bits": f"W{bits}A{bits}", "target": target, "precision": precision or "fp32",
                             "sqnr_db_per_step": [round(v, 1) for v in sqnrs]})
                print(rows[-1], flush=True)
    publish("trt_reference", {"model": "dit4sr-small (seeded)", "latent_side": 16, "timesteps": STEPS, "rows": rows},
            render)


def setup(steps: int, side: int) -> str:
    """The model, plans and inputs this script and bench/rounding_floor.py share, in words."""
    return (f"Seeded dit4sr-small, qdit4sr plan at W4A4 and W8A8 (no VaTMP), {steps} grid timesteps, a {side}x{side} "
            "latent")


def render(result: dict) -> str:
    lines = ["# TensorRT plugin graph, CPU reference", "", provenance(result), "",
             f"{setup(result['timesteps'], result['latent_side'])}: output SQNR against the fake-quant simulation of "
             "the same plan at each timestep. "
             "`trt` graphs run on ONNX Runtime with the plugin ops' reference implementations; `ort` is the default "
             "lowering of the same plan, for comparison.", "",
             *table(["plan", "lowering", "graph precision", "SQNR per step (dB)"],
                    [[r["bits"], r["target"], r["precision"], joined(r["sqnr_db_per_step"])] for r in result["rows"]])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
