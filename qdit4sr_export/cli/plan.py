"""``qdit4sr-export plan MODEL``: make a QuantPlan (Q-DiT4SR) and report its size and compute."""

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


def _load_model(model: str, config: str | None):
    from qdit4sr_export.model import build_dit4sr, load_dit4sr
    from qdit4sr_export.model.config import PRESETS

    if model in PRESETS and not Path(model).exists():
        return build_dit4sr(config or model, device="meta")
    if not Path(model).exists():
        raise UserError(f"'{model}' is neither a file or folder nor a preset ({', '.join(sorted(PRESETS))})")
    return load_dit4sr(model, config=config)


def _calibration(calib: str, model_path: str, model, count: int, seed: int):
    from qdit4sr_export.quant.calib_images import latents_from_folder
    from qdit4sr_export.quant.calibration import CalibrationInputs, load_calibration_file

    if Path(calib).is_dir():
        latents = latents_from_folder(calib, model_path, count=count, seed=seed)
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


@click.command()
@click.argument("model")
@click.option("--config", default=None, help="Preset name or config.json for a checkpoint that carries none.")
@click.option("--wbits", default="auto", show_default=True, help="'auto' (VaSMP at --wbits-budget) or uniform bits 2..8.")
@click.option("--wbits-budget", type=float, default=4.0, show_default=True, help="Average weight bits for VaSMP.")
@click.option("--wbits-min", type=int, default=None, help="Lowest VaSMP bits (default budget-1).")
@click.option("--wbits-max", type=int, default=None, help="Highest VaSMP bits (default budget+1).")
@click.option("--abits", type=float, default=4.0, show_default=True,
              help="Activation bits: the average budget for VaTMP, else static bits.")
@click.option("--svd-rank", type=int, default=32, show_default=True, help="SVD-G rank (FP global branch).")
@click.option("--local-rank", type=int, default=8, show_default=True, help="SVD-L budget in rank units (0: no SVD-L).")
@click.option("--calib", default=None, help="Folder of LR images (needs vae/ beside the model) or a latents file.")
@click.option("--calib-count", type=int, default=32, show_default=True, help="Random 128x128 crops from --calib images.")
@click.option("--steps", type=int, default=40, show_default=True, help="Sampling steps of the timestep grid.")
@click.option("--max-segments", type=int, default=3, show_default=True, help="VaTMP: constant segments per layer.")
@click.option("--hadamard", type=click.Choice(["signed", "plain"]), default="signed", show_default=True,
              help="signed: Hadamard with seeded random signs; plain: the bare Hadamard (see README).")
@click.option("--rotation-seed", type=int, default=0, show_default=True, help="Seed of the random signs.")
@click.option("--hadamard-block", type=int, default=None,
              help="Block-diagonal Hadamard of this power-of-two size, for dimensions without a full construction.")
@click.option("--seed", type=int, default=0, show_default=True, help="Calibration crops and noise.")
@click.option("--no-hsvd", is_flag=True, help="Ablation: SVD-G only (no SVD-L).")
@click.option("--no-vasmp", is_flag=True, help="Ablation: uniform weight bits at --wbits-budget.")
@click.option("--no-vatmp", is_flag=True, help="Ablation: static activation bits even with calibration data.")
@click.option("-o", "--output", default=None, help="Write the plan JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def plan(model, config, wbits, wbits_budget, wbits_min, wbits_max, abits, svd_rank, local_rank, calib, calib_count,
         steps, max_segments, hadamard, rotation_seed, hadamard_block, seed, no_hsvd, no_vasmp, no_vatmp, output, force, as_json) -> None:
    """Make a Q-DiT4SR QuantPlan for MODEL (a checkpoint, or a preset name for shape-only accounting)."""
    from qdit4sr_export.quant.qdit4sr import QDiT4SRConfig, make_plan

    if output is not None and Path(output).exists() and not force:
        raise UserError(f"{output} already exists (pass --force to replace it)")
    bits = _parse_wbits(wbits)
    if no_vasmp and bits is None:
        bits = int(round(wbits_budget))
    cfg = QDiT4SRConfig(wbits=bits, wbits_budget=wbits_budget, wbits_min=wbits_min, wbits_max=wbits_max,
                        abits=abits, svd_rank=svd_rank, local_rank=0 if no_hsvd else local_rank,
                        vatmp=not no_vatmp, max_segments=max_segments,
                        rotation_seed=rotation_seed if hadamard == "signed" else None,
                        rotation_block=hadamard_block, steps=steps,
                        calib_seed=seed)
    net = _load_model(model, config)
    calibration = _calibration(calib, model, net, calib_count, seed) if calib and not no_vatmp else None
    result = make_plan(net, cfg, calibration=calibration, progress=not as_json)
    if output is not None:
        result.save(output, overwrite=True)
    summary = plan_summary(result, net)
    if output is not None:
        summary["output"] = str(output)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
