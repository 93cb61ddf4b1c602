"""The released size end to end on this machine: make a random checkpoint in the released layout, build a W4A4 engine
set from it, run one denoising step; wall time and peak memory (RSS) of every stage, bytes on disk.

Stages, each in its own process (peak RSS from ``wait4``'s ``ru_maxrss`` of that process):
1. make: ``examples/make_random_dit4sr.py PRESET DIR --heavy-tailed`` (F16 base, F32 control branch, safetensors).
2. build: ``qdit4sr-export build DIR --wbits auto --abits 4 -o ENGINE --json`` (static 4-bit activations); its
   summary gives the
   time and peak RSS of load, plan (VaSMP statistics), trace, passes, lowering and write.
3. run: the runtime's ORT session for the variant a first step uses (creation time), then one step at a 64x64
   latent (a 512x512 output) with the pipeline's prompt embeddings; batch 2 when the pipeline uses
   classifier-free guidance (the released pipeline.json: guidance 8), as a real step runs.
Bytes: the engine set by category (``size_report``) against the FP32 model, the checkpoint on disk, and the paper's
Params accounting (``quant.accounting``: a b-bit weight counts b/32 of a float32 parameter).
Writes bench/results/full_size.json (``--preset`` other than dit4sr-medium: full_size_<preset>.json); ``render``
gives its page (bench/render.py).

Run: python bench/full_size.py [--preset dit4sr-medium] [--workdir DIR] [--keep]
(dit4sr-medium needs about 6.6 GB for the checkpoint and 1.5 GB for the engine set under --workdir.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, provenance, publish

FULL = "dit4sr-medium"
STEP_LATENT = 64


def timed(cmd: list[str], cwd: Path) -> tuple[str, float, int]:
    """Run ``cmd``; its stdout, wall seconds and the peak RSS (bytes) of that process (``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({os.waitstatus_to_exitcode(status)}):\n{err.read()[-3000:]}")
        return out.read(), wall, usage.ru_maxrss * 1024


def run_step(engine_dir: Path) -> dict:
    """In this (child) process: session creation and one step at a 64x64 latent; prints the JSON row."""
    import resource

    import torch
    from qdit4sr_export.runtime.backends import OrtRunner
    from qdit4sr_export.runtime.engine_set import EngineSet
    from safetensors.torch import load_file

    start = time.perf_counter()
    engine = EngineSet.load(engine_dir)
    load_s = time.perf_counter() - start
    pipeline = json.loads((engine_dir / "pipeline.json").read_text())
    prompts = load_file(str(engine_dir / "prompt_embeds.safetensors"))
    cfg = engine.manifest["model"]["config"]
    cfg_guidance = float(pipeline.get("guidance_scale", 1.0)) != 1.0
    ctx, pooled = prompts["prompt_embeds"], prompts["pooled_prompt_embeds"]
    if cfg_guidance:
        ctx = torch.cat([prompts["negative_prompt_embeds"], ctx])
        pooled = torch.cat([prompts["negative_pooled_prompt_embeds"], pooled])
    batch = ctx.shape[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg["in_channels"], STEP_LATENT, STEP_LATENT, generator=g)
    lr = torch.randn(x.shape, generator=g)
    t = torch.full((batch,), float(engine.manifest["timesteps"][0]))
    runner = OrtRunner(engine)
    variant = engine.variant_for_timestep(float(t[0])).index
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    runner.activate(variant)  # creates the variant's session
    session_s = time.perf_counter() - start
    start = time.perf_counter()
    y = runner.infer(x, lr, ctx, pooled, t)
    step_s = time.perf_counter() - start
    if not torch.isfinite(y).all():
        raise SystemExit("the step produced non-finite values")
    return {"engine_load_s": round(load_s, 2), "session_s": round(session_s, 2), "step_s": round(step_s, 2),
            "batch": batch, "latent": STEP_LATENT, "text_tokens": int(ctx.shape[1]), "variant": variant,
            "peak_rss_before_session_mb": round(rss_before / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def accounting(engine_dir: Path) -> dict:
    """The paper's Params accounting of the engine set's plan (shapes only)."""
    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.model.config import DiT4SRConfig
    from qdit4sr_export.quant.accounting import account
    from qdit4sr_export.quant.plan import QuantPlan

    manifest = json.loads((engine_dir / "manifest.json").read_text())
    model = build_dit4sr(DiT4SRConfig.from_dict(manifest["model"]["config"]), device="meta")
    summary = account(QuantPlan.load(engine_dir / "plan.json"), model).summary()
    return {"params_m": summary["params_m"], "fp_params_m": summary["fp_params_m"],
            "size_ratio": summary["size_ratio"], "avg_wbits": summary["avg_wbits"]}


def measure(preset: str, work: Path, max_latent: int | None) -> dict:
    py = sys.executable
    ckpt, engine = work / "checkpoint", work / "engine"
    stages = []
    _, wall, peak = timed([py, str(ROOT / "examples" / "make_random_dit4sr.py"), preset, str(ckpt), "--heavy-tailed"],
                          work)
    stages.append({"stage": "make", "seconds": round(wall, 2), "peak_rss_mb": round(peak / 2**20, 1)})
    cmd = [py, "-m", "qdit4sr_export", "build", str(ckpt), "--wbits", "auto", "--abits", "4",
           "-o", str(engine), "--json"] + (["--max-latent-side", str(max_latent)] if max_latent else [])
    out, wall, peak = timed(cmd, work)
    summary = json.loads(out)
    stages += [{**s, "within": "build"} for s in summary["stages"]]
    build = {"seconds": round(wall, 2), "peak_rss_mb": round(peak / 2**20, 1), "sizes": summary["sizes"],
             "max_latent": summary["max_latent"], "variants": summary["variants"]}
    out, wall, peak = timed([py, str(Path(__file__).resolve()), "--run-step", str(engine)], work)
    step = json.loads(out.strip().splitlines()[-1])
    stages += [{"stage": "session creation", "seconds": step["session_s"], "peak_rss_mb": None},
               {"stage": f"one step ({STEP_LATENT}x{STEP_LATENT} latent, batch {step['batch']})",
                "seconds": step["step_s"], "peak_rss_mb": step["peak_rss_mb"]}]
    checkpoint_bytes = sum(p.stat().st_size for p in (ckpt / "transformer").glob("*.safetensors"))
    return {"preset": preset, "stages": stages, "build": build, "run": {**step, "process_peak_rss_mb":
            round(peak / 2**20, 1), "process_seconds": round(wall, 2)},
            "checkpoint_bytes": checkpoint_bytes, "accounting": accounting(engine)}


def render(result: dict) -> str:
    sizes = result["build"]["sizes"]
    acc = result["accounting"]
    intro = (f"Model {result['preset']} ({acc['fp_params_m']:.1f} M parameters, checkpoint "
             f"{result['checkpoint_bytes'] / 1e9:.2f} GB on disk), W4A4 (VaSMP at 4 bits average, static 4-bit "
             f"activations), positional crop for latents up to {result['build']['max_latent']}. Each stage's peak "
             "RSS is that of its own process (build stages: the build's own per-stage record).")
    lines = [f"# Full size: make, build and run ({result['preset']})", "", provenance(result), "", intro, "",
             "| stage | wall time | peak RSS |", "|---|---|---|"]
    for s in result["stages"]:
        rss = "-" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb'] / 1024:.2f} GB"
        name = f"build: {s['stage']}" if s.get("within") == "build" else s["stage"]
        lines.append(f"| {name} | {s['seconds']:.1f} s | {rss} |")
    lines.append(f"| build (whole process) | {result['build']['seconds']:.1f} s | "
                 f"{result['build']['peak_rss_mb'] / 1024:.2f} GB |")
    size = (f"Bytes: weights.bin {sizes['weights_file'] / 1e9:.3f} GB, whole engine set {sizes['total'] / 1e9:.3f} GB; "
            f"FP32 model {sizes['fp32_bytes'] / 1e9:.3f} GB ({sizes['fp32_ratio']}x weights.bin), checkpoint "
            f"{result['checkpoint_bytes'] / 1e9:.3f} GB ({sizes['checkpoint_ratio']}x). The paper's accounting of the "
            f"same plan: {acc['params_m']:.2f} M float32-equivalent parameters, {acc['size_ratio']:.2f}x smaller than "
            "FP32 (stored bytes are larger: float32 scales, the unquantized parameters in float32, the positional crop).")
    return "\n".join([*lines, "", size]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=FULL, help="Model preset (default dit4sr-medium, the released 2.7B).")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the checkpoint and engine set go.")
    parser.add_argument("--max-latent-side", "--max-latent", dest="max_latent", type=int, default=None,
                        help="build --max-latent-side (default: build's own).")
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoint and engine set.")
    parser.add_argument("--run-step", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_step is not None:
        print(json.dumps(run_step(args.run_step)))
        return
    work = Path(tempfile.mkdtemp(prefix="full_size-", dir=args.workdir))
    try:
        result = measure(args.preset, work, args.max_latent)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    publish("full_size" if args.preset == FULL else f"full_size_{args.preset}", result, render)


if __name__ == "__main__":
    main()
