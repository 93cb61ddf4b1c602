"""Per-step latency of quantized engine sets against the FP engine set of the same model on ONNX Runtime CPU.

Through the runtime's own sessions (``OrtRunner``: ``make_session``'s settings and the shared int8 weights), with
the per-op breakdown from ONNX Runtime's profiler.

Models (``--models``):
- ``example``: examples/dit4sr-tiny at the size ``run`` uses (64x64 latent tiles, its 8 prompt tokens, a guidance
  batch of 2 where its pipeline guides); the FP engine set, the quickstart's W4A4 build (``quickstart.BUILD``: VaSMP
  and VaTMP at 4 bits average, 8 calibration crops) and an RTN W4A4 build (the cheapest W4A4 graph: integer GEMMs
  and per-token quantization only), all made by the CLI. Also ``qdit4sr-export run`` on the four examples/lr photos,
  end to end, per engine set.
- ``medium``: dit4sr-medium's block shapes with ``--layers`` of its 24 blocks (a full step costs about 24/layers
  times as much), seeded default-init weights (latency does not depend on the values); the positional table is
  cropped to the 32x32 patch grid a 512x512 output reads (the full 384x384 table is 906 MB of FP32 that no step
  at this size touches). A 64x64 latent: 1024 image + 1024 LR tokens, 333 text tokens, batch 1. FP32, W8A8 and
  W4A4 Q-DiT4SR plans (4-step grid, static activation bits), and W4A4 QuaRot and RTN plans that price Q-DiT4SR's
  extra ops, built with ``build_engine_set`` (the ``build`` path).

Timing: one process, the engine sets' runners in turn within each round (the order rotates), a warm-up round first;
medians, and the median of the per-round ratios against FP. The machine is shared: the load average is recorded.
Also per engine set: the same graph in a plain ``make_session`` (the stored graph as is: INT4 Cast and uint8 x
uint8 GEMMs on every step) and in ONNX Runtime's default session options (prepacking and constant folding on),
timed alternately with the runner: what the runtime's settings cost or save.
Both models also time the ``ort-prepacked`` backend against the shared runner (FP32, W8A8 where built, W4A4).
Writes bench/results/ort_latency.json (a run of one model replaces that model's entry and keeps the other, with its
own command, machine and date); its page comes from ``render`` (bench/ort_latency_page.py, via bench/render.py).
Run: python bench/ort_latency.py   (15 minutes on a 2-core machine with the sets built, plus their builds;
``--keep DIR`` builds into DIR once and reuses the sets on later runs; ``--models example`` or ``--models medium``
for one part). ``--quick`` checks the script end to end in a few minutes: the ``medium`` path on dit4sr-tiny
blocks at a 16x16 latent, one round; it writes bench/results/ort_latency_quick.json instead (its numbers say nothing
about speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from common import ROOT, commit_date, invocation, machine, today, write_result
from ort_breakdown import profile, step_inputs
from ort_latency_page import render  # noqa: F401 - bench/render.py renders this script's results with it
from qdit4sr_export.runtime.backends import INPUTS, OrtRunner, make_session
from qdit4sr_export.runtime.engine_set import EngineSet
from quickstart import BUILD

EXAMPLE = ROOT / "examples" / "dit4sr-tiny"
PHOTOS = ROOT / "examples" / "lr"


def cli(*args: str, cwd: Path | None = None) -> None:
    subprocess.run([sys.executable, "-m", "qdit4sr_export", *args], check=True, cwd=cwd or Path(tempfile.gettempdir()),
                   stdout=subprocess.DEVNULL)


def example_sets(work: Path) -> dict[str, Path]:
    """FP, the README quickstart's W4A4 and an RTN W4A4 engine set of the example model (RTN: integer GEMMs and
    per-token quantization only, the cheapest W4A4), built by the CLI (reused if present)."""
    sets = {"FP32": work / "example-fp", "W4A4": work / "example-w4a4", "W4A4 RTN": work / "example-w4a4-rtn"}
    options = {"FP32": ["--method", "fp"], "W4A4": list(BUILD),
               "W4A4 RTN": ["--method", "rtn", "--wbits", "4", "--abits", "4"]}
    for label, folder in sets.items():
        if not (folder / "manifest.json").exists():
            cli("build", str(EXAMPLE), *options[label], "-o", str(folder), "--force")
    return sets


def medium_model(preset: str, layers: int, side: int):
    """``layers`` blocks of ``preset`` with seeded default-init weights, the positional table cropped to the patch
    grid of a ``side`` x ``side`` latent."""
    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.model.config import PRESETS

    base = PRESETS[preset]
    cfg = dataclasses.replace(base.with_blocks(layers), pos_embed_max_size=side // base.patch_size)
    torch.manual_seed(0)
    return build_dit4sr(cfg).eval()


def medium_sets(work: Path, preset: str, layers: int, side: int) -> dict[str, Path]:
    """FP32, W8A8 and W4A4 engine sets of ``preset`` blocks (reused if present)."""
    from qdit4sr_export.compiler.build import build_engine_set
    from qdit4sr_export.quant.methods import get_method, make_config

    sets = {label: work / f"{preset}-{layers}x{side}-{label.lower().replace(' ', '-')}" for label, _, _ in MEDIUM}
    model = None
    for (label, method_name, bits), folder in zip(MEDIUM, sets.values()):
        if (folder / "manifest.json").exists():
            continue
        model = model or medium_model(preset, layers, side)
        plan = None
        if bits is not None:
            method = get_method(method_name)
            plan = method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": 4}))
        build_engine_set(model, "in-memory", folder, plan=plan, steps=4, max_variants=None, force=True,
                         build_info={"method": method_name}, progress=False)
    return sets


#: The medium engine sets: label, method, bits. RTN (integer GEMMs and per-token quantization only) and QuaRot
#: (+ the online rotations) price what Q-DiT4SR's rotation and H-SVD branches add to the integer GEMMs.
MEDIUM = (("FP32", "fp", None), ("W8A8", "qdit4sr", 8), ("W4A4", "qdit4sr", 4), ("W4A4 QuaRot", "quarot", 4),
          ("W4A4 RTN", "rtn", 4))


@dataclasses.dataclass(frozen=True)
class Size:
    """One step's input size: latent side, guidance batch, prompt tokens."""

    side: int
    batch: int
    text: int


def example_size() -> Size:
    """The example model's step as ``run`` makes it: 64x64 latent tiles, its 8 prompt tokens, and a guidance batch
    of 2 only where its pipeline.json guides (a scale other than 1)."""
    config = json.loads((ROOT / "examples" / "dit4sr-tiny" / "pipeline.json").read_text())
    return Size(64, 1 if float(config["guidance_scale"]) == 1.0 else 2, 8)


def feeds(engine: EngineSet, size: Size) -> list[torch.Tensor]:
    """One step's inputs at the benchmark's size, in INPUTS order (timestep: the engine set's first variant)."""
    return step_inputs(engine, side=size.side, batch=size.batch, text=size.text)


def alternate(calls: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Seconds per call, ``repeats`` rounds after a warm-up round, each round calling all in a rotating order."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def summary(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    out = {}
    for name, t in times.items():
        ratios = [b / x for b, x in zip(times[base], t)]
        out[name] = {"median_ms": 1000 * statistics.median(t), "times_ms": [1000 * x for x in t],
                     "speedup": statistics.median(ratios)}
    return out


def step_latency(sets: dict[str, Path], size: Size, threads: int, repeats: int) -> dict[str, dict]:
    runners, inputs = {}, {}
    for label, folder in sets.items():
        engine = EngineSet.load(folder)
        runners[label] = OrtRunner(engine, threads=threads)
        runners[label].activate(0)
        inputs[label] = feeds(engine, size)
    times = alternate({label: (lambda r=r, x=inputs[label]: r.infer(*x)) for label, r in runners.items()}, repeats)
    return summary(times, "FP32")


def prepacked_latency(sets: dict[str, Path], size: Size, threads: int, repeats: int) -> dict[str, dict]:
    """The ``ort-prepacked`` backend (each session folds and prepacks its own weights) against the runtime's shared
    runner, every set both ways in one alternating loop; speed-ups against the FP32 set of the same backend."""
    calls = {}
    for label, folder in sets.items():
        engine = EngineSet.load(folder)
        x = feeds(engine, size)
        for suffix, prepack in (("", False), (" prepacked", True)):
            runner = OrtRunner(engine, threads=threads, prepack=prepack)
            runner.activate(0)
            calls[label + suffix] = lambda r=runner, x=x: r.infer(*x)
    times = alternate(calls, repeats)
    shared = summary({k: v for k, v in times.items() if not k.endswith(" prepacked")}, "FP32")
    packed = summary({k: v for k, v in times.items() if k.endswith(" prepacked")}, "FP32 prepacked")
    return {label: {"runner_ms": shared[label]["median_ms"], "runner_speedup": shared[label]["speedup"],
                    "prepacked_ms": packed[label + " prepacked"]["median_ms"],
                    "prepacked_speedup": packed[label + " prepacked"]["speedup"],
                    "prepacked_vs_runner": statistics.median([a / b for a, b in zip(times[label],
                                                                                    times[label + " prepacked"])])}
            for label in sets}


def settings_cost(folder: Path, size: Size, threads: int, repeats: int) -> dict[str, dict]:
    """The runner against the stored graph as is (runtime settings) and against ONNX Runtime's defaults."""
    engine = EngineSet.load(folder)
    runner = OrtRunner(engine, threads=threads)
    runner.activate(0)
    x = feeds(engine, size)
    np_feeds = {k: v.numpy() for k, v in zip(INPUTS, x)}
    path = engine.folder / engine.variants[0].file
    plain = make_session(path, ["CPUExecutionProvider"], threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    default = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    times = alternate({"runner": lambda: runner.infer(*x), "stored graph": lambda: plain.run(None, np_feeds),
                       "ORT defaults": lambda: default.run(None, np_feeds)}, repeats)
    return summary(times, "runner")


def end_to_end(sets: dict[str, Path], threads: int, repeats: int, tmp: Path) -> dict[str, dict]:
    """``qdit4sr-export run`` on the example photos, wall clock of the whole command, engine sets in turn."""
    def run(label: str) -> None:
        cli("run", str(sets[label]), str(PHOTOS), "-o", str(tmp / f"out_{label}"), "--threads", str(threads),
            "--report", str(tmp / f"run_{label}.json"), "--force")  # each repeat replaces the last one's outputs
    times = alternate({label: (lambda lab=label: run(lab)) for label in sets}, repeats)
    out = summary(times, "FP32")
    for label in sets:
        report = json.loads((tmp / f"run_{label}.json").read_text())
        images = report.get("images", report if isinstance(report, list) else [])
        steps = [s["seconds"] for im in images for s in (im.get("steps") or [])]
        out[label]["transformer_s"] = round(sum(steps), 2) if steps else None
    return out


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="example,medium", help="comma-separated: example, medium")
    ap.add_argument("--layers", type=int, default=2, help="blocks of the medium model")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--e2e-repeats", type=int, default=3)
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="build engine sets here once and reuse them")
    ap.add_argument("--quick", action="store_true",
                    help="check the script: dit4sr-tiny blocks at a 16x16 latent, one round, results to "
                         "ort_latency_quick.json")
    args = ap.parse_args()
    preset, medium = "dit4sr-medium", Size(64, 1, 333)
    if args.quick:
        args.models, args.repeats, args.e2e_repeats, args.profile_runs = "medium", 1, 1, 1
        preset, medium = "dit4sr-tiny", Size(16, 1, 8)
    torch.set_num_threads(args.threads)
    name = "ort_latency_quick" if args.quick else "ort_latency"
    out_file = ROOT / "bench" / "results" / f"{name}.json"
    result = json.loads(out_file.read_text()) if out_file.exists() else {}
    if result.get("schema") != "ort_latency/2":
        result = {"schema": "ort_latency/2", "models": {}}
    for entry in result["models"].values():  # kept from an earlier run: that run's command and date stay with it
        entry.setdefault("command", result["command"])
        entry.setdefault("date", result.get("date") or commit_date(out_file) or "not recorded")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = args.keep or tmp
        work.mkdir(parents=True, exist_ok=True)
        for model in args.models.split(","):
            if model not in ("example", "medium"):
                raise SystemExit(f"unknown model {model!r}: example or medium")
            size = example_size() if model == "example" else medium
            sets = example_sets(work) if model == "example" else medium_sets(work, preset, args.layers, size.side)
            entry: dict = {"load_before": load(), "threads": args.threads, "repeats": args.repeats,
                           "command": invocation(), "machine": machine(), "date": today()}
            entry["step"] = step_latency(sets, size, args.threads, args.repeats)
            print(model, "step", {k: (round(v["median_ms"]), round(v["speedup"], 3)) for k, v in entry["step"].items()},
                  flush=True)
            entry["prepacked"] = prepacked_latency({k: v for k, v in sets.items() if k in ("FP32", "W8A8", "W4A4")},
                                                   size, args.threads, args.repeats)
            entry["settings"] = {label: settings_cost(folder, size, args.threads, max(1, args.repeats // 2))
                                 for label, folder in sets.items()}
            entry["profile"] = {label: profile(folder, feeds(EngineSet.load(folder), size), threads=args.threads,
                                               runs=args.profile_runs, tmp=tmp) for label, folder in sets.items()}
            if model == "example":
                entry["run"] = end_to_end(sets, args.threads, args.e2e_repeats, tmp)
                print(model, "run", {k: (round(v["median_ms"]), round(v["speedup"], 3)) for k, v in entry["run"].items()},
                      flush=True)
            entry["load_after"] = load()
            entry["config"] = (f"examples/dit4sr-tiny, {size.side}x{size.side} latent, guidance batch {size.batch}, "
                               f"{size.text} text tokens" if model == "example" else
                               f"{preset} shapes, {args.layers} blocks, {size.side}x{size.side} latent, batch "
                               f"{size.batch}, {size.text} text tokens")
            entry["weights_bytes"] = {label: (folder / "weights.bin").stat().st_size for label, folder in sets.items()}
            result["models"][model] = entry
    result["onnxruntime"] = ort.__version__
    print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
