"""``qdit4sr-export plan MODEL``: make a QuantPlan (Q-DiT4SR or another method) and report its size and compute.

Everything a typo can get wrong (the model path, the method and its options, the output) is checked before
torch loads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from qdit4sr_export.cli.options import (
    Command,
    deprecated,
    given,
    key_values,
    list_flag,
    method_lines,
    method_option,
    option,
    renamed,
    set_param,
)
from qdit4sr_export.errors import UserError


def parse_bits(value: str | None, flag: str) -> int | None:
    """``auto`` (None) or an integer bit width 2..8."""
    if value is None or value == "auto":
        return None
    try:
        bits = int(value)
    except ValueError:
        bits = -1
    if not 2 <= bits <= 8:
        raise UserError(f"{flag} must be 'auto' or an integer 2..8, got {value!r}")
    return bits


def is_preset(model: str) -> bool:
    """Whether MODEL names a preset (shape-only accounting) rather than a checkpoint; an error if neither."""
    from qdit4sr_export.model.config import PRESETS
    from qdit4sr_export.model.folder import check_checkpoint_path

    if Path(model).exists():
        check_checkpoint_path(Path(model))
        return False
    if model in PRESETS:
        return True
    raise UserError(f"'{model}' is neither a file or folder nor a preset ({', '.join(sorted(PRESETS))})")


def check_output(output: str | None, force: bool) -> None:
    if output is not None and Path(output).exists() and not force:
        raise UserError(f"{output} already exists (pass --force to replace it)")


def _load_model(model: str, config: str | None):
    """A preset (shapes only) or a checkpoint opened lazily (tensors read one at a time when needed)."""
    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.model.loading import open_dit4sr

    if is_preset(model):
        return build_dit4sr(config or model, device="meta")
    return open_dit4sr(model, config=config)


def _calibration(calib: str, model_path: str, model, count: int, seed: int):
    from qdit4sr_export.quant.calib_images import latents_from_folder
    from qdit4sr_export.quant.calibration import CalibrationInputs, load_calibration_file

    if Path(calib).is_dir():
        cfg = model.config
        latents = latents_from_folder(calib, model_path, count=count, seed=seed,
                                      max_latent_side=cfg.pos_embed_max_size * cfg.patch_size)
        return CalibrationInputs.with_null_prompt(latents, model.config)
    return load_calibration_file(calib, model.config)


def plan_summary(plan, model) -> dict:
    """The JSON summary: accounting plus bit histograms and notes."""
    from qdit4sr_export.quant.accounting import account

    acc = account(plan, model)
    wbits = Counter(lp.wbits for lp in plan.layers.values())
    abits = Counter(b for lp in plan.layers.values() for b in lp.abits)
    return {
        "method": plan.method,
        "layers": len(plan.layers),
        **acc.summary(),
        "bops_unit": "bit-operations per denoising step: sum of MACs * w_bits * a_bits at bops_latent_side, batch 1",
        "wbits_histogram": {str(k): v for k, v in sorted(wbits.items())},
        "abits_histogram": {str(k): v for k, v in sorted(abits.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "steps": len(plan.timesteps),
        "notes": list(plan.notes),
    }


def _fraction(value: str | None) -> float | None:
    """A non-integer number of bits (an average), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number.is_integer() else number


def _has_calibration(ctx: click.Context) -> bool:
    """Whether calibration data is at hand: --calib, or a pipeline folder with vae/ (the packaged crops)."""
    from qdit4sr_export.model.folder import model_root

    model = Path(ctx.params.get("model") or "")
    root = model_root(model) if model.exists() else None
    return bool(ctx.params.get("calib")) or (root is not None and (root / "vae").is_dir())


def _weight_bits(ctx: click.Context, method) -> dict:
    """Config fields from --wbits N|auto and --wbits-budget."""
    p, out = ctx.params, {}
    if given(ctx, "wbits"):
        bits = parse_bits(p["wbits"], "--wbits")
        if bits is None and not method.vasmp:
            raise UserError(f"--wbits auto (VaSMP) does not apply to method '{method.name}': give --wbits N (2..8)")
        out["wbits"] = bits
    if given(ctx, "wbits_budget"):
        if not method.vasmp:
            raise UserError(f"--wbits-budget does not apply to method '{method.name}' (its weight bits are uniform: "
                            "give --wbits N)")
        if out.get("wbits") is not None:
            raise UserError("--wbits N and --wbits-budget exclude each other (the budget is for --wbits auto)")
        out["wbits_budget"] = p["wbits_budget"]
    return out


def _activation_bits(ctx: click.Context, method) -> dict:
    """Config fields from --abits N|auto and --abits-budget (see ``Method.abits_schedule``)."""
    p, out, schedule = ctx.params, {}, method.abits_schedule
    static = None
    if given(ctx, "abits") and _fraction(p["abits"]) is not None:  # the old spelling of a budget: --abits 4.5
        click.echo(f"notice: --abits {p['abits']} as an average is deprecated and will be removed in the next "
                   f"release; use --abits auto --abits-budget {p['abits']}", err=True)
        set_param(ctx, "abits_budget", _fraction(p["abits"]), f"--abits {p['abits']}", "--abits-budget")
        p["abits"] = "auto"
    if given(ctx, "abits"):
        static = parse_bits(p["abits"], "--abits")
        if static is None and schedule is None:
            raise UserError(f"--abits auto (a per-timestep schedule) does not apply to method '{method.name}': "
                            "give --abits N (2..8)")
        if static is not None and schedule == "always":
            raise UserError(f"method '{method.name}' always searches per-timestep activation bits: give "
                            "--abits-budget N instead of --abits N")
        if schedule == "switch":
            out["vatmp"] = static is None
        if static is not None:
            out["abits"] = float(static)
    if given(ctx, "abits_budget"):
        if schedule is None:
            raise UserError(f"--abits-budget does not apply to method '{method.name}' (its activation bits are "
                            "static: give --abits N)")
        if static is not None:
            raise UserError("--abits N and --abits-budget exclude each other (the budget is for --abits auto)")
        out["abits"] = p["abits_budget"]
    if schedule == "switch" and static is not None and _has_calibration(ctx):  # where --abits N once meant VaTMP
        click.echo(f"notice: --abits {static} means static {static}-bit activations (VaTMP off); for a VaTMP "
                   f"schedule averaging {static} bits give --abits auto --abits-budget {static}", err=True)
    return out


def _method_options(ctx: click.Context, method, raw_options: tuple[str, ...]) -> dict:
    """Config fields from the options given on the command line (defaults stay the method's own), then -O."""
    p, fields = ctx.params, method.options()
    flags = {"grid_steps": "steps", "seed": "calib_seed", "start_sigma": "start_sigma", "wbits": "wbits",
             "abits": "abits", "wbits_budget": "wbits_budget", "abits_budget": "abits"}
    for flag, field in flags.items():
        if given(ctx, flag) and field not in fields:
            raise UserError(f"--{flag.replace('_', '-')} does not apply to method '{method.name}'")
    options: dict = {field: p[flag] for flag, field in
                     (("grid_steps", "steps"), ("seed", "calib_seed"), ("start_sigma", "start_sigma"))
                     if given(ctx, flag)}
    options.update(_weight_bits(ctx, method))
    options.update(_activation_bits(ctx, method))
    options.update(key_values(raw_options, "-O/--method-option"))
    if p.get("model"):  # runs of a pipeline folder follow its trajectory: calibrate and plan on the same one
        from qdit4sr_export.model.folder import pipeline_trajectory

        fields = method.options()
        for key, value in pipeline_trajectory(Path(p["model"])).items():
            if key in fields and key not in options:
                options[key] = value
    return options


def _method_help() -> str:
    from qdit4sr_export.quant.methods import method_names

    return f"Quantization method: {', '.join(method_names())}."


def _uniform_at_budget(ctx: click.Context, bits: str, old: str) -> None:
    """--no-vasmp / --no-vatmp: the same bits everywhere, at the budget (--wbits-budget / --abits-budget, else 4)."""
    budget = f"{bits}_budget"
    set_param(ctx, bits, str(round(float(ctx.params.get(budget) or 4.0))), old, f"--{bits}")
    ctx.params[budget] = None
    ctx.set_parameter_source(budget, click.core.ParameterSource.DEFAULT)


#: Options shared by ``plan`` and ``build``: the method and its knobs, bits, calibration and the sampling grid.
PLAN_OPTIONS = [
    option("--method", default="qdit4sr", section="Method", help=_method_help()),
    list_flag("--list-methods", "methods and their options (with defaults)", method_lines),
    option("-O", "--method-option", "method_option", multiple=True, metavar="KEY=VALUE", section="Method",
           help="Set an option of the method (repeatable; --list-methods shows each method's options and defaults), "
                "e.g. -O svd_rank=16 -O local_rank=0."),
    option("--config", default=None, metavar="NAME|FILE", section="Method",
           help="Model config (a preset name or config.json) for a checkpoint that carries none (default: the "
                "checkpoint's own)."),
    option("--wbits", default=None, metavar="N|auto", section="Bits",
           help="Weight bits: N (2..8) for every layer, or auto (VaSMP: per-layer bits averaging --wbits-budget). "
                "Default: the method's (auto for qdit4sr, 4 for the others)."),
    option("--wbits-budget", type=click.FloatRange(2, 8), default=None, metavar="AVG", section="Bits",
           help="Average weight bits of --wbits auto (default 4)."),
    option("--abits", default=None, metavar="N|auto", section="Bits",
           help="Activation bits: N (2..8) static for every layer and step, or auto (a per-timestep schedule "
                "averaging --abits-budget: qdit4sr's VaTMP, adatsq's search; static without calibration data). "
                "Default: the method's (auto for qdit4sr and adatsq, 4 for the others)."),
    option("--abits-budget", type=click.FloatRange(2, 8), default=None, metavar="AVG", section="Bits",
           help="Average activation bits of --abits auto (default 4)."),
    option("--calib", type=click.Path(exists=True), default=None, section="Calibration and sampling",
           help="Calibration data: a folder of LR images (needs vae/ beside the model) or a latents file (default: "
                "the packaged LR photo crops when the model has a vae/, else none)."),
    option("--calib-count", type=click.IntRange(min=1), default=32, section="Calibration and sampling",
           help="Random 128x128 crops taken from the --calib images."),
    option("--seed", type=int, default=0, section="Calibration and sampling",
           help="Seed of the calibration crops and noise."),
    option("--grid-steps", type=click.IntRange(min=1), default=None, metavar="N", section="Calibration and sampling",
           help="Sampling grid: steps from sigma 1 to 0 (default: the model folder's pipeline.json, else 40). A run "
                "executes the grid's steps at or below --start-sigma."),
    option("--start-sigma", type=click.FloatRange(0, 1, min_open=True), default=None,
           section="Calibration and sampling",
           help="Runs start from the LR latent at this noise level, so calibration (and VaTMP) covers only the steps "
                "that run (default: the model folder's pipeline.json, else 1: every step)."),
    # Old spellings, one more release.
    renamed("--steps", "--grid-steps", "grid_steps", type=click.IntRange(min=1)),
    method_option("--svd-rank", "svd_rank", type=int),
    method_option("--local-rank", "local_rank", type=int),
    method_option("--max-segments", "max_segments", type=int),
    method_option("--rotation-seed", "rotation_seed", type=int),
    method_option("--hadamard-block", "rotation_block", type=int),
    method_option("--wbits-min", "wbits_min", type=int),
    method_option("--wbits-max", "wbits_max", type=int),
    deprecated("--hadamard", "deprecated_hadamard", type=click.Choice(["signed", "plain"]),
               use="-O rotation_seed=none (plain Hadamard)",
               apply=lambda ctx, v: ctx.params.update(method_option=(*ctx.params["method_option"],
                                                                     "rotation_seed=none")) if v == "plain" else None),
    deprecated("--no-hsvd", "deprecated_no_hsvd", is_flag=True, use="-O local_rank=0",
               apply=lambda ctx, v: ctx.params.update(method_option=(*ctx.params["method_option"], "local_rank=0"))),
    deprecated("--no-vasmp", "deprecated_no_vasmp", is_flag=True, use="--wbits N",
               apply=lambda ctx, v: _uniform_at_budget(ctx, "wbits", "--no-vasmp")),
    deprecated("--no-vatmp", "deprecated_no_vatmp", is_flag=True, use="--abits N",
               apply=lambda ctx, v: _uniform_at_budget(ctx, "abits", "--no-vatmp")),
]


def plan_options(f):
    """Apply :data:`PLAN_OPTIONS` to a click command function."""
    for deco in reversed(PLAN_OPTIONS):
        f = deco(f)
    return f


def method_and_config(ctx: click.Context, method: str, raw_options: tuple[str, ...]):
    """The registered method and its validated config from the command line and the model folder."""
    from qdit4sr_export.quant.methods import get_method, make_config

    chosen = get_method(method)
    return chosen, make_config(chosen, _method_options(ctx, chosen, raw_options))


def output_options(what: str, path_type: click.Path):
    """-o/--output, --force and --json, as ``plan`` and ``build`` share them (the engine set folder is required)."""
    def apply(f):
        for deco in reversed([
            option("-o", "--output", type=path_type, required=what == "engine set folder",
                   section="Output", help=f"Write the {what} here" + ("." if what == "engine set folder" else
                                                                         " (default: print the summary only).")),
            option("--force", is_flag=True, section="Output", help=f"Replace an existing {what}."),
            option("--json", "as_json", is_flag=True, section="Output", help="Print the summary as JSON."),
        ]):
            f = deco(f)
        return f
    return apply


def calibration_inputs(ctx: click.Context, chosen, cfg, net, notices: list[str]):
    """Calibration for a plan and where it came from: --calib, else the packaged crops through the model's
    autoencoder, else none (with a notice where the method would have used it)."""
    from qdit4sr_export.quant.calib_images import find_autoencoder_folder, packaged_calibration_folder

    p = ctx.params
    if not chosen.wants_calibration(cfg):
        return None, None
    if p["calib"]:
        return _calibration(p["calib"], p["model"], net, p["calib_count"], p["seed"]), str(p["calib"])
    packaged = packaged_calibration_folder()
    if packaged is not None and not is_preset(p["model"]) and find_autoencoder_folder(p["model"]) is not None:
        return _calibration(str(packaged), p["model"], net, p["calib_count"], p["seed"]), "packaged LR photo crops"
    if chosen.needs_calibration:
        raise UserError(f"method '{chosen.name}' needs calibration data: pass --calib (LR photos or a latents file)")
    notices.append("no calibration data (no --calib, and no vae/ beside the model for the packaged photo crops): "
                   "activation bits are static")
    return None, None


@click.command(cls=Command)
@click.argument("model")
@plan_options
@output_options("plan JSON", click.Path(dir_okay=False))
@click.pass_context
def plan(ctx: click.Context, model, output, force, as_json, **_) -> None:
    """Make a QuantPlan for MODEL (a checkpoint, or a preset name for shape-only accounting).

    Options a method does not have are an error; each method's own defaults apply otherwise. A pipeline folder's
    pipeline.json sets the sampling grid and start sigma that calibration follows (--grid-steps and --start-sigma
    override them).
    """
    is_preset(model)
    check_output(output, force)
    chosen, cfg = method_and_config(ctx, ctx.params["method"], ctx.params["method_option"])
    if not chosen.quantizes:
        raise UserError(f"method '{chosen.name}' makes no plan (it is the unquantized model); "
                        f"`qdit4sr-export build --method {chosen.name}` packages it")
    from qdit4sr_export.compiler.stages import Stages, peak_rss

    stages = Stages()
    notices: list[str] = []
    with stages.stage("load"):
        net = _load_model(model, ctx.params["config"])
    with stages.stage("plan"):
        calibration, source = calibration_inputs(ctx, chosen, cfg, net, notices)
        result = chosen.build(net, cfg, calibration=calibration, progress=not as_json)
    if output is not None:
        with stages.stage("write"):
            result.save(output, overwrite=True)
    stages.close()
    summary = plan_summary(result, net)
    summary["calibration"] = source
    if output is not None:
        summary["output"] = str(output)
    summary["stages"] = stages.to_list()
    summary["peak_rss_mb"] = round(peak_rss() / 2**20, 1)
    summary["notices"] = notices
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for note in notices:
        click.echo(f"notice: {note}", err=True)
    for key, value in summary.items():
        if key != "notices":
            click.echo(f"{key}: {value}")
