"""README's quickstart on the example model, timed: FP run, W4A4 build, W4A4 run over examples/lr, compare, inspect.

Runs each command as a new user would (the CLI in a fresh process, in a temporary folder), records its wall time,
and from the outputs: the VaTMP schedule (inspect's JSON), compare's per-variant SQNR and cosine, and the W4A4
outputs' PSNR against the FP model's output and against bicubic, with their high-frequency energy.
Writes bench/results/quickstart.json; ``render`` gives its page (bench/render.py).
Run: python bench/quickstart.py   (about 5 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, provenance, publish

MODEL = ROOT / "examples" / "dit4sr-tiny"
LR = ROOT / "examples" / "lr"
BUILD = ("--wbits", "auto", "--abits", "auto", "--abits-budget", "4", "--calib-count", "8")
COMPARE_TOLERANCE = ("--min-sqnr", "1", "--min-cosine", "0.6")  # README's quickstart command


def cli(*args: str, cwd: Path) -> tuple[float, str]:
    """Run ``qdit4sr-export ARGS`` in a fresh process; (seconds, stdout). A failure stops the benchmark."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "qdit4sr_export", *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode not in (0, 1) or (out.returncode == 1 and args[0] != "compare"):
        raise SystemExit(f"qdit4sr-export {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return round(seconds, 1), out.stdout


def image_checks(out_dir: Path, fp_file: Path) -> dict:
    """PSNR of the W4A4 chelsea output against the FP output, and every output's HF energy against bicubic's."""
    import torch
    from qdit4sr_export.runtime.images import load_image
    from qdit4sr_export.runtime.resize import plan_resize, upscale_lr

    from qdit4sr_export.report.metrics import hf_energy, psnr, to_255

    settings = json.loads((MODEL / "pipeline.json").read_text())
    rows = {}
    for lr_file in sorted(LR.glob("*.png")):
        lr = load_image(lr_file).rgb
        out = to_255(load_image(out_dir / lr_file.name).rgb[None])
        h, w = lr.shape[1:]
        bicubic = to_255(upscale_lr(lr, plan_resize(h, w, min_side=settings["min_lr_side"]))[None])
        rows[lr_file.stem] = {"psnr_vs_bicubic_db": round(float(psnr(out, bicubic)), 2),
                              "hf_vs_bicubic": round(float(hf_energy(out) / hf_energy(bicubic)), 2),
                              "grey_input": bool(torch.equal(lr[0], lr[1]) and torch.equal(lr[1], lr[2])),
                              "mean_channel_spread": round(float((out.max(1).values - out.min(1).values).mean()), 2)}
    fp = to_255(load_image(fp_file).rgb[None])
    rows["chelsea"]["w4a4_vs_fp_psnr_db"] = round(float(psnr(to_255(load_image(out_dir / "chelsea.png").rgb[None]),
                                                              fp)), 2)
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="copy the images, plots and engine set here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times = {}
        times["run_fp_chelsea"], _ = cli("run", str(MODEL), str(LR / "chelsea.png"), "-o", "chelsea_fp.png", cwd=work)
        times["build_w4a4"], _ = cli("build", str(MODEL), *BUILD, "-o", "tiny-w4a4", cwd=work)
        times["run_w4a4_lr"], _ = cli("run", "tiny-w4a4", str(LR), "-o", "out", "--report", "run.json", cwd=work)
        times["compare"], compare_out = cli("compare", str(MODEL / "transformer"), "tiny-w4a4", "--layers", "--json",
                                            *COMPARE_TOLERANCE, cwd=work)
        times["inspect"], inspect_out = cli("inspect", "tiny-w4a4", "--json", "--plots", "plots", cwd=work)
        run = json.loads((work / "run.json").read_text())
        compare = json.loads(compare_out)
        inspect = json.loads(inspect_out)
        images = image_checks(work / "out", work / "chelsea_fp.png")
        if args.keep is not None:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
    runs = inspect["plan"]["runs"]
    active = [r for r in inspect["layers"] if r["active"]]
    ran = [i for i, r in enumerate(runs["runs"]) if r]
    schedule = {
        "steps_run": len(ran), "grid": len(runs["runs"]), "start_sigma": runs["start_sigma"],
        "variants": [{k: v[k] for k in ("file", "steps", "mean_abits")} for v in inspect["variants"]],
        "timeline": [t["variant"] for t in inspect["timeline"]],
        "mean_abits_per_run_step": [round(sum(r["abits"][i] for r in active) / len(active), 3) for i in ran],
        "layers_not_at_4_bits": sum(any(r["abits"][i] != 4 for i in ran) for r in active),
        "active_layers": len(active),
        "avg_wbits": inspect["plan"]["avg_wbits"],
    }
    result = {"build_options": list(BUILD), "seconds": times,
              "images": len(list(LR.glob("*.png"))),
              "per_image": [{k: i.get(k) for k in ("input", "seconds", "tiles", "steps_run")} for i in run["images"]],
              "vatmp": schedule,
              "compare": {"passed": compare["passed"], "tolerance": list(COMPARE_TOLERANCE), "variants": [
                  {k: v[k] for k in ("file", "sqnr_db", "cosine", "per_input")} for v in compare["variants"]]},
              "outputs": images}
    publish("quickstart", result, render)


def old_abits_spelling(options: list[str]) -> str | None:
    """``--abits N`` recorded before the CLI's one vocabulary, where N with calibration data was VaTMP's average:
    a sentence saying so, else None."""
    if "--abits" not in options or "--abits-budget" in options:
        return None
    bits = options[options.index("--abits") + 1]
    return None if bits == "auto" else (
        f"Recorded with the CLI spelling of its date, where `--abits {bits}` with calibration data meant VaTMP "
        f"averaging {bits} bits; today that is `--abits auto --abits-budget {bits}` (`--abits {bits}` is static).")


def render(r: dict) -> str:
    s, v = r["seconds"], r["vatmp"]
    old = old_abits_spelling(r["build_options"])
    lines = ["# Quickstart on the example model", "", provenance(r), "",
             *([old, ""] if old else []), "Each CLI command in a fresh process, wall time:", "",
             "| command | seconds |", "|---|---|",
             f"| `run examples/dit4sr-tiny examples/lr/chelsea.png` (FP, torch) | {s['run_fp_chelsea']} |",
             f"| `build examples/dit4sr-tiny {' '.join(r['build_options'])}` | {s['build_w4a4']} |",
             f"| `run tiny-w4a4/ examples/lr` ({r['images']} images, ORT; per image "
             f"{', '.join(str(i['seconds']) for i in r['per_image'])} s, {r['per_image'][0]['tiles']} latent tiles, "
             f"{r['per_image'][0]['steps_run']} steps) | {s['run_w4a4_lr']} |",
             f"| `compare ... --layers` | {s['compare']} |", f"| `inspect ... --plots` | {s['inspect']} |", "",
             f"VaTMP on this build: {v['steps_run']} of {v['grid']} grid steps run (start sigma {v['start_sigma']}); "
             f"{v['layers_not_at_4_bits']} of {v['active_layers']} active layers leave 4 bits on some run step; "
             f"mean activation bits per run step: {', '.join(map(str, v['mean_abits_per_run_step']))}; "
             f"{len(v['variants'])} variant(s): " + "; ".join(
                 f"{x['file']} (steps {x['steps']}, mean {x['mean_abits']})" for x in v["variants"]) + ".", "",
             f"compare ({' '.join(r['compare']['tolerance'])}), per input: " + "; ".join(
                 f"{c['file']} t={p['timestep']:.0f} {p['sqnr_db']:.2f} dB, cosine {p['cosine']:.4f}"
                 for c in r["compare"]["variants"] for p in c["per_input"]) + f" (passed: {r['compare']['passed']}).",
             "",
             "| LR image | W4A4 PSNR vs bicubic (dB) | HF energy vs bicubic | grey input (R = G = B) | mean max-min over "
             "RGB (levels) |",
             "|---|---|---|---|---|"]
    for name, row in r["outputs"].items():
        lines.append(f"| {name} | {row['psnr_vs_bicubic_db']} | {row['hf_vs_bicubic']}x | {row['grey_input']} | "
                     f"{row['mean_channel_spread']} |")
    lines += ["", f"W4A4 against the FP output on chelsea: {r['outputs']['chelsea']['w4a4_vs_fp_psnr_db']} dB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
