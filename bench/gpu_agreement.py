"""How closely the triton backend tracks ONNX Runtime and the torch simulation, one step at a time.

For each engine set given (built from the example model, e.g. `qdit4sr-export build examples/dit4sr-tiny
--wbits auto --abits auto -o w4a4`), seeded inputs at --sides latent sizes and --timesteps run through three
runners of the same plan: the triton backend (the kernels; interpreted on a CPU), ONNX Runtime on the engine
set, and the torch fake-quant simulation of the set's plan on the FP model (the oracle). Reported: the output
SQNR of each pair. Rounding ties make any two implementations disagree now and then (see README "GPU"), so all
three pairs are shown side by side. Writes bench/results/gpu_agreement.json; ``render`` gives its page
(bench/render.py).
Run: python bench/gpu_agreement.py ENGINE_SET... [--model examples/dit4sr-tiny]   (CPU: minutes per set)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ROOT, provenance, write_result
from gpu_common import choose_device, device_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engines", nargs="+")
    ap.add_argument("--model", default=str(ROOT / "examples" / "dit4sr-tiny"))
    ap.add_argument("--sides", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--timesteps", type=float, nargs="+", default=[900.0, 300.0])
    ap.add_argument("--interpret", action="store_true", help="Run the kernels in Triton's CPU interpreter.")
    args = ap.parse_args()
    device = choose_device(args.interpret)
    from qdit4sr_export.runtime.backends import OrtRunner, TorchRunner
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.triton_backend import TritonRunner

    from qdit4sr_export.model import load_dit4sr
    from qdit4sr_export.quant.plan import QuantPlan
    from qdit4sr_export.report.compare import error_stats

    fp = load_dit4sr(args.model)
    rows = []
    for folder in args.engines:
        engine = EngineSet.load(folder)
        runners = {"triton": TritonRunner(engine, device=str(device), dtype=torch.float32, cuda_graphs=False),
                   "ort": OrtRunner(engine), "simulation": TorchRunner(fp, QuantPlan.load(engine.plan_path))}
        cfg = engine.config()
        build = engine.manifest.get("build", {})
        for side in args.sides:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, cfg["in_channels"], side, side, generator=g)
            inputs = (x, torch.randn(x.shape, generator=g), torch.randn(1, 4, cfg["joint_attention_dim"], generator=g),
                      torch.randn(1, cfg["pooled_projection_dim"], generator=g))
            for t in args.timesteps:
                v = engine.variant_for_timestep(t).index
                out = {}
                for name, r in runners.items():
                    r.activate(v)
                    out[name] = r.infer(*inputs, torch.tensor([t])).numpy()
                pair = lambda a, b: round(error_stats(out[a], out[b])["sqnr_db"], 1)
                rows.append({"engine_set": str(folder), "wbits": build.get("method_config", {}).get("wbits"),
                             "abits": build.get("method_config", {}).get("abits"), "latent": side, "timestep": t,
                             "variant": v, "triton_vs_ort_db": pair("ort", "triton"),
                             "ort_vs_simulation_db": pair("simulation", "ort"),
                             "triton_vs_simulation_db": pair("simulation", "triton")})
                print(rows[-1])
    model = Path(args.model).resolve()  # the repository's own model as a path inside it: the page is checkout-free
    shown = str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model)
    print(f"wrote {write_result('gpu_agreement', {'device': device_name(device), 'model': shown, 'rows': rows})}")


def render(result: dict) -> str:
    model = result["model"]
    if "/examples/" in model:  # an absolute path into a checkout (results written before paths were relative)
        model = "examples/" + model.split("/examples/", 1)[1]
    lines = ["# Triton backend agreement", "", provenance(result), "",
             f"Device: {result['device']}. Engine sets built from {model} by `qdit4sr-export build`; (wbits, abits) "
             "as each build's method config records them (wbits auto: VaSMP; abits: static bits, or VaTMP's "
             "average). One step, batch 1, seeded inputs, 4 text tokens; output SQNR of each pair of runners of the "
             "same plan.", "",
             "| engine set (wbits, abits) | latent | timestep | triton vs ORT | ORT vs simulation | "
             "triton vs simulation |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['engine_set'].rstrip('/').split('/')[-1]} ({r['wbits'] or 'auto'}, {r['abits']:g}) | "
              f"{r['latent']} | {r['timestep']:.0f} | {r['triton_vs_ort_db']} dB | {r['ort_vs_simulation_db']} dB | "
              f"{r['triton_vs_simulation_db']} dB |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
