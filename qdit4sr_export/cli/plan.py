"""``qdit4sr-export plan MODEL``: make a QuantPlan (Q-DiT4SR or another method) and report its size and compute.

Everything a typo can get wrong (the model path, the method and its options, the output) is checked before
torch loads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from qdit4sr_export.errors import UserError


def _parse_wbits(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--wbits must be 'auto' or an integer in 2..8, got {value!r}") from None


def is_preset(model: str) -> bool:
    """Whether MODEL names a preset (shape-only accounting) rather than a checkpoint; an error if neither."""
    from qdit4sr_export.model.config import PRESETS

    if Path(model).exists():
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


def _method_options(ctx: click.Context, method, raw_options: tuple[str, ...]) -> dict:
    """Config fields from the flags given on the command line (defaults stay the method's own)."""
    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    p = ctx.params
    options: dict = {}
    flag_fields = {"wbits_budget": "wbits_budget", "wbits_min": "wbits_min", "wbits_max": "wbits_max",
                   "abits": "abits", "svd_rank": "svd_rank", "local_rank": "local_rank", "steps": "steps",
                   "max_segments": "max_segments", "rotation_seed": "rotation_seed",
                   "hadamard_block": "rotation_block", "seed": "calib_seed", "start_sigma": "start_sigma"}
    for flag, field in flag_fields.items():
        if flag in given:
            options[field] = p[flag]
    if "wbits" in given:
        bits = _parse_wbits(p["wbits"])
        if bits is None and "wbits_budget" not in method.options():
            raise UserError(f"--wbits auto (VaSMP) does not apply to method '{method.name}'; give bits 2..8")
        options["wbits"] = bits
    if "hadamard" in given and p["hadamard"] == "plain":
        options["rotation_seed"] = None
    if p["no_hsvd"]:
        options["local_rank"] = 0
    if p["no_vasmp"]:
        options["wbits"] = int(round(p["wbits_budget"]))
    if p["no_vatmp"]:
        options["vatmp"] = False
    for item in raw_options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--method-option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = value
    if p.get("model"):  # runs of a pipeline folder follow its trajectory: calibrate and plan on the same one
        from qdit4sr_export.model.folder import pipeline_trajectory

        fields = method.options()
        for key, value in pipeline_trajectory(Path(p["model"])).items():
            if key in fields and key not in options:
                options[key] = value
    return options


def _list_methods() -> str:
    from qdit4sr_export.quant.methods import get_method, method_names

    lines = []
    for name in method_names():
        m = get_method(name)
        opts = ", ".join(f"{k}={v}" for k, v in m.options().items())
        lines.append(f"{name:<10} {m.summary}\n{'':<10} options: {opts}")
    return "\n".join(lines)


def _print_methods(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--list-methods: print the registry and exit before MODEL is required."""
    if value and not ctx.resilient_parsing:
        click.echo(_list_methods())
        ctx.exit()


def _method_help() -> str:
    from qdit4sr_export.quant.methods import method_names

    return f"Quantization method: {', '.join(method_names())} (--list-methods)."


#: Options shared by ``plan`` and ``build`` (the method and its knobs, calibration, the timestep grid).
PLAN_OPTIONS = [
    click.option("--method", default="qdit4sr", help=_method_help()),
    click.option("--list-methods", is_flag=True, is_eager=True, expose_value=False, callback=_print_methods,
                  help="List the methods and their options, then exit."),
    click.option("-O", "--method-option", "method_option", multiple=True, metavar="KEY=VALUE",
                  help="Set any option of the method's config (repeatable), e.g. -O group_size=64."),
    click.option("--config", default=None, help="Preset name or config.json for a checkpoint that carries none."),
    click.option("--wbits", default="auto", help="'auto' (VaSMP at --wbits-budget) or uniform bits 2..8."),
    click.option("--wbits-budget", type=float, default=4.0, help="Average weight bits for VaSMP."),
    click.option("--wbits-min", type=int, default=None, help="Lowest VaSMP bits (default budget-1)."),
    click.option("--wbits-max", type=int, default=None, help="Highest VaSMP bits (default budget+1)."),
    click.option("--abits", type=float, default=4.0,
                  help="Activation bits: the average budget for VaTMP, else static bits."),
    click.option("--svd-rank", type=int, default=32, help="SVD-G rank (FP global branch)."),
    click.option("--local-rank", type=int, default=8, help="SVD-L budget in rank units (0: no SVD-L)."),
    click.option("--calib", type=click.Path(exists=True), default=None,
                  help="Folder of LR images (needs vae/ beside the model) or a latents file."),
    click.option("--calib-count", type=click.IntRange(min=1), default=32, help="Random 128x128 crops from --calib images."),
    click.option("--steps", type=click.IntRange(min=1), default=None,
                  help="Sampling steps of the timestep grid (default: the model folder's pipeline.json, else 40)."),
    click.option("--start-sigma", type=click.FloatRange(0, 1, min_open=True), default=None,
                  help="Calibrated methods: runs start from the LR latent at this sigma, so calibration samples (and "
                       "VaTMP schedules) only the steps that run (default: the model folder's pipeline.json, else 1: "
                       "every step)."),
    click.option("--max-segments", type=int, default=3, help="VaTMP: constant segments per layer."),
    click.option("--hadamard", type=click.Choice(["signed", "plain"]), default="signed",
                  help="signed: Hadamard with seeded random signs; plain: the bare Hadamard (see README)."),
    click.option("--rotation-seed", type=int, default=0, help="Seed of the random signs."),
    click.option("--hadamard-block", type=int, default=None,
                  help="Block-diagonal Hadamard of this power-of-two size, for dimensions without a full construction."),
    click.option("--seed", type=int, default=0, help="Calibration crops and noise."),
    click.option("--no-hsvd", is_flag=True, help="Ablation: SVD-G only (no SVD-L)."),
    click.option("--no-vasmp", is_flag=True, help="Ablation: uniform weight bits at --wbits-budget."),
    click.option("--no-vatmp", is_flag=True, help="Ablation: static activation bits even with calibration data."),
]


def plan_options(f):
    """Apply :data:`PLAN_OPTIONS` to a click command function."""
    for option in reversed(PLAN_OPTIONS):
        f = option(f)
    return f


def method_and_config(ctx: click.Context, method: str, raw_options: tuple[str, ...]):
    """The registered method and its validated config from the command line and the model folder."""
    from qdit4sr_export.quant.methods import get_method, make_config

    chosen = get_method(method)
    return chosen, make_config(chosen, _method_options(ctx, chosen, raw_options))


@click.command()
@click.argument("model")
@plan_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the plan JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def plan(ctx: click.Context, model, method, method_option, config, wbits, wbits_budget, wbits_min, wbits_max, abits,
         svd_rank, local_rank, calib, calib_count, steps, start_sigma, max_segments, hadamard, rotation_seed,
         hadamard_block, seed, no_hsvd, no_vasmp, no_vatmp, output, force, as_json) -> None:
    """Make a QuantPlan for MODEL (a checkpoint, or a preset name for shape-only accounting).

    Flags a method does not have are an error; each method's own defaults apply otherwise. A pipeline folder's
    pipeline.json sets the grid and start sigma that calibration follows (--steps, --start-sigma override).
    """
    is_preset(model)
    check_output(output, force)
    chosen, cfg = method_and_config(ctx, method, method_option)
    if not chosen.quantizes:
        raise UserError(f"method '{method}' makes no plan (it is the unquantized model); "
                        f"`qdit4sr-export build --method {method}` packages it")
    from qdit4sr_export.compiler.stages import Stages, peak_rss

    stages = Stages()
    with stages.stage("load"):
        net = _load_model(model, config)
    with stages.stage("plan"):
        use = calib and chosen.wants_calibration(cfg)
        calibration = _calibration(calib, model, net, calib_count, seed) if use else None
        if chosen.needs_calibration and calibration is None:
            raise UserError(f"method '{method}' needs calibration data: pass --calib (LR photos or a latents file)")
        result = chosen.build(net, cfg, calibration=calibration, progress=not as_json)
    if output is not None:
        with stages.stage("write"):
            result.save(output, overwrite=True)
    stages.close()
    summary = plan_summary(result, net)
    if output is not None:
        summary["output"] = str(output)
    summary["stages"] = stages.to_list()
    summary["peak_rss_mb"] = round(peak_rss() / 2**20, 1)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
