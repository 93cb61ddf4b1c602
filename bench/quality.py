"""Quality on held-out photos: the trained example model (examples/dit4sr-tiny) against bicubic, and every
quantization method (Q-DiT4SR and its ablations, the comparators) at W4A6 and W4A4 against HR and FP.

Held-out crops: 128 px HR crops of scikit-image photos never used in training (chelsea, rocket, camera,
grass), degraded by the training chain (blur, bicubic /4, noise, JPEG). Quantized models run as the torch
simulation of their plan (the oracle every lowering is tested against); calibration is the packaged LR
photos through the model's autoencoder, as `build` does. Writes bench/results/quality.json
(``common.write_result``) and PNGs in bench/results/; ``render(result)`` gives its page.
Run: python bench/quality.py   (about 10 minutes on 2 CPU threads)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, provenance, table, write_result
from PIL import Image

sys.path.insert(0, str(ROOT / "examples"))
from qdit4sr_export.runtime.backends import TorchRunner  # noqa: E402
from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets  # noqa: E402
from qdit4sr_export.runtime.resize import upscale_lr  # noqa: E402
from train_tiny import HELDOUT_PHOTOS, fixed_crops, load_photos  # noqa: E402

from qdit4sr_export.quant.accounting import account  # noqa: E402
from qdit4sr_export.quant.calib_images import latents_from_folder  # noqa: E402
from qdit4sr_export.quant.calibration import CalibrationInputs  # noqa: E402
from qdit4sr_export.quant.methods import get_method, make_config, method_names  # noqa: E402
from qdit4sr_export.report.metrics import image_metrics, psnr, to_255  # noqa: E402

MODEL = ROOT / "examples" / "dit4sr-tiny"
OUT = ROOT / "bench" / "results"
#: Q-DiT4SR ablations as in the paper's Table 3: baseline = SVD-G only, 4-bit weights, static activation bits.
ABLATIONS = (("qdit4sr baseline", {"wbits": 4, "local_rank": 0, "vatmp": False}),
             ("qdit4sr +H-SVD", {"wbits": 4, "vatmp": False}),
             ("qdit4sr +H-SVD+VaSMP", {"vatmp": False}),
             ("qdit4sr +H-SVD+VaSMP+VaTMP", {}))

#: Controls that explain a comparison: SVDQuant at Q-DiT4SR's scale granularity (per-row weights, per-token
#: activations) instead of its default groups of 64.
CONTROLS = (("svdquant, per-row scales", "svdquant", {"group_size": 0}),)


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """(HR, LR) batches in [0, 1]: two seeded 128 px crops of each held-out photo."""
    photos, _ = load_photos(HELDOUT_PHOTOS)
    pairs = fixed_crops(photos, size=128, per_photo=2, seed=1234)
    to_t = lambda arrs: torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255
    return to_t([h for h, _ in pairs]), to_t([lr for _, lr in pairs])


def super_resolve(pipe: SRPipeline, lrs: torch.Tensor) -> torch.Tensor:
    return torch.stack([pipe.upscale(lr)[0] for lr in lrs])


def configs() -> list[tuple[str, str, dict]]:
    rows = []
    for abits in (6, 4):
        rows += [(label, "qdit4sr", {**opts, "abits": abits}) for label, opts in ABLATIONS]
        rows += [(name, name, {"abits": abits}) for name in method_names(quantizing_only=True) if name != "qdit4sr"]
        rows += [(label, name, {**opts, "abits": abits}) for label, name, opts in CONTROLS]
    return rows


def side_by_side(lrs, bicubic, fp, hrs, path: Path, count: int = 3) -> None:
    """Rows of crops: LR (nearest x4) | bicubic | FP model | HR."""
    tiles = []
    for i in range(count):
        lr = torch.nn.functional.interpolate(lrs[i:i + 1], scale_factor=4, mode="nearest")[0]
        tiles.append(torch.cat([lr, bicubic[i], fp[i], hrs[i]], dim=2))
    grid = to_255(torch.cat(tiles, dim=1)[None])[0].permute(1, 2, 0).numpy().astype(np.uint8)
    Image.fromarray(grid).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; ``--methods a,b`` restricts the comparator list (for a quick look)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL, help="pipeline folder (default: the example model)")
    parser.add_argument("--start-sigma", type=float, default=None,
                        help="override the model's start sigma (a larger one gives the model more of the output); "
                             "results then go to quality_s<sigma>.json and a page of their own")
    parser.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    args = parser.parse_args(argv)
    from qdit4sr_export.model import load_dit4sr
    from qdit4sr_export.report.inspect import plan_run_window
    from qdit4sr_export.report.plots import block_abits, plot_abits_heatmap, plot_weight_bits

    torch.manual_seed(0)
    folder = args.model
    model = load_dit4sr(folder / "transformer").eval()
    config = json.loads((folder / "pipeline.json").read_text())
    suffix = ""
    if args.start_sigma is not None:
        config["start_sigma"] = args.start_sigma
        suffix = f"_s{args.start_sigma}"
    shift = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["shift"]
    assets = load_assets(folder, shift=shift, config=config)
    hrs, lrs = held_out()
    bicubic = torch.stack([upscale_lr(lr, SRPipeline(None, assets).resize_plan(lr)) for lr in lrs])
    start = time.perf_counter()
    fp = super_resolve(SRPipeline(TorchRunner(model), assets), lrs)
    fp_seconds = time.perf_counter() - start
    result = {"model": folder.name, "pipeline": config,
              "crops": len(hrs), "bicubic": image_metrics(bicubic, hrs), "fp": image_metrics(fp, hrs),
              "fp_seconds_per_image": round(fp_seconds / len(hrs), 2), "methods_arg": args.methods, "methods": []}
    print(json.dumps({k: result[k] for k in ("bicubic", "fp")}), flush=True)
    if not suffix:
        side_by_side(lrs, bicubic, fp, hrs, OUT / "quality_side_by_side.png")
    cfg = model.config
    latents = latents_from_folder(ROOT / "qdit4sr_export" / "data" / "calib", folder, count=4, crop=32,
                                  max_latent_side=cfg.pos_embed_max_size * cfg.patch_size)
    prompts = assets.prompt
    calib = CalibrationInputs(lr_latent=latents, encoder_hidden_states=prompts["prompt_embeds"].expand(len(latents), -1, -1),
                              pooled_projections=prompts["pooled_prompt_embeds"].expand(len(latents), -1))
    chosen = None if args.methods is None else set(args.methods.split(","))
    for label, name, options in configs():
        if chosen is not None and name not in chosen:
            continue
        method = get_method(name)
        t0 = time.perf_counter()
        # Q-DiT4SR's VaTMP schedules the steps the pipeline runs (from its start sigma), as `build` does.
        run_from = {"start_sigma": float(config["start_sigma"])} if "start_sigma" in method.options() else {}
        plan = method.build(model, make_config(method, {"steps": int(config["steps"]), **run_from, **options}),
                            calibration=calib)
        out = super_resolve(SRPipeline(TorchRunner(model, plan, cache_weights=True), assets), lrs)
        row = {"method": label, "setting": f"W4A{options['abits']}", **image_metrics(out, hrs),
               "psnr_vs_fp": round(float(psnr(to_255(out), to_255(fp)).mean()), 2),
               "params_m": round(account(plan, model).params_m, 3), "seconds": round(time.perf_counter() - t0, 1)}
        result["methods"].append(row)
        print(json.dumps(row), flush=True)
        if label == "qdit4sr +H-SVD+VaSMP+VaTMP" and options["abits"] == 4 and not suffix:
            # The Fig. 9 analogue: the schedule VaTMP chose for the steps the pipeline runs (the others grey).
            runs = plan_run_window(plan)
            blocks, mean_abits = block_abits(plan)
            result["vatmp_schedule"] = {"runs": runs, "blocks": blocks, "mean_abits": np.round(mean_abits, 3).tolist()}
            plot_weight_bits(plan, OUT / "quality_vasmp_bits.png", title="VaSMP weight bits, W4, example model")
            plot_abits_heatmap(plan, OUT / "quality_vatmp_heatmap.png", runs=runs,
                               title="VaTMP activation bits (block mean), W4A4, example model")
    print(f"wrote {write_result('quality' + suffix, result)}")


def ablation_tables(methods: list[dict]) -> list[str]:
    """The Q-DiT4SR ablation rows laid out as the paper's Table 3 (W4A6) and Table 4 (W4A4)."""
    lines = []
    for setting, paper_table in (("W4A6", "Table 3"), ("W4A4", "Table 4")):
        rows = [r for r in methods if r["setting"] == setting and r["method"].startswith("qdit4sr ")]
        if not rows:
            continue
        lines += ["", f"Ablation at {setting}, laid out as the paper's {paper_table} (PSNR, SSIM, GMS and HF ratio against "
                  "HR; the paper reports no-reference IQA scores, which need network weights):", "",
                  "| methods | PSNR | SSIM | GMS | HF ratio | PSNR vs FP |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['method'].removeprefix('qdit4sr ').replace('+', ' +').strip()} | {r['psnr']} | {r['ssim']} | "
                  f"{r['gms']} | {r['hf_ratio']} | {r['psnr_vs_fp']} |" for r in rows]
    return lines


def schedule_text(schedule: dict | None) -> list[str]:
    """Which activation bits VaTMP chose over the steps the pipeline runs, per block."""
    if not schedule:
        return []
    runs = schedule["runs"]["runs"] if schedule["runs"] else None
    lines = ["", "VaTMP's schedule (W4A4, mean activation bits of each block's layers per grid step"
             + (f"; steps {runs.index(True)}-{len(runs) - 1} of {len(runs)} run" if runs and any(runs) else "") + "):", ""]
    for block, row in zip(schedule["blocks"], schedule["mean_abits"]):
        shown = [b for k, b in enumerate(row) if runs is None or runs[k]]
        lines.append(f"- block {block}: " + " ".join(f"{b:g}" for b in shown))
    return lines


def render(result: dict) -> str:
    """The page: bicubic and the FP model against HR, every quantized method, the ablation tables, VaTMP's schedule."""
    b, f, pipeline = result["bicubic"], result["fp"], result["pipeline"]
    resampled = "--start-sigma" in result["command"]  # a run at another start sigma: no PNGs, no schedule
    lines = ["# Quality on held-out photos" + (f", start sigma {pipeline['start_sigma']}" if resampled else ""), "",
             provenance(result), "",
             f"{result['crops']} held-out 128 px crops (scikit-image chelsea, rocket, camera, grass; never used in "
             f"training) of the example model `{result['model']}`, LR by the training degradation chain. Pipeline: "
             f"{pipeline['steps']} steps, start sigma {pipeline['start_sigma']}, guidance {pipeline['guidance_scale']}, "
             f"colour fix {pipeline['color_fix']}. GMS: gradient-magnitude similarity to HR. HF ratio: spectral energy "
             "above the LR Nyquist limit, output / HR (1 = as much fine detail as the HR photo).", "",
             *table(["", "PSNR (dB)", "SSIM", "GMS", "HF ratio"],
                    [[name, m["psnr"], m["ssim"], m["gms"], m["hf_ratio"]]
                     for name, m in (("bicubic", b), ("example model (FP)", f))]), "",
             *([] if resampled else
               ["Side by side (LR nearest x4 | bicubic | FP model | HR): `bench/results/quality_side_by_side.png`.", ""]),
             "Quantized (torch simulation of each plan, the oracle every lowering is tested against; PSNR vs FP is "
             "against the FP model's output; Params (M), the paper's measure: 32-bit parameter units, a b-bit weight "
             "counting b/32, FP low-rank branches and unquantized parameters 1):", "",
             *table(["setting", "method", "PSNR vs HR", "SSIM", "GMS", "HF ratio", "PSNR vs FP", "Params (M)"],
                    [[r["setting"], r["method"], r["psnr"], r["ssim"], r["gms"], r["hf_ratio"], r["psnr_vs_fp"],
                      r["params_m"]] for r in result["methods"]])]
    lines += ablation_tables(result["methods"])
    if not resampled:
        lines += schedule_text(result.get("vatmp_schedule"))
        lines += ["", "Plots: `bench/results/quality_vatmp_heatmap.png` (VaTMP activation bits over blocks x grid steps, "
                  "W4A4; grey: steps the pipeline does not run), `bench/results/quality_vasmp_bits.png` (VaSMP "
                  "weight bits per layer)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
