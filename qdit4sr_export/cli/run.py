"""``qdit4sr-export run MODEL_OR_ENGINE_DIR INPUT... -o OUT``: x4 super-resolution of images."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from qdit4sr_export.cli.options import Command, backend_lines, list_flag, option, renamed
from qdit4sr_export.errors import UserError

REPORT_SCHEMA = "qdit4sr-export/run-report"
REPORT_VERSION = 1


def _engine_pipeline(folder: Path, backend, device: str, threads: int | None, verify: bool):
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets

    engine = EngineSet.load(folder, verify="full" if verify else "quick")
    assets = load_assets(folder, shift=engine.shift(), config=engine.pipeline_config())
    runner = backend.open(engine, device=device, threads=threads)
    info = {"engine_set": str(folder), "backend": backend.name, "device": device,
            "build_steps": len(engine.timesteps), "variants": len(engine.variants),
            "variant_lookup": "by timestep value: the variant whose manifest interval holds the step's timestep"}
    return SRPipeline(runner, assets, engine, patch_size=engine.config().get("patch_size", 2)), info


def _model_pipeline(model: str, backend, plan_file: str | None, device: str, threads: int | None):
    from qdit4sr_export.compiler.build import model_root
    from qdit4sr_export.engine.jsonfile import read_json_object
    from qdit4sr_export.model.sampling import DEFAULT_SHIFT
    from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets

    root = model_root(Path(model))
    if root is None:
        raise UserError(f"{model}: not a pipeline folder (no transformer/ beside vae/); run needs its autoencoder")
    runner = backend.open(model, device=device, threads=threads, plan=plan_file)
    config, shift = {}, DEFAULT_SHIFT
    if (root / "pipeline.json").is_file():
        config = read_json_object(root / "pipeline.json", "pipeline settings")
    if (root / "scheduler" / "scheduler_config.json").is_file():
        shift = float(read_json_object(root / "scheduler" / "scheduler_config.json", "scheduler config")
                      .get("shift", shift))
    info = {"model": str(model), "backend": backend.name, "device": device, "plan": plan_file}
    return SRPipeline(runner, load_assets(root, shift=shift, config=config), patch_size=runner.patch_size), info


def _outputs(inputs: list[Path], output: Path, many: bool) -> list[Path]:
    """Where each result goes: -o is a file for one input, a folder for a folder or several inputs."""
    from qdit4sr_export.runtime.images import IMAGE_SUFFIXES

    if not many:
        return [output / inputs[0].name if output.is_dir() else output]
    if output.suffix.lower() in IMAGE_SUFFIXES or (output.exists() and not output.is_dir()):
        raise UserError(f"-o {output}: {len(inputs)} inputs need an output folder, not a file name")
    return [output / p.name for p in inputs]


def _resolve_backend(name: str | None, is_engine: bool, device: str):
    from qdit4sr_export.runtime.registry import CHECKPOINT, ENGINE_SET, default_backend, get_backend

    reads = ENGINE_SET if is_engine else CHECKPOINT
    backend = default_backend(reads) if name is None else get_backend(name)
    if backend.reads != reads:
        if is_engine:
            raise UserError(f"--backend {backend.name} needs a checkpoint (an engine set holds no FP weights); give "
                            "the FP model folder, with --plan to simulate a plan")
        raise UserError(f"--backend {backend.name} needs an engine set (build one with `qdit4sr-export build`)")
    return backend, backend.check_device(device)


@click.command(cls=Command)
@click.argument("model", metavar="MODEL_OR_ENGINE_DIR", type=click.Path(exists=True, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path(path_type=Path))
@option("-o", "--output", section="Output", required=True, type=click.Path(path_type=Path),
        help="Output image (one input) or folder (a folder or several inputs).")
@option("--alpha", section="Output", type=click.Choice(["keep", "drop"]), default="keep",
        help="Images with transparency: upscale the alpha channel bicubically and keep it, or drop it.")
@option("--report", "report_file", section="Output", default=None, type=click.Path(dir_okay=False, path_type=Path),
        help="Write a JSON report (per image and step: variant, time; default: none).")
@option("--grid-steps", section="Sampling", type=click.IntRange(min=1), default=None, metavar="N",
        help="Sampling grid: steps from sigma 1 to 0 (default: the model's pipeline.json); the run executes those at "
             "or below --start-sigma.")
@option("--start-sigma", section="Sampling", type=click.FloatRange(0, 1, min_open=True), default=None,
        help="Start from (1 - s) LR latent + s noise (1 = pure noise; default: the model's pipeline.json).")
@option("--cfg", "guidance", section="Sampling", type=float, default=None,
        help="Classifier-free guidance scale (1 = off; default: the model's pipeline.json).")
@option("--seed", section="Sampling", type=int, default=0, help="Noise seed.")
@option("--color-fix", section="Sampling", type=click.Choice(["adain", "wavelet", "none"]), default=None,
        help="Colour correction against the bicubic image (default: the model's pipeline.json, else adain).")
@option("--tile", section="Sampling", type=click.IntRange(min=8), default=64, help="Latent tile size.")
@option("--overlap", section="Sampling", type=click.IntRange(min=0), default=24, help="Latent tile overlap.")
@option("--backend", section="Runtime", default=None, metavar="NAME",
        help="Backend (--list-backends; default: ort for an engine set, torch for a checkpoint).")
@list_flag("--list-backends", "backends", backend_lines)
@option("--device", section="Runtime", type=click.Choice(["cpu", "cuda"]), default=None,
        help="Where the backend runs (default: its first device: cpu, cuda for trt).")
@option("--threads", section="Runtime", type=click.IntRange(min=1), default=None,
        help="Intra-op threads (default: all cores).")
@option("--plan", "plan_file", section="Runtime", default=None, type=click.Path(exists=True, dir_okay=False),
        help="torch backend: simulate this QuantPlan on the checkpoint (default: FP).")
@option("--verify", section="Runtime", is_flag=True,
        help="Hash every engine-set file in full before running (by default large files get a sampled check).")
@renamed("--steps", "--grid-steps", "grid_steps", type=click.IntRange(min=1))
def run(model, inputs, output, alpha, report_file, grid_steps, start_sigma, guidance, seed, color_fix, tile, overlap,
        backend, device, threads, plan_file, verify) -> None:
    """Super-resolve INPUT images (files or folders) x4 with an engine set or an FP checkpoint folder.

    Outputs keep the input names (in the -o folder) and formats; greyscale stays greyscale, 16-bit PNG stays
    16-bit. A file that cannot be read is reported and skipped; the others still run (exit status 1 then).
    """
    from qdit4sr_export import __version__

    if tile <= overlap:
        raise UserError(f"--overlap {overlap} must be smaller than --tile {tile}")
    is_engine = (model / "manifest.json").is_file()
    if plan_file and is_engine:
        raise UserError("--plan is for the torch backend on a checkpoint, not for an engine set")
    missing = next((p for p in inputs if not p.exists()), None)
    if missing is not None:  # before the runtime (torch) loads; find_inputs says the same
        raise UserError(f"{missing}: no such file or folder")
    from qdit4sr_export.runtime.images import find_inputs

    files = find_inputs(list(inputs))
    if not files:
        raise UserError(f"no image files in {', '.join(map(str, inputs))}")
    many = len(files) > 1 or any(p.is_dir() for p in inputs)
    targets = _outputs(files, output, many)
    chosen, device = _resolve_backend(backend, is_engine, device)
    if is_engine:
        pipe, info = _engine_pipeline(model, chosen, device, threads, verify)
    else:
        pipe, info = _model_pipeline(str(model), chosen, plan_file, device, threads)
    records, failed = _run_images(pipe, files, targets, alpha, (grid_steps, guidance, start_sigma, color_fix, seed,
                                                                 tile, overlap))
    if report_file:
        from qdit4sr_export.engine.atomic import atomic_path

        report = {"schema": REPORT_SCHEMA, "version": REPORT_VERSION, "tool_version": __version__, **info,
                  "options": {"steps": grid_steps, "cfg": guidance, "start_sigma": start_sigma, "seed": seed,
                              "tile": tile, "overlap": overlap, "color_fix": color_fix}, "images": records}
        with atomic_path(report_file, overwrite=True) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
        click.echo(f"report: {report_file}")
    if failed:
        raise SystemExit(1)


def _run_images(pipe, files: list[Path], targets: list[Path], alpha: str, option_values: tuple):
    """Run every image; returns the report records and the number that failed."""
    from tqdm import tqdm

    from qdit4sr_export.report.progress import progress_bar
    from qdit4sr_export.runtime.images import load_image, save_image
    from qdit4sr_export.runtime.pipeline import PipelineOptions
    from qdit4sr_export.runtime.resize import to_output_size

    options = PipelineOptions(*option_values)
    records, failed = [], 0
    bar = progress_bar(total=len(files), desc="images", unit="img")
    for src, dst in zip(files, targets):
        entry = {"input": str(src), "output": None}
        steps_bar = progress_bar(desc=src.name, unit="step", leave=False)
        try:
            image = load_image(src)
            start = time.perf_counter()
            out, rep = pipe.upscale(image.rgb, options, on_step=lambda i, n: (setattr(steps_bar, "total", n),
                                                                              steps_bar.update()))
            out_alpha = None
            if image.alpha is not None and alpha == "keep":
                out_alpha = to_output_size(image.alpha, pipe.resize_plan(image.rgb))
            save_image(dst, out, out_alpha, grey=image.info.grey, bit_depth=image.info.bit_depth)
            entry.update(rep.to_dict(), output=str(dst), seconds=round(time.perf_counter() - start, 3),
                         input_mode=image.info.mode, bit_depth=image.info.bit_depth)
            tqdm.write(f"wrote {dst}")
        except UserError as exc:
            failed += 1
            entry["error"] = str(exc)
            tqdm.write(f"error: {src}: {exc}" if str(src) not in str(exc) else f"error: {exc}", file=sys.stderr)
        finally:
            steps_bar.close()
        records.append(entry)
        bar.update()
    bar.close()
    return records, failed
