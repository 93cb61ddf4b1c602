"""ONNX Runtime's CUDA execution provider against its CPU provider, on the same engine sets of dit4sr-medium blocks.

Engine sets: FP32 and W4A4 Q-DiT4SR (4-step grid) of dit4sr-medium's first ``--layers`` blocks, seeded
default-init weights (latency does not depend on the values), the positional table cropped to the latent, built
with ``build_engine_set`` (the ``build`` path). One step at a ``--side`` latent (64: 1024 image + 1024 LR tokens),
333 text tokens, batch 1, through the runtime's ``OrtRunner`` on CUDA and on the CPU (``make_session``'s
settings; each call copies its inputs to the device and the output back, as ``run`` does), alternately, median of
``--repeats`` after a warm-up. Per set: the CUDA session's recorded placement (nodes the CUDA EP did not take, by
op type), the CUDA output against the CPU output (SQNR), and the ratio CPU ms / CUDA ms.
Writes bench/results/ort_cuda.json (``render`` gives its Markdown section).

``--quick``: dit4sr-tiny, one block, a 16x16 latent, one round; without onnxruntime-gpu only the CPU side runs and
the CUDA side is recorded as unavailable: it proves the script's plumbing (bench/results/ort_cuda_quick.json).
Run: python bench/ort_cuda.py   (H100: about a minute to build the sets, seconds to time)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from common import provenance, publish, sqnr_db
from ort_breakdown import step_inputs
from ort_latency import alternate, medium_model, summary
from qdit4sr_export.runtime.backends import OrtRunner
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.ort_placement import CUDA, assignment, not_on

from qdit4sr_export.compiler.build import build_engine_set
from qdit4sr_export.quant.methods import get_method, make_config


def build_sets(work: Path, preset: str, layers: int, side: int) -> dict[str, Path]:
    model = medium_model(preset, layers, side)
    sets = {}
    for label, bits in (("FP32", None), ("W4A4", 4)):
        folder = work / f"{preset}-{layers}x{side}-{label.lower()}"
        plan = None
        if bits is not None:
            method = get_method("qdit4sr")
            plan = method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": 4}))
        build_engine_set(model, "in-memory", folder, plan=plan, steps=4, max_variants=None, force=True,
                         build_info={"method": "qdit4sr" if bits else "fp"}, progress=False)
        sets[label] = folder
    return sets


def time_set(folder: Path, side: int, text: int, repeats: int, cuda: bool, threads: int) -> dict:
    engine = EngineSet.load(folder)
    inputs = step_inputs(engine, side=side, batch=1, text=text)
    runners = {"cpu": OrtRunner(engine, threads=threads)}
    if cuda:
        runners["cuda"] = OrtRunner(engine, device="cuda")
    for r in runners.values():
        r.activate(0)
    out = {"outputs_sqnr_db": None, "placement": None}
    if cuda:
        placed = assignment(runners["cuda"].sessions[0])
        away = not_on(placed, CUDA)
        ops: dict[str, int] = {}
        for _, _, op in away:
            ops[op] = ops.get(op, 0) + 1
        out["placement"] = {"nodes": sum(len(v) for v in placed.values()), "not_on_cuda": len(away),
                            "not_on_cuda_by_op": ops, "providers": sorted(placed)}
        a, b = (runners[d].infer(*inputs) for d in ("cpu", "cuda"))
        out["outputs_sqnr_db"] = round(sqnr_db(a, b), 1)
    times = alternate({d: (lambda r=r: r.infer(*inputs)) for d, r in runners.items()}, repeats)
    out["ms"] = {d: round(v["median_ms"], 3) for d, v in summary(times, "cpu").items()}
    if cuda:
        out["cuda_speedup_vs_cpu"] = round(summary(times, "cpu")["cuda"]["speedup"], 3)
    return out


def render(result: dict) -> str:
    lines = ["## ONNX Runtime: CUDA execution provider vs CPU", "",
             f"{provenance(result)} GPU: "
             f"{result['gpu']}. onnxruntime {result['onnxruntime']} (providers: {', '.join(result['providers'])}). "
             f"{result['preset']}, {result['layers']} block(s), {result['side']}x{result['side']} latent, batch 1, "
             f"{result['text_tokens']} text tokens; median of {result['repeats']}, CPU and CUDA alternately in one "
             "process (each call copies inputs and output between host and device).", "",
             "| engine set | CPU ms | CUDA ms | CPU / CUDA | nodes not on the CUDA EP | CUDA vs CPU output |",
             "|---|---|---|---|---|---|"]
    for label, r in result["sets"].items():
        p = r["placement"]
        moved = "-" if p is None else (f"{p['not_on_cuda']} of {p['nodes']}" + (
            " (" + ", ".join(f"{op} x{n}" for op, n in p["not_on_cuda_by_op"].items()) + ")" if p["not_on_cuda"]
            else ""))
        lines.append(f"| {label} | {r['ms']['cpu']} | {r['ms'].get('cuda', '-')} | "
                     f"{r.get('cuda_speedup_vs_cpu', '-')} | {moved} | "
                     f"{'-' if r['outputs_sqnr_db'] is None else str(r['outputs_sqnr_db']) + ' dB'} |")
    if not result["cuda_available"]:
        lines += ["", "No CUDA execution provider here: only the CPU side ran (a plumbing check, not a result)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="CPU provider threads (default: ONNX Runtime's)")
    ap.add_argument("--quick", action="store_true", help="dit4sr-tiny, 1 block, 16x16 latent, one round")
    args = ap.parse_args()
    preset, layers, side, text, repeats = ("dit4sr-tiny", 1, 16, 4, 1) if args.quick else \
        ("dit4sr-medium", args.layers, args.side, 333, args.repeats)
    cuda = CUDA in ort.get_available_providers()
    if not cuda and not args.quick:
        raise SystemExit("onnxruntime has no CUDA execution provider: install onnxruntime-gpu (docs/gpu.md), or "
                         "use --quick to check the script on the CPU")
    with tempfile.TemporaryDirectory() as tmp:
        sets = build_sets(Path(tmp), preset, layers, side)
        rows = {label: time_set(folder, side, text, repeats, cuda, args.threads) for label, folder in sets.items()}
    result = {"quick": args.quick, "preset": preset, "layers": layers, "side": side, "text_tokens": text,
              "repeats": repeats, "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
              "cuda_available": cuda,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch",
              "sets": rows}
    publish("ort_cuda_quick" if args.quick else "ort_cuda", result, render)


if __name__ == "__main__":
    main()
