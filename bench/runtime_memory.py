"""Memory of the ORT runtime with one variant loaded against all variants of an engine set.

Builds W4 Q-DiT4SR engine sets (VaTMP at 4.5 average activation bits on random calibration latents, 10 steps,
one variant per distinct configuration) of seeded dit4sr-small and of a 2x wider copy (4x the weights), then
measures, each in a fresh process, the private (anonymous) memory that creating the sessions adds, for one
variant and for all of them, with the runner's settings and with ONNX Runtime's defaults. weights.bin is mapped
from the file, shared by every session (page cache), and counted once, separately.
Writes bench/results/runtime_memory.json; ``render`` gives its page (bench/render.py).
Run: python bench/runtime_memory.py   (about 3 minutes)
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import provenance, write_result

CHILD = """
import sys
import onnxruntime as ort
from qdit4sr_export.runtime.backends import OrtRunner
from qdit4sr_export.runtime.engine_set import EngineSet
def private_mb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
engine = EngineSet.load(sys.argv[1])
count = 1 if sys.argv[2] == "one" else len(engine.variants)
before = private_mb()
if sys.argv[3] == "runner":
    runner = OrtRunner(engine, threads=1)
    for v in engine.variants[:count]:
        runner.activate(v.index)
else:
    sessions = [ort.InferenceSession(str(engine.folder / v.file), providers=["CPUExecutionProvider"])
                for v in engine.variants[:count]]
print(private_mb() - before)
"""


def measure(folder: Path, count: str, settings: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), count, settings], check=True, capture_output=True,
                         text=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def engine_set(width_factor: int, folder: Path) -> dict:
    """Build the engine set of dit4sr-small with ``width_factor`` times the heads; returns its sizes."""
    from qdit4sr_export.compiler.build import build_engine_set
    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.model.config import PRESETS
    from qdit4sr_export.quant.calibration import CalibrationInputs
    from qdit4sr_export.quant.methods import get_method, make_config

    base = PRESETS["dit4sr-small"]
    heads = base.num_attention_heads * width_factor
    cfg = dataclasses.replace(base, num_attention_heads=heads, caption_projection_dim=heads * base.attention_head_dim)
    torch.manual_seed(0)
    model = build_dit4sr(cfg).eval()
    calib = CalibrationInputs.with_null_prompt(torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0)),
                                               model.config)
    method = get_method("qdit4sr")
    plan = method.build(model, make_config(method, {"wbits": 4, "abits": 4.5, "steps": 10}), calibration=calib)
    build_engine_set(model, folder.parent, folder, plan=plan, steps=10, max_variants=None, build_info={},
                     progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"width": cfg.num_attention_heads * cfg.attention_head_dim, "variants": len(manifest["variants"]),
            "weights_mb": round((folder / "weights.bin").stat().st_size / 1e6, 1)}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 2):
            folder = Path(tmp) / f"engines{factor}"
            row = engine_set(factor, folder)
            for settings in ("runner", "ort-default"):
                one, every = measure(folder, "one", settings), measure(folder, "all", settings)
                rows.append({**row, "settings": settings, "one_variant_mb": one, "all_variants_mb": every,
                             "per_extra_variant_mb": round((every - one) / (row["variants"] - 1), 1)})
    print(f"wrote {write_result('runtime_memory', {'rows': rows})}")


def render(result: dict) -> str:
    lines = ["# Runtime memory", "", provenance(result), "",
             "W4 Q-DiT4SR engine sets (VaTMP, 10 steps) of dit4sr-small and a 2x wider copy. Private (anonymous) "
             "memory added by creating the ORT sessions; weights.bin is mapped from the file and shared by all "
             "sessions, so it is counted once, in its own column. `runner` is `OrtRunner` (prepacking and constant "
             "folding off, so no session derives a private copy of a weight); `ort-default` is a plain "
             "`InferenceSession` per variant.", "",
             "| width | variants | weights.bin | settings | one variant | all variants | per extra variant |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['width']} | {r['variants']} | {r['weights_mb']} MB | {r['settings']} | "
                     f"{r['one_variant_mb']} MB | {r['all_variants_mb']} MB | {r['per_extra_variant_mb']} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
