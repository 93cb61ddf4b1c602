"""Where a step's time goes: ONNX Runtime's profiler on a runner's session, kernel time per category and op type.

Categories follow the names the compiler's passes give the nodes they add (``<layer>/rotate*`` FoldHadamardPass,
``<layer>/hsvd*`` InsertHSVDPass, ``<layer>/<node>/q/*`` LowerOrtPass) and the op types: attention (fused
MultiHeadAttention, or the exporter's MatMul -> Softmax -> MatMul), the integer GEMMs, float linears (the FP
graph's MatMul/Gemm with a weight), and everything else (norms, modulation, GELU, residual adds, reshapes).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx

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
