"""``qdit4sr-export build MODEL -o OUT``: quantize, trace, run the passes and write an engine set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from qdit4sr_export.cli.plan import _calibration, check_output, is_preset, method_and_config, plan_options
from qdit4sr_export.errors import UserError


def existing_model(model: str) -> str:
    """MODEL must be a checkpoint on disk; a preset name gets a hint (presets have shapes, not weights)."""
    from qdit4sr_export.model.config import PRESETS

    if Path(model).exists():
        return model
    if model in PRESETS:
        raise click.BadParameter(f"'{model}' is a preset name: build needs a checkpoint with weights "
                                 f"(examples/make_random_dit4sr.py {model} OUT writes a random one)", param_hint="MODEL")
    raise click.BadParameter(f"Path '{model}' does not exist.", param_hint="MODEL")


def packaged_calibration_folder() -> Path | None:
    """The LR photo crops shipped with the package (the default calibration set), if installed."""
    folder = Path(__file__).resolve().parent.parent / "data" / "calib"
    return folder if folder.is_dir() and any(folder.glob("*.png")) else None


def _calibration_inputs(chosen, cfg, calib, model_path, net, count, seed, notices):
    """Calibration for the plan: --calib, else the packaged crops through the model's autoencoder."""
    from qdit4sr_export.quant.calib_images import find_autoencoder_folder

    if not chosen.wants_calibration(cfg):
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
@click.argument("model", type=click.Path(), callback=lambda ctx, param, value: existing_model(value))
@plan_options
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this QuantPlan JSON (from `plan`) instead of making one.")
@click.option("--max-variants", type=click.IntRange(min=1), default=None,
              help="Cap the engine variants (shared timestep boundaries chosen by a DP; the cost is reported).")
@click.option("--target", default="ort", metavar="NAME", help="Lowering target (--list-targets).")
@click.option("-T", "--target-option", "target_option", multiple=True, metavar="KEY=VALUE",
              help="Set an option of the target (repeatable; --list-targets shows them), e.g. -T precision=fp32.")
@click.option("--list-targets", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda c, p, v: _list_targets(c, v), help="List the lowering targets, then exit.")
@click.option("--max-latent", type=click.IntRange(min=1), default=None, metavar="SIDE",
              help="Largest latent side the engine set accepts; only that crop of the positional table is stored "
                   "(default: 128, or the whole table when smaller). Larger inputs are refused at run time.")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Engine set folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing engine set folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def build(ctx: click.Context, model, method, method_option, config, wbits, wbits_budget, wbits_min, wbits_max, abits,
          svd_rank, local_rank, calib, calib_count, steps, start_sigma, max_segments, hadamard, rotation_seed,
          hadamard_block, seed, no_hsvd, no_vasmp, no_vatmp, plan_file, max_variants, target, target_option,
          max_latent, output, force, as_json) -> None:
    """Build an engine set for MODEL (a DiT4SR checkpoint file or folder) into -o OUT.

    --method fp packages the unquantized model (the FP baseline). --abits is the average activation budget;
    VaTMP runs when calibration data exists (--calib, or the packaged photo crops when the model has a vae/).
    The checkpoint is read one tensor at a time: the model is never in memory in float32.
    """
    if is_preset(model):
        raise UserError(f"'{model}' is a preset name; build needs a checkpoint with weights")
    check_output(output, force)
    chosen, cfg = method_and_config(ctx, method, method_option)
    if plan_file is not None and not chosen.quantizes:
        raise UserError(f"--plan and --method {method} exclude each other")
    from qdit4sr_export.compiler.targets import get_target

    target_options = get_target(target).configure(_key_values(target_option, "--target-option"))

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
        net = _load_model(model, config)
    latent = default_max_latent(net.config) if max_latent is None else max_latent
    grid = max_grid(net.config, latent)
    # Before any work: the set cannot be smaller than this (4-bit codes, no branches; the exact size once planned).
    check_disk(Path(output), predicted_engine_bytes(net, None, grid, model_root(Path(model)),
                                                    lower_bound=chosen.quantizes))
    plan, calibration_source = None, None
    with stages.stage("plan"):
        if plan_file is not None:
            plan = _load_plan(plan_file, net)
        else:
            calibration, calibration_source = _calibration_inputs(chosen, cfg, calib, model, net, calib_count, seed,
                                                                  notices)
            if chosen.needs_calibration and calibration is None:
                raise UserError(f"method '{method}' needs calibration data: pass --calib (LR photos or a latents "
                                "file)")
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


def _list_targets(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from qdit4sr_export.compiler.targets import TARGETS

    for t in TARGETS:
        opts = ", ".join(f"{k}={v}" for k, v in t.options.items()) or "none"
        pipeline = t.pipeline()
        passes = " -> ".join(pipeline["graph"]) + " | per variant: " + " -> ".join(pipeline["per_variant"])
        if pipeline["final"]:
            passes += " | every graph: " + " -> ".join(pipeline["final"])
        click.echo(f"{t.name:<6} {t.summary}\n{'':<6} passes: {passes}\n{'':<6} options: {opts}")
    ctx.exit()


def _key_values(items: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
