"""``qdit4sr-export build MODEL -o OUT``: quantize, trace, run the passes and write an engine set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from qdit4sr_export.cli.plan import _calibration, _list_methods, _method_options, plan_options
from qdit4sr_export.errors import UserError

FP_METHOD = "fp"


def packaged_calibration_folder() -> Path | None:
    """The LR photo crops shipped with the package (the default calibration set), if installed."""
    folder = Path(__file__).resolve().parent.parent / "data" / "calib"
    return folder if folder.is_dir() and any(folder.glob("*.png")) else None


def _calibration_inputs(chosen, calib, model_path, net, count, seed, no_vatmp, notices):
    """Calibration for the plan: --calib, else the packaged crops through the model's autoencoder."""
    from qdit4sr_export.quant.calib_images import find_autoencoder_folder

    uses_calibration = chosen.needs_calibration or chosen.name == "qdit4sr"
    if no_vatmp or not uses_calibration:
        return None, None
    if calib:
        return _calibration(calib, model_path, net, count, seed), str(calib)
    packaged = packaged_calibration_folder()
    if packaged is not None and find_autoencoder_folder(model_path) is not None:
        return _calibration(str(packaged), model_path, net, count, seed), "packaged LR photo crops"
    notices.append("no calibration data (no --calib, and no vae/ beside the model for the packaged photo crops): "
                   "VaTMP is off, activation bits are static")
    return None, None


def _load_plan(path: str, net):
    """A saved plan, checked against the model (layer names, shapes, architecture and weights fingerprints)."""
    from qdit4sr_export.quant.accounting import quantizable_linears
    from qdit4sr_export.quant.plan import QuantPlan, check_plan_matches, weights_fingerprint

    plan = QuantPlan.load(path)
    linears = quantizable_linears(net)
    try:
        check_plan_matches(plan, net.config, linears, weights_fingerprint(net, sorted(plan.layers)))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return plan


@click.command()
@click.argument("model", required=False)
@plan_options
@click.option("--plan", "plan_file", default=None, help="Use this QuantPlan JSON (from `plan`) instead of making one.")
@click.option("--max-variants", type=click.IntRange(min=1), default=None,
              help="Cap the engine variants (shared timestep boundaries chosen by a DP; the cost is reported).")
@click.option("--target", default="ort", show_default=True, metavar="NAME",
              help="Lowering target (--list-targets).")
@click.option("--list-targets", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda c, p, v: _list_targets(c, v), help="List the lowering targets, then exit.")
@click.option("--max-latent", type=click.IntRange(min=1), default=None, metavar="SIDE",
              help="Largest latent side the engine set accepts; only that crop of the positional table is stored "
                   "(default: 128, or the whole table when smaller). Larger inputs are refused at run time.")
@click.option("-o", "--output", default=None, help="Engine set folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing engine set folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def build(ctx: click.Context, model, method, list_methods, method_option, config, wbits, wbits_budget, wbits_min,
          wbits_max, abits, svd_rank, local_rank, calib, calib_count, steps, start_sigma, max_segments, hadamard, rotation_seed,
          hadamard_block, seed, no_hsvd, no_vasmp, no_vatmp, plan_file, max_variants, target, max_latent, output, force,
          as_json) -> None:
    """Build an engine set for MODEL (a DiT4SR checkpoint file or folder) into -o OUT.

    --method fp packages the unquantized model (the FP baseline). --abits is the average activation budget;
    VaTMP runs when calibration data exists (--calib, or the packaged photo crops when the model has a vae/).
    The checkpoint is read one tensor at a time: the model is never in memory in float32.
    """
    from qdit4sr_export.build import build_engine_set, default_max_latent, model_root
    from qdit4sr_export.cli.plan import _load_model
    from qdit4sr_export.engine_writer import check_destination, check_disk
    from qdit4sr_export.model.config import PRESETS
    from qdit4sr_export.model.positions import max_grid
    from qdit4sr_export.quant.methods import get_method, make_config
    from qdit4sr_export.size_report import predicted_engine_bytes
    from qdit4sr_export.stages import Stages, peak_rss

    if list_methods:
        click.echo(_list_methods() + f"\n{FP_METHOD:<10} no quantization: the FP model as an engine set")
        return
    if model is None:
        raise UserError("missing argument MODEL (a DiT4SR checkpoint file or folder)")
    if output is None:
        raise UserError("missing option -o/--output (the engine set folder to write)")
    if model in PRESETS and not Path(model).exists():
        raise UserError(f"'{model}' is a preset name; build needs a checkpoint with weights")
    check_destination(Path(output), force)
    from qdit4sr_export.targets import get_target

    get_target(target)  # an unknown target is an error before any work
    started = time.perf_counter()
    notices: list[str] = []
    if method == FP_METHOD and plan_file is not None:
        raise UserError("--plan and --method fp exclude each other")
    if method == FP_METHOD:
        given = [n for n in ctx.params if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE
                 and n not in ("model", "method", "config", "steps", "target", "max_latent", "output", "force",
                               "as_json")]
        if given:
            raise UserError(f"--method fp takes no quantization options (got --{given[0].replace('_', '-')})")
        chosen, cfg = None, None
    else:
        chosen = get_method(method)
        cfg = make_config(chosen, _method_options(ctx, chosen, method_option))
    stages = Stages()
    with stages.stage("load"):
        net = _load_model(model, config)
    latent = default_max_latent(net.config) if max_latent is None else max_latent
    grid = max_grid(net.config, latent)
    # Before any work: the set cannot be smaller than this (4-bit codes, no branches; the exact size once planned).
    check_disk(Path(output), predicted_engine_bytes(net, None, grid, model_root(Path(model)),
                                                    lower_bound=chosen is not None))
    plan, calibration_source = None, None
    with stages.stage("plan"):
        if plan_file is not None:
            plan = _load_plan(plan_file, net)
        elif chosen is not None:
            calibration, calibration_source = _calibration_inputs(chosen, calib, model, net, calib_count, seed,
                                                                  no_vatmp, notices)
            if chosen.needs_calibration and calibration is None:
                raise UserError(f"method '{method}' needs calibration data: pass --calib (LR photos or a latents "
                                "file)")
            plan = chosen.build(net, cfg, calibration=calibration, progress=not as_json)
    plan_steps = len(plan.timesteps) if plan is not None else steps
    method = plan.method if plan is not None else method
    info = {"method": method, "method_config": plan.method_config if plan is not None else None,
            "steps": plan_steps, "max_variants": max_variants, "calibration": calibration_source}
    result = build_engine_set(net, model, output, plan=plan, steps=plan_steps, max_variants=max_variants,
                              build_info=info, force=force, progress=not as_json, target=target, max_latent=latent,
                              stages=stages)
    stages.close()
    from qdit4sr_export.size_report import format_breakdown, size_breakdown

    manifest = result.manifest
    sizes = size_breakdown(manifest)
    summary = {
        "output": str(result.output),
        "method": method,
        "target": target,
        "variants": len(manifest["variants"]),
        "calibration": calibration_source,
        "variant_cap": manifest["variant_cap"],
        "max_latent": manifest["max_latent"],
        "lowering": {v["file"]: v["lowering"] for v in manifest["variants"]},
        "sizes": sizes,
        "seconds": round(time.perf_counter() - started, 1),
        "stages": stages.to_list(),
        "peak_rss_mb": round(peak_rss() / 2**20, 1),
        "notices": notices + result.notices,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for note in summary["notices"]:
        click.echo(f"notice: {note}", err=True)
    click.echo(f"engine set: {summary['output']}  ({summary['variants']} variant(s), method {method})")
    if calibration_source:
        click.echo(f"calibration: {calibration_source}")
    if manifest["variant_cap"] is not None and max_variants is not None:
        cap = manifest["variant_cap"]
        click.echo(f"variant cap {max_variants}: distortion x{cap['distortion_ratio']:.3f} of the uncapped plan, "
                   f"mean activation bits {cap['mean_abits_uncapped']} -> {cap['mean_abits']}")
    for line in format_breakdown(sizes):
        click.echo(line)
    click.echo("stages: " + ", ".join(f"{r['stage']} {r['seconds']} s / {r['peak_rss_mb']:.0f} MB"
                                      for r in summary["stages"]))
    click.echo(f"time: {summary['seconds']} s; peak memory (RSS) {summary['peak_rss_mb']:.0f} MB")


def _list_targets(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from qdit4sr_export.targets import get_target, target_names

    for name in target_names():
        click.echo(f"{name:<6} {get_target(name).summary}")
    ctx.exit()
