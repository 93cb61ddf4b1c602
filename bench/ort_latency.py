"""Per-step latency of W8A8 and W4A4 engine sets against the FP32 engine set of the same model, ONNX Runtime CPU.

Model: dit4sr-medium's block shapes (hidden 1536, 24 heads, 4096-wide text) with only --layers of its 24
blocks (a step of the full model costs about 24/layers times as much), seeded default-init weights (latency
does not depend on the values). Tokens: a 512x512 output, i.e. a 64x64 latent -> 1024 image + 1024 LR
tokens, plus 333 text tokens, batch 1. Each engine set is built with ``build_engine_set`` (the code path of
``qdit4sr-export build``); each forward is timed after a warm-up, median of --repeats.
Writes bench/results/ort_latency.json and the "ONNX Runtime latency" section of BENCHMARKS.md.
Run: python bench/ort_latency.py   (about 10 minutes on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import ROOT, machine, update_benchmarks_md

from qdit4sr_export.build import build_engine_set
from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.model.config import PRESETS
from qdit4sr_export.quant.methods import get_method, make_config
from qdit4sr_export.trace import INPUT_NAMES

COMMAND = "python bench/ort_latency.py"


def session(folder: Path, threads: int) -> ort.InferenceSession:
    manifest = json.loads((folder / "manifest.json").read_text())
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(folder / manifest["variants"][0]["file"]), so, providers=["CPUExecutionProvider"])


def time_forward(sess: ort.InferenceSession, feeds: dict, repeats: int) -> list[float]:
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(PRESETS["dit4sr-medium"], num_layers=args.layers,
                              dual_attention_layers=tuple(range(min(args.layers - 1, 13))))
    torch.manual_seed(0)
    model = build_dit4sr(cfg).eval()
    g = np.random.default_rng(0)
    side, text = 64, 333
    feeds = {"hidden_states": g.standard_normal((1, 16, side, side), dtype=np.float32),
             "lr_latent": g.standard_normal((1, 16, side, side), dtype=np.float32),
             "encoder_hidden_states": g.standard_normal((1, text, cfg.joint_attention_dim), dtype=np.float32),
             "pooled_projections": g.standard_normal((1, cfg.pooled_projection_dim), dtype=np.float32),
             "timestep": np.array([500.0], np.float32)}
    assert list(feeds) == list(INPUT_NAMES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, bits in (("FP32", None), ("W8A8", 8), ("W4A4", 4)):
            plan = None
            if bits is not None:
                method = get_method("qdit4sr")
                plan = method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": 4}))
            folder = Path(tmp) / label
            build_engine_set(model, "in-memory", folder, plan=plan, steps=4, max_variants=None,
                             build_info={"method": "qdit4sr" if bits else "fp"}, progress=False)
            sess = session(folder, args.threads)
            times = time_forward(sess, feeds, args.repeats)
            weights = (folder / "weights.bin").stat().st_size
            rows.append({"engine": label, "median_ms": 1000 * statistics.median(times),
                         "times_ms": [1000 * t for t in times], "weights_bytes": weights})
            print(rows[-1], flush=True)
            del sess
    base = rows[0]["median_ms"]
    for r in rows:
        r["speedup_vs_fp32"] = base / r["median_ms"]
    result = {"command": COMMAND + (f" --layers {args.layers}" if args.layers != 2 else ""), "machine": machine(),
              "config": f"dit4sr-medium shapes, {args.layers} of 24 blocks", "tokens": "1024 + 1024 LR + 333 text",
              "threads": args.threads, "rows": rows}
    out = ROOT / "bench" / "results" / "ort_latency.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    lines = ["## ONNX Runtime latency (issue 5)", "",
             f"Command: `{result['command']}`. Machine: {result['machine']}, ONNX Runtime {ort.__version__}, "
             f"{args.threads} intra-op threads.",
             f"Model: {result['config']}; one forward pass (one denoising step) at a 512x512 output "
             f"({result['tokens']} tokens), batch 1; median of {args.repeats} after a warm-up. Q-DiT4SR plans "
             "(signed Hadamard, H-SVD r_G 32 / r_L 8), lowered by LowerOrtPass. weights.bin includes the FP32 "
             "positional table (906 MB at these shapes), which no engine quantizes.", "",
             "| engine | ms per step | speed vs FP32 (same run) | weights.bin |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['median_ms']:.0f} | {r['speedup_vs_fp32']:.2f}x | "
                     f"{r['weights_bytes'] / 1e6:.1f} MB |")
    update_benchmarks_md("ort_latency", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
