"""``qdit4sr-export build MODEL -o OUT``: quantize, trace, run the passes and write an engine set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from qdit4sr_export.cli.options import Command, key_values, list_flag, option, renamed, target_lines
from qdit4sr_export.cli.plan import (
    calibration_inputs,
    check_output,
    is_preset,
    method_and_config,
    output_options,
    plan_options,
)
from qdit4sr_export.errors import UserError


def existing_model(model: str) -> str:
    """MODEL must be a checkpoint on disk; a preset name gets a hint (presets have shapes, not weights)."""
    from qdit4sr_export.model.config import PRESETS

    if Path(model).exists():
        from qdit4sr_export.model.folder import check_checkpoint_path

        check_checkpoint_path(Path(model))
        return model
    if model in PRESETS:
        raise click.BadParameter(f"'{model}' is a preset name: build needs a checkpoint with weights "
                                 f"(examples/make_random_dit4sr.py {model} OUT writes a random one)", param_hint="MODEL")
    raise click.BadParameter(f"Path '{model}' does not exist.", param_hint="MODEL")


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


def _max_latent_side_help() -> str:
    return ("Largest latent side the engine set accepts; only that crop of the positional table is stored (default: "
            "128, or the whole table when smaller). Larger inputs are refused at run time.")


@click.command(cls=Command)
@click.argument("model", type=click.Path(), callback=lambda ctx, param, value: existing_model(value))
@plan_options
@option("--plan", "plan_file", section="Method", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Use this QuantPlan JSON (from `plan`) instead of making one (default: make one).")
@option("--target", section="Target", default="ort", metavar="NAME",
              help="Lowering target: ort (ONNX Runtime) or trt (TensorRT plugin graphs); --list-targets.")
@option("-T", "--target-option", "target_option", section="Target", multiple=True,
              metavar="KEY=VALUE",
              help="Set an option of the target (repeatable; --list-targets shows them), e.g. -T precision=fp32.")
@list_flag("--list-targets", "lowering targets, their passes and options", target_lines)
@option("--max-latent-side", type=click.IntRange(min=1), section="Target", default=None,
              metavar="SIDE", help=_max_latent_side_help())
@option("--max-variants", type=click.IntRange(min=1), section="Target", default=None,
              help="Cap the engine variants (shared timestep boundaries chosen by a DP; the cost is reported; default: "
                   "one per distinct activation-bit schedule).")
@renamed("--max-latent", "--max-latent-side", "max_latent_side", type=click.IntRange(min=1))
@output_options("engine set folder", click.Path(file_okay=False))
@click.pass_context
def build(ctx: click.Context, model, plan_file, target, target_option, max_latent_side, max_variants, output, force,
          as_json, **_) -> None:
    """Build an engine set for MODEL (a DiT4SR checkpoint file or folder) into -o OUT.

    --method fp packages the unquantized model (the FP baseline). Calibration data (--calib, or the packaged photo
    crops when the model has a vae/) drives the activation-bit schedule. The checkpoint is read one tensor at a time:
    the model is never in memory in float32.
    """
    method = ctx.params["method"]
    if is_preset(model):
        raise UserError(f"'{model}' is a preset name; build needs a checkpoint with weights")
    check_output(output, force)
    chosen, cfg = method_and_config(ctx, method, ctx.params["method_option"])
    if plan_file is not None and not chosen.quantizes:
        raise UserError(f"--plan and --method {method} exclude each other")
    from qdit4sr_export.compiler.targets import get_target

    target_options = get_target(target).configure(key_values(target_option, "-T/--target-option"))

    from qdit4sr_export.cli.plan import _load_model
    from qdit4sr_export.compiler.build import build_engine_set, default_max_latent
    from qdit4sr_export.compiler.stages import Stages, peak_rss
    from qdit4sr_export.engine.writer import check_disk
    from qdit4sr_export.model.folder import model_root
    from qdit4sr_export.model.positions import max_grid
    from qdit4sr_export.report.size_report import predicted_engine_bytes

    started = time.perf_counter()
    notices: list[str] = []
    stages = Stages()
    with stages.stage("load"):
        net = _load_model(model, ctx.params["config"])
    latent = default_max_latent(net.config) if max_latent_side is None else max_latent_side
    grid = max_grid(net.config, latent)
    # Before any work: the set cannot be smaller than this (4-bit codes, no branches; the exact size once planned).
    check_disk(Path(output), predicted_engine_bytes(net, None, grid, model_root(Path(model)),
                                                    lower_bound=chosen.quantizes))
    plan, calibration_source = None, None
    with stages.stage("plan"):
        if plan_file is not None:
            plan = _load_plan(plan_file, net)
        else:
            calibration, calibration_source = calibration_inputs(ctx, chosen, cfg, net, notices)
            plan = chosen.build(net, cfg, calibration=calibration, progress=not as_json)
    plan_steps = len(plan.timesteps) if plan is not None else cfg.steps
    method = plan.method if plan is not None else method
    info = {"method": method, "method_config": plan.method_config if plan is not None else None,
            "steps": plan_steps, "max_variants": max_variants, "calibration": calibration_source}
    result = build_engine_set(net, model, output, plan=plan, steps=plan_steps, max_variants=max_variants,
                              build_info=info, force=force, progress=not as_json, target=target,
                              target_options=target_options, max_latent=latent, stages=stages)
    stages.close()
    from qdit4sr_export.report.size_report import format_breakdown, size_breakdown

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
