"""Where GPTQ's time goes at the released size: the per-layer work of ``-O gptq=true`` (the plan's own
``quantize_layer``: rotation and H-SVD split, then the GPTQ solve) timed once per distinct layer shape of dit4sr-medium,
with the solve's Cholesky factor timed on its own, and the sum over the model's layers set against the GPTQ plan's
extra time that bench/full_size_gptq.py measured (its 24-block rows, copied here with their date).

Active layers (the ones GPTQ rounds) come from the static qdit4sr plan of the preset (uniform W4, static A4: the
plan full_size_gptq.py times), made on the meta device; each timed layer gets a heavy-tailed random weight and a
Hessian of random inputs with outlier channels (``ROWS`` rows, fewer than the widest input: damped, as calibration's
are).

Writes bench/results/gptq_layer_cost.json (``common.publish``); ``render(result)`` gives its page.
Run: python bench/gptq_layer_cost.py [--repeats 2]   (about 2 minutes on a quiet 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from common import ROOT, median_seconds, provenance, publish, table

ROWS = 512
DAMP = 0.01
FULL_SIZE = ROOT / "bench" / "results" / "full_size_gptq.json"


def static_plan():
    """The static W4A4 qdit4sr plan of dit4sr-medium on the meta device (what full_size_gptq.py plans), and each
    layer's (out, in)."""
    from qdit4sr_export.model.config import PRESETS
    from qdit4sr_export.model.transformer import build_dit4sr
    from qdit4sr_export.quant.accounting import quantizable_linears
    from qdit4sr_export.quant.methods.qdit4sr import QDiT4SRConfig, make_plan

    model = build_dit4sr(PRESETS["dit4sr-medium"], device="meta")
    return make_plan(model, QDiT4SRConfig(wbits=4, abits=4.0, vatmp=False, steps=4)), quantizable_linears(model)


def layer_inputs(out_f: int, in_f: int, seed: int):
    """A heavy-tailed weight (Student-t, 3 d.o.f.) and the Hessian 2 X^T X / n of inputs with outlier channels."""
    import torch

    torch.manual_seed(seed)
    weight = torch.distributions.StudentT(3.0).sample((out_f, in_f)) * 0.02
    x = torch.randn(ROWS, in_f)
    x[:, torch.randperm(in_f)[: max(1, in_f // 100)]] *= 20.0
    return weight.float(), (2.0 * x.T.double() @ x.double()) / ROWS


def measure_shape(plan, name: str, shape: tuple[int, int], repeats: int) -> dict:
    """Split, Cholesky factor and whole quantize_layer of one layer, in seconds."""
    from qdit4sr_export.quant.gptq import _inverse_cholesky
    from qdit4sr_export.quant.rotated_gptq import quantize_layer
    from qdit4sr_export.quant.simulate import split_weight

    layer = plan.layers[name]
    out_f, in_f = shape
    weight, hessian = layer_inputs(out_f, in_f, seed=in_f * 7 + out_f)
    damped = hessian.clone()
    damped.diagonal().add_(DAMP * float(hessian.diagonal().mean()))
    def whole_layer():
        return quantize_layer(weight, layer, name, plan.tensors, hessian, damp=DAMP, act_order=False)

    return {"split_s": round(median_seconds(lambda: split_weight(weight, layer, name, plan.tensors), repeats), 3),
            "cholesky_s": round(median_seconds(lambda: _inverse_cholesky(damped), repeats), 3),
            "layer_s": round(median_seconds(whole_layer, repeats), 3)}


def full_size_reference() -> dict | None:
    """The 24-block rows of bench/results/full_size_gptq.json: the GPTQ plan's extra seconds, its date and load."""
    if not FULL_SIZE.is_file():
        return None
    result = json.loads(FULL_SIZE.read_text())
    rows = {r["variant"]: r for r in result["rows"] if r["model"] == "24 blocks" and not r["stopped"]}
    cost = result.get("gptq_cost", {}).get("24 blocks")
    if cost is None or len(rows) != 2:
        return None
    return {"extra_s": cost["seconds"], "layers": cost["layers"], "date": result["date"],
            "load": [r["load_mean"] for r in rows.values()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    import torch

    plan, linears = static_plan()
    active = [n for n, lp in plan.layers.items() if lp.active]  # the layers GPTQ rounds (the others never run)
    shapes = Counter(linears[n] for n in active)
    example = {}
    for name in active:
        example.setdefault(linears[name], name)
    load_start = os.getloadavg()[0]
    rows = []
    for (out_f, in_f), count in sorted(shapes.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"out": out_f, "in": in_f, "count": count, "example": example[(out_f, in_f)],
               **measure_shape(plan, example[(out_f, in_f)], (out_f, in_f), args.repeats)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    model_s = sum(r["count"] * r["layer_s"] for r in rows)
    result = {"preset": "dit4sr-medium", "layers": len(active), "plan_layers": len(plan.layers), "rows": ROWS,
              "repeats": args.repeats, "threads": torch.get_num_threads(),
              "load": [round(load_start, 2), round(os.getloadavg()[0], 2)],
              "shapes": rows, "model_layer_s": round(model_s, 1),
              "model_cholesky_s": round(sum(r["count"] * r["cholesky_s"] for r in rows), 1),
              "model_split_s": round(sum(r["count"] * r["split_s"] for r in rows), 1),
              "full_size": full_size_reference()}
    publish("gptq_layer_cost", result, render)


def render(result: dict) -> str:
    """The page: per-shape times, the model's sum, and its share of the measured GPTQ plan."""
    total = result["model_layer_s"]
    intro = (f"The per-layer work of `-O gptq=true` on the released widths (dit4sr-medium: the {result['layers']} "
             f"active layers of its {result['plan_layers']}, the ones GPTQ rounds; static W4A4 qdit4sr plan: "
             "rotation, H-SVD split, GPTQ solve), once per distinct layer shape on a random heavy-tailed weight and a "
             f"damped Hessian of {result['rows']} random input rows; median of {result['repeats']} runs, "
             f"{result['threads']} threads, 1-minute load {result['load'][0]} at the start and {result['load'][1]} at "
             "the end. \"GPTQ solve\" is the whole layer less the split; the Cholesky factor of the inverse Hessian "
             "is part of it.")
    lines = ["# Full size: GPTQ per layer", "", provenance(result), "", intro, ""]
    body = [[f"{r['out']} x {r['in']}", r["count"], f"`{r['example']}`", f"{r['split_s']:.2f} s",
             f"{r['cholesky_s']:.2f} s", f"{r['layer_s'] - r['split_s']:.2f} s", f"{r['layer_s']:.2f} s",
             f"{r['count'] * r['layer_s']:.0f} s ({100 * r['count'] * r['layer_s'] / total:.0f}%)"]
            for r in result["shapes"]]
    lines += table(["out x in", "layers", "for example", "split", "Cholesky factor", "GPTQ solve", "whole layer",
                    "x layers (share)"], body)
    lines += ["", (f"- Sum over the model's layers: {total:.0f} s, of which the split "
                   f"{result['model_split_s']:.0f} s and the Cholesky factors {result['model_cholesky_s']:.0f} s.")]
    ref = result.get("full_size")
    if ref:
        lines.append(f"- [Full size: GPTQ](full_size_gptq.md) measured the real plan on the 24-block checkpoint "
                     f"({ref['date']}, load {' and '.join(map(str, ref['load']))}): GPTQ added {ref['extra_s']:.0f} s "
                     f"over {ref['layers']} layers. The per-layer work timed here is "
                     f"{100 * total / ref['extra_s']:.0f}% "
                     "of that; the rest is the plan's other GPTQ work (its calibration trajectory, the pass of the FP "
                     "blocks that accumulates the Hessians, reading each block's weights). Two runs at different "
                     "times on the same machine, so the share is approximate.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
