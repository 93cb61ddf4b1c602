"""``qdit4sr-export run MODEL_OR_ENGINE_DIR INPUT... -o OUT``: x4 super-resolution of images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from tqdm import tqdm

from qdit4sr_export.errors import UserError


def _engine_pipeline(folder: Path, backend: str, device: str, threads: int | None, verify: bool):
    from qdit4sr_export.runtime.backends import OrtRunner
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets

    if backend != "ort":
        raise UserError(f"--backend {backend} needs a checkpoint (an engine set holds no torch weights); "
                        "give the FP model folder, with --plan to simulate a plan")
    engine = EngineSet.load(folder, verify=verify)
    assets = load_assets(folder, shift=engine.shift(), config=engine.pipeline_config())
    runner = OrtRunner(engine, device=device, threads=threads)
    info = {"engine_set": str(folder), "backend": "ort", "build_steps": len(engine.timesteps),
            "variants": len(engine.variants), "variant_lookup": "by timestep value: the variant whose "
            "manifest interval holds the step's timestep"}
    return SRPipeline(runner, assets, engine, patch_size=engine.config().get("patch_size", 2)), info


def _model_pipeline(model: str, plan_file: str | None, device: str):
    from qdit4sr_export.build import model_root
    from qdit4sr_export.model import load_dit4sr
    from qdit4sr_export.quant.plan import QuantPlan
    from qdit4sr_export.runtime.backends import TorchRunner
    from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets
    from qdit4sr_export.sampling import DEFAULT_SHIFT

    if device != "cpu":
        raise UserError("--device cuda is for the ort backend; the torch backend runs on the CPU here")
    net = load_dit4sr(model)
    root = model_root(Path(model))
    if root is None:
        raise UserError(f"{model}: not a pipeline folder (no transformer/ beside vae/); run needs its autoencoder")
    config, shift = {}, DEFAULT_SHIFT
    if (root / "pipeline.json").is_file():
        config = json.loads((root / "pipeline.json").read_text())
    if (root / "scheduler" / "scheduler_config.json").is_file():
        shift = float(json.loads((root / "scheduler" / "scheduler_config.json").read_text()).get("shift", shift))
    plan = QuantPlan.load(plan_file) if plan_file else None
    info = {"model": str(model), "backend": "torch", "plan": plan_file}
    return SRPipeline(TorchRunner(net, plan), load_assets(root, shift=shift, config=config),
                      patch_size=net.config.patch_size), info


def _outputs(inputs: list[Path], output: Path, many: bool) -> list[Path]:
    if not many:
        return [output]
    if output.exists() and not output.is_dir():
        raise UserError(f"-o {output}: several inputs need an output folder")
    output.mkdir(parents=True, exist_ok=True)
    return [output / p.name for p in inputs]


@click.command()
@click.argument("model", metavar="MODEL_OR_ENGINE_DIR", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True, help="Output image (one input) or folder (a folder or several inputs).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Denoising steps (default: the model's pipeline.json).")
@click.option("--cfg", "guidance", type=float, default=None, help="Classifier-free guidance scale (1 = off).")
@click.option("--start-sigma", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Start from (1-s) LR latent + s noise (1 = pure noise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--tile", type=click.IntRange(min=8), default=64, show_default=True, help="Latent tile size.")
@click.option("--overlap", type=click.IntRange(min=0), default=24, show_default=True, help="Latent tile overlap.")
@click.option("--color-fix", type=click.Choice(["adain", "wavelet", "none"]), default=None,
              help="Colour correction against the bicubic image (default: the model's pipeline.json, else adain).")
@click.option("--backend", type=click.Choice(["ort", "torch"]), default=None,
              help="ort for engine sets (default), torch for checkpoints (default).")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="torch backend: simulate this QuantPlan.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--verify", is_flag=True, help="Check every engine-set file's sha256 before running.")
@click.option("--alpha", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="Images with transparency: upscale the alpha channel bicubically and keep it, or drop it.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), default=None, help="Write a JSON report (per image and step: variant, time).")
def run(model, inputs, output, steps, guidance, start_sigma, seed, tile, overlap, color_fix, backend, plan_file,
        device, threads, verify, alpha, report_file) -> None:
    """Super-resolve INPUT images (files or folders) x4 with an engine set or an FP checkpoint folder.

    Outputs keep the input names (in the -o folder) and formats; greyscale stays greyscale, 16-bit PNG stays
    16-bit. A file that cannot be read is reported and skipped; the others still run (exit status 1 then).
    """
    if tile <= overlap:
        raise UserError(f"--overlap {overlap} must be smaller than --tile {tile}")
    is_engine = (Path(model) / "manifest.json").is_file()
    if plan_file and is_engine:
        raise UserError("--plan is for the torch backend on a checkpoint, not for an engine set")
    if not is_engine and backend == "ort":
        raise UserError(f"{model}: --backend ort needs an engine set (build one with `qdit4sr-export build`)")

    from qdit4sr_export.runtime.images import find_inputs, load_image, save_image
    from qdit4sr_export.runtime.pipeline import PipelineOptions
    from qdit4sr_export.runtime.resize import to_output_size

    if is_engine:
        pipe, info = _engine_pipeline(Path(model), backend or "ort", device, threads, verify)
    else:
        pipe, info = _model_pipeline(model, plan_file, device)
    files = find_inputs(list(inputs))
    many = len(files) > 1 or any(Path(p).is_dir() for p in inputs)
    targets = _outputs(files, Path(output), many)
    options = PipelineOptions(steps, guidance, start_sigma, color_fix, seed, tile, overlap)
    records, failed = [], 0
    bar = tqdm(total=len(files), desc="images", unit="img")
    for src, dst in zip(files, targets):
        entry = {"input": str(src), "output": str(dst)}
        steps_bar = tqdm(desc=src.name, unit="step", leave=False)
        try:
            image = load_image(src)
            start = time.perf_counter()
            out, rep = pipe.upscale(image.rgb, options, on_step=lambda i, n: (setattr(steps_bar, "total", n),
                                                                              steps_bar.update()))
            out_alpha = None
            if image.alpha is not None and alpha == "keep":
                out_alpha = to_output_size(image.alpha, pipe.resize_plan(image.rgb))
            save_image(dst, out, out_alpha, grey=image.info.grey, bit_depth=image.info.bit_depth)
            entry.update(rep.to_dict(), seconds=round(time.perf_counter() - start, 3),
                         input_mode=image.info.mode, bit_depth=image.info.bit_depth)
        except UserError as exc:
            failed += 1
            entry["error"] = str(exc)
            tqdm.write(f"error: {exc}")
        finally:
            steps_bar.close()
        records.append(entry)
        bar.update()
    bar.close()
    if report_file:
        from qdit4sr_export.atomic import atomic_path

        report = {**info, "options": {"steps": steps, "cfg": guidance, "start_sigma": start_sigma, "seed": seed,
                                      "tile": tile, "overlap": overlap, "color_fix": color_fix}, "images": records}
        with atomic_path(Path(report_file), overwrite=True) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    if failed:
        raise SystemExit(1)
