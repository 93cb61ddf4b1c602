"""Where a step's time goes: ONNX Runtime's profiler on a runner's session (``OrtRunner``, the runtime's own
settings), kernel time per category and op type.

Categories follow the names the compiler's passes give the nodes they add (``<layer>/rotate*`` FoldHadamardPass,
``<layer>/hsvd*`` InsertHSVDPass, ``<layer>/<node>/q/*`` LowerOrtPass) and the op types: attention (fused
MultiHeadAttention, or the exporter's MatMul -> Softmax -> MatMul), the integer GEMMs, float linears (the FP
graph's MatMul/Gemm with a weight), and everything else (norms, modulation, GELU, residual adds, reshapes).

Used by bench/ort_latency.py (its per-op tables); on its own it prints one engine set's breakdown as JSON:
``python bench/ort_breakdown.py ENGINE_SET [--side 64 --batch 2 --text 8 --runs 3 --threads 2]`` (a few seconds
for the example model, about a minute per run for dit4sr-medium blocks). It writes nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import torch
from qdit4sr_export.runtime.backends import OrtRunner
from qdit4sr_export.runtime.engine_set import EngineSet

CATEGORIES = ("attention", "float linear", "integer GEMM", "quantize + rescale", "rotation", "H-SVD branch", "other")


def attention_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that compute attention (fused, or the unfused MatMul -> Softmax -> MatMul chain)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names = {n.name for n in model.graph.node if n.op_type in ("MultiHeadAttention", "Attention")}
    for n in model.graph.node:
        if n.op_type == "Softmax":
            names.add(n.name)
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "MatMul":
                names.add(src.name)
        elif n.op_type == "MatMul" and any(producer.get(i) is not None and producer[i].op_type == "Softmax"
                                            for i in n.input):
            names.add(n.name)
    return names


def category(name: str, op: str, attention: set[str]) -> str:
    if name in attention or "/mha" in name:
        return "attention"
    if "/rotate" in name:
        return "rotation"
    if "/hsvd" in name:
        return "H-SVD branch"
    if "/q/" in name:
        return "integer GEMM" if op in ("MatMulInteger", "MatMulIntegerToFloat") else "quantize + rescale"
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        return "float linear"
    return "other"


def breakdown(profile_file: str | Path, graph: onnx.ModelProto, skip_runs: int = 1) -> dict:
    """Mean ms per run by category and by op type, and the runs' wall times, from a profile JSON whose first
    ``skip_runs`` runs (warm-up) are left out."""
    events = json.loads(Path(profile_file).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[skip_runs - 1]["ts"] + runs[skip_runs - 1]["dur"] if skip_runs else 0
    counted = len(runs) - skip_runs
    attention = attention_nodes(graph)
    cats: Counter = Counter()
    ops: Counter = Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        name, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
        cats[category(name, op, attention)] += e["dur"]
        ops[op] += e["dur"]
    per_run = lambda c: {k: round(v / 1000 / counted, 2) for k, v in sorted(c.items(), key=lambda kv: -kv[1])}
    return {"runs": counted, "run_ms": [r["dur"] / 1000 for r in runs[skip_runs:]],
            "categories_ms": {k: per_run(cats).get(k, 0.0) for k in CATEGORIES}, "op_types_ms": per_run(ops)}


def step_inputs(engine: EngineSet, *, side: int, batch: int, text: int) -> list[torch.Tensor]:
    """Seeded inputs of one step (a ``side`` x ``side`` latent, ``text`` prompt tokens), in the runner's input
    order; the timestep is the engine set's first variant's first step."""
    cfg = engine.config()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg["in_channels"], side, side, generator=g)
    t = engine.timesteps[engine.variants[0].steps[0]]
    return [x, torch.randn(x.shape, generator=g), torch.randn(batch, text, cfg["joint_attention_dim"], generator=g),
            torch.randn(batch, cfg["pooled_projection_dim"], generator=g), torch.full((batch,), t)]


def profile(folder: Path, inputs: list[torch.Tensor], *, threads: int, runs: int, tmp: Path) -> dict:
    """Breakdown of ``runs`` steps of variant 0 (after one warm-up run) through an ``OrtRunner`` with the profiler
    on; the profile JSON goes to ``tmp``."""
    engine = EngineSet.load(folder)
    runner = OrtRunner(engine, threads=threads, profile_prefix=str(tmp / f"profile_{folder.name}"))
    runner.activate(0)
    for _ in range(runs + 1):
        runner.infer(*inputs)
    graph = onnx.load(str(engine.folder / engine.variants[0].file), load_external_data=False)
    result = breakdown(runner.sessions[0].end_profiling(), graph, skip_runs=1)
    runner.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine_set", type=Path)
    ap.add_argument("--side", type=int, default=64, help="latent side (default 64: a 512x512 output)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--text", type=int, default=8, help="prompt tokens")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    inputs = step_inputs(EngineSet.load(args.engine_set), side=args.side, batch=args.batch, text=args.text)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(profile(args.engine_set, inputs, threads=args.threads, runs=args.runs, tmp=Path(tmp)),
                         indent=1))


if __name__ == "__main__":
    main()
