"""``qdit4sr-export compare FP_MODEL ENGINE_DIR``: accuracy of every engine variant against the FP model."""

from __future__ import annotations

import json

import click

from qdit4sr_export.cli.options import Command, backend_lines, list_flag, option, renamed
from qdit4sr_export.errors import UserError
from qdit4sr_export.report.progress import progress_bar

SCHEMA = "qdit4sr-export/compare"
VERSION = 1


def _images(model, engine, folder: str, steps: int | None, seed: int, quiet: bool, backend, device: str) -> list[dict]:
    """Both pipelines end to end on every image of ``folder``: PSNR/SSIM of the engine's output against FP's."""
    from qdit4sr_export.report.metrics import psnr, ssim, to_255
    from qdit4sr_export.runtime.backends import TorchRunner
    from qdit4sr_export.runtime.images import find_inputs, load_image
    from qdit4sr_export.runtime.pipeline import PipelineOptions, SRPipeline, load_assets

    files = find_inputs([folder])
    if not files:
        raise UserError(f"--images {folder}: no image files")
    assets = load_assets(engine.folder, shift=engine.shift(), config=engine.pipeline_config())
    fp_pipe = SRPipeline(TorchRunner(model), assets, patch_size=model.config.patch_size)
    q_pipe = SRPipeline(backend.open(engine, device=device), assets, engine, patch_size=model.config.patch_size)
    options = PipelineOptions(steps=steps, seed=seed)
    rows = []
    for path in progress_bar(files, desc="images", unit="img", leave=False, enabled=not quiet):
        rgb = load_image(path).rgb
        a, _ = fp_pipe.upscale(rgb, options)
        b, _ = q_pipe.upscale(rgb, options)
        a8, b8 = to_255(a[None]), to_255(b[None])
        rows.append({"image": path.name, "psnr_db": round(float(psnr(b8, a8)[0]), 2),
                     "ssim": round(float(ssim(b8, a8)[0]), 4)})
    return rows


def _table(result: dict) -> str:
    lines = [f"inputs: {result['inputs']}",
             f"{'variant':<17}{'timestep':>9}{'in run':>8}{'max abs':>11}{'cosine':>10}{'SQNR dB':>9}  result"]
    for v in result["variants"]:
        in_run = {True: "yes", False: "no", None: "-"}[v.get("in_run")]
        for k, row in enumerate(v["per_input"]):
            verdict = "pass" if v["passed"] else "FAIL"
            lines.append(f"{v['file'] if k == 0 else '':<17}{row['timestep']:>9.1f}{in_run:>8}{row['max_abs']:>11.4g}"
                         f"{row['cosine']:>10.5f}{row['sqnr_db']:>9.2f}  {verdict}")
    if any(v.get("in_run") is False for v in result["variants"]):
        lines.append("in run: whether the pipeline's default steps (pipeline.json) reach that timestep")
    for index, onset in result.get("layers", {}).items():
        first, drop = onset["first_below_threshold"], onset["largest_drop"]
        where = f"{first['layer']} (call {first['call']}, {first['sqnr_db']} dB)" if first else "none"
        lines.append(f"variant {index}: first layer below {onset['threshold_db']} dB: {where}; largest drop: "
                     f"{drop['layer']} (-{drop['drop_db']} dB)" if drop else f"variant {index}: first below: {where}")
        lines.extend(f"    {w['sqnr_db']:>8.2f} dB  {w['layer']} (call {w['call']})" for w in onset["worst"])
    for row in result.get("images", []):
        lines.append(f"image {row['image']}: PSNR {row['psnr_db']} dB, SSIM {row['ssim']} (engine vs FP pipeline)")
    lines.append("PASS" if result["passed"] else "FAIL: tolerance not met")
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("fp_model", metavar="FP_MODEL", type=click.Path(exists=True))
@click.argument("engine_dir", metavar="ENGINE_DIR", type=click.Path(exists=True, file_okay=False))
@option("--inputs", "inputs_file", section="Input", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Model inputs to compare on (.safetensors/.npz with the five model inputs; default: "
                                 "generated per variant at its own timesteps).")
@option("--per-variant", section="Input", type=click.IntRange(min=1), default=2,
              help="Generated input sets per variant, at that variant's timesteps.")
@option("--latent-side", section="Input", type=click.IntRange(min=2), default=16,
              help="Latent side of the generated inputs.")
@option("--seed", section="Input", type=int, default=0,
              help="Seed of the generated inputs (photo crops and noise) and of the --images runs' noise.")
@option("--images", "images_dir", section="Input", type=click.Path(exists=True, file_okay=False),
              default=None, help="Also super-resolve these images with both pipelines and report PSNR/SSIM of the "
                                 "engine's output against FP's (default: none).")
@option("--grid-steps", section="Input", type=click.IntRange(min=1), default=None, metavar="N",
              help="--images: sampling grid of the runs (default: the engine set's pipeline.json).")
@option("--min-sqnr", section="Tolerances", type=float, default=20.0,
              help="Pass when every variant's output SQNR (dB) is at least this.")
@option("--min-cosine", section="Tolerances", type=float, default=0.99,
              help="Pass when every variant's output cosine similarity is at least this.")
@option("--atol", section="Tolerances", type=float, default=None,
              help="Also apply polygraphy's elementwise absolute check with this tolerance (default: off).")
@option("--layers", section="Tolerances", is_flag=True,
              help="Localise error: per-layer SQNR against the FP model's layers.")
@option("--layer-threshold", section="Tolerances", type=float, default=None,
              help="--layers: SQNR (dB) below which a layer counts as where the error starts (default: --min-sqnr).")
@option("--backend", section="Runtime", default="ort", metavar="NAME",
              help="Backend that runs the engine set (--list-backends); ort runs the variant graphs in polygraphy's "
                   "OnnxrtRunner.")
@list_flag("--list-backends", "backends", backend_lines)
@option("--device", section="Runtime", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where the backend runs (default: its first device: cpu, cuda for trt).")
@option("--json", "as_json", section="Output", is_flag=True, help="Print the result as JSON.")
@renamed("--side", "--latent-side", "latent_side", type=click.IntRange(min=2))
@renamed("--steps", "--grid-steps", "grid_steps", type=click.IntRange(min=1))
def compare(fp_model, engine_dir, inputs_file, per_variant, latent_side, seed, images_dir, grid_steps, min_sqnr,
            min_cosine, atol, layers, layer_threshold, backend, device, as_json) -> None:
    """Compare every variant of ENGINE_DIR with the FP model FP_MODEL (polygraphy; exit 1 if a tolerance fails).

    Default inputs sit at the timesteps the engine set's pipeline.json runs, built from real LR photos where the
    set has an autoencoder: x_t = (1 - sigma) LR latent + sigma noise.
    """
    from qdit4sr_export.runtime.registry import ENGINE_SET, get_backend

    # The backend first, before the model's imports: check_device may have to act before triton is imported.
    chosen = get_backend(backend)
    if chosen.reads != ENGINE_SET:
        raise UserError(f"--backend {backend} runs checkpoints, not engine sets; compare needs an engine-set backend")
    device = chosen.check_device(device)
    from qdit4sr_export.model.loading import open_dit4sr
    from qdit4sr_export.model.positions import max_grid
    from qdit4sr_export.model.weights import crop_positions_, materialize
    from qdit4sr_export.report.compare import (
        Tolerance,
        check_engine_matches,
        compare_variant,
        generated_inputs,
        load_inputs,
        torch_outputs,
    )
    from qdit4sr_export.report.layer_errors import error_onset, variant_layer_errors
    from qdit4sr_export.runtime.backends import uses_plugin_ops
    from qdit4sr_export.runtime.engine_set import EngineSet
    engine = EngineSet.load(engine_dir)
    model = open_dit4sr(fp_model)  # lazily: the fingerprint check streams the weights
    check_engine_matches(engine, model)
    grid = max_grid(model.config, engine.max_latent)
    model = materialize(crop_positions_(model, grid)).eval()  # float32, with the engine set's positional crop
    in_run: dict = {}
    if inputs_file:
        given = load_inputs(inputs_file, model)
        feeds = {v.index: given for v in engine.variants}
        source = str(inputs_file)
    else:
        generated = generated_inputs(engine, model, per_variant=per_variant, side=latent_side, seed=seed)
        feeds, in_run, source = generated.feeds, generated.in_run, generated.source
    runner, providers = None, None
    if chosen.runs_graphs:  # the variant graphs themselves, in polygraphy's OnnxrtRunner
        from qdit4sr_export.runtime.backends import ort_providers

        providers = ort_providers(device)
    else:
        runner = chosen.open(engine, device=device)
    tolerance = Tolerance(min_sqnr, min_cosine, atol)
    result = {"schema": SCHEMA, "version": VERSION, "engine_set": str(engine_dir), "fp_model": str(fp_model),
              "backend": backend, "device": device, "inputs": source,
              "tolerance": {"min_sqnr": min_sqnr, "min_cosine": min_cosine, "atol": atol}, "variants": []}
    for v in progress_bar(engine.variants, desc="variants", unit="variant", enabled=not as_json):
        for feed in feeds[v.index]:
            engine.check_latent(*feed["hidden_states"].shape[-2:])
        reference = torch_outputs(model, feeds[v.index])
        res = compare_variant(engine, v.index, feeds[v.index], reference, tolerance,
                              runner=runner, providers=providers)
        res.in_run = in_run.get(v.index)
        result["variants"].append(res.to_dict())
    if layers:
        threshold = min_sqnr if layer_threshold is None else layer_threshold
        result["layers"] = {}
        for v in progress_bar(engine.variants, desc="layers", unit="variant", enabled=not as_json):
            errors = variant_layer_errors(model, engine.folder / v.file, feeds[v.index][0],
                                          plugin_ops=uses_plugin_ops(engine))
            result["layers"][str(v.index)] = {**error_onset(errors, threshold),
                                              "all": [e.to_dict() for e in errors]}
    if images_dir:
        result["images"] = _images(model, engine, images_dir, grid_steps, seed, as_json, chosen, device)
    result["passed"] = all(v["passed"] for v in result["variants"])
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(_table(result))
    if not result["passed"]:
        raise SystemExit(1)
