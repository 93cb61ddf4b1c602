"""One linear layer's GEMM on ONNX Runtime CPU: float32 against the integer kernels the lowering uses.

Shapes: dit4sr-medium's linears at a 512x512 output (2,381 tokens of a joint block; 1536 -> 1536, 1536 -> 6144,
6144 -> 1536). Graphs: fp32 ``MatMul(x, Transpose(W))`` (the traced FP linear) against
``com.microsoft.MatMulIntegerToFloat`` on uint8 activations (zero point 128) with int8 weights (4-7-bit codes, and
8-bit codes where the kernel is exact) or uint8 weights (8-bit codes + 128, the exact path everywhere). Each graph
runs in a session with the runtime's settings (``make_session``: prepacking off) and with prepacking on, timed
alternately in one process; medians and ratios against fp32 with the runtime's settings.
Writes bench/results/ort_gemm.json; ``render`` gives its page (bench/render.py).
Run: python bench/ort_gemm.py   (a few minutes on a busy 2-core machine). ``--quick`` checks the script in seconds
(one 256 x 256 x 256 GEMM, one round) and writes bench/results/ort_gemm_quick.json instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
from common import provenance, write_result
from onnx import TensorProto, helper, numpy_helper
from qdit4sr_export.runtime.backends import make_session

SHAPES = ((2381, 1536, 1536), (2381, 1536, 6144), (2381, 6144, 1536))
QUICK_SHAPES = ((256, 256, 256),)
KINDS = ("fp32", "u8 x s8", "u8 x u8")


def graph(kind: str, m: int, k: int, n: int) -> bytes:
    g = np.random.default_rng(0)
    node = helper.make_node
    if kind == "fp32":
        w = numpy_helper.from_array(g.standard_normal((n, k), dtype=np.float32), "w")
        nodes = [node("Transpose", ["w"], ["wt"], perm=[1, 0]), node("MatMul", ["x", "wt"], ["y"])]
        inits, x_type = [w], TensorProto.FLOAT
    else:
        signed = kind == "u8 x s8"
        w = g.integers(-7, 8, (k, n)).astype(np.int8) if signed else g.integers(1, 256, (k, n)).astype(np.uint8)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                 numpy_helper.from_array(g.random(n, dtype=np.float32), "ws"),
                 numpy_helper.from_array(np.array(128, np.uint8), "zp")]
        nodes = [node("MatMulIntegerToFloat", ["x", "w", "one", "ws", "zp"] + ([] if signed else ["zp"]), ["y"],
                      domain="com.microsoft")]
        x_type = TensorProto.UINT8
    model = helper.make_model(
        helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", x_type, [1, m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])], inits),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    return model.SerializeToString()


def session(model: bytes, threads: int, prepack: bool):
    if not prepack:
        return make_session(model, ["CPUExecutionProvider"], threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="check the script: one small GEMM, one round, results to "
                                                        "ort_gemm_quick.json")
    args = ap.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.quick:
        args.repeats = 1
    rows = []
    load = [os.getloadavg()[0]]
    for m, k, n in shapes:
        g = np.random.default_rng(1)
        feeds = {"fp32": {"x": g.standard_normal((1, m, k), dtype=np.float32)},
                 "int": {"x": g.integers(121, 136, (1, m, k)).astype(np.uint8)}}
        sessions = {(kind, prepack): session(graph(kind, m, k, n), args.threads, prepack)
                    for kind in KINDS for prepack in (False, True)}
        times: dict = {key: [] for key in sessions}
        for r in range(args.repeats + 1):
            for key, sess in sessions.items():
                feed = feeds["fp32" if key[0] == "fp32" else "int"]
                start = time.perf_counter()
                sess.run(None, feed)
                if r:  # the first round warms up
                    times[key].append(time.perf_counter() - start)
        base = statistics.median(times[("fp32", False)])
        for (kind, prepack), t in times.items():
            ms = 1000 * statistics.median(t)
            rows.append({"shape": [m, k, n], "gemm": kind, "prepacked": prepack, "median_ms": ms,
                         "times_ms": [1000 * x for x in t], "speedup_vs_fp32": 1000 * base / ms})
            print(rows[-1]["shape"], kind, "prepacked" if prepack else "runtime settings", f"{ms:.1f} ms",
                  f"{rows[-1]['speedup_vs_fp32']:.2f}x", flush=True)
    load.append(os.getloadavg()[0])
    result = {"onnxruntime": ort.__version__, "threads": args.threads, "repeats": args.repeats, "load_average": load,
              "rows": rows}
    print(f"wrote {write_result('ort_gemm_quick' if args.quick else 'ort_gemm', result)}")


def render(result: dict) -> str:
    rows, load, threads, repeats = result["rows"], result["load_average"], result["threads"], result["repeats"]
    quick = " A check run of the script (one small GEMM, one round): its numbers say nothing about speed." * (
        "--quick" in result["command"])
    lines = ["# ONNX Runtime GEMMs", "", provenance(result), "",
             (f"ONNX Runtime {result['onnxruntime']}, {threads} intra-op threads; 1-minute load average "
              f"{load[0]:.1f} before, {load[-1]:.1f} after (a shared machine: ratios from one process, timed "
              f"alternately, median of {repeats}).{quick}"),
             ("One linear's GEMM, M tokens x K in -> N out. `runtime settings`: `make_session` (prepacking off, as "
              "`OrtRunner`); `prepacked`: ONNX Runtime's default. Integer GEMMs are `MatMulIntegerToFloat` on uint8 "
              "activations; speed is against the fp32 GEMM with the runtime's settings."), "",
             "| M x K x N | GEMM | runtime settings: ms | speed vs fp32 | prepacked: ms | speed vs fp32 |",
             "|---|---|---|---|---|---|"]
    for m, k, n in dict.fromkeys(tuple(r["shape"]) for r in rows):
        for kind in KINDS:
            a, b = (next(r for r in rows if r["shape"] == [m, k, n] and r["gemm"] == kind and r["prepacked"] == p)
                    for p in (False, True))
            lines.append(f"| {m} x {k} x {n} | {kind} | {a['median_ms']:.1f} | {a['speedup_vs_fp32']:.2f}x | "
                         f"{b['median_ms']:.1f} | {b['speedup_vs_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
