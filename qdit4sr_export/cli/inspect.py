"""``qdit4sr-export inspect ENGINE_DIR|PLAN``: bits, ranks, schedules, bytes, totals, variants and plots."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qdit4sr_export.cli.options import Command, option
from qdit4sr_export.errors import UserError


def _variance_layer(plan) -> str:
    """The layer whose activation variance changes most over the trajectory (the most telling Fig. 6 plot)."""
    import numpy as np

    measured = {n: [x for x in lp.act_variance if x is not None] for n, lp in plan.layers.items() if lp.act_variance}
    spread = {n: float(np.log(max(v)) - np.log(max(min(v), 1e-30))) for n, v in measured.items() if v}
    if not spread:
        raise UserError("the plan has no activation variances (VaTMP did not run): no variance plot")
    return max(spread, key=spread.get)


@click.command(cls=Command)
@click.argument("target", metavar="ENGINE_DIR|PLAN", type=click.Path(exists=True))
@option("--latent-side", section="Input", type=click.IntRange(min=2), default=64,
        help="Latent side for the bit-operation count (64: a 512x512 output).")
@option("--plots", "plots_dir", section="Output", type=click.Path(file_okay=False), default=None,
        help="Write PNG plots to this folder (default: none; needs the plots extra).")
@option("--layer", section="Output", default=None,
        help="Layer of the activation-variance plot (default: the most varying).")
@option("--json", "as_json", section="Output", is_flag=True, help="Print the report as JSON.")
@option("--no-layers", section="Output", is_flag=True, help="Leave out the per-layer table (text output).")
def inspect(target, plots_dir, layer, latent_side, as_json, no_layers) -> None:
    """Describe an engine set or a QuantPlan file."""
    from qdit4sr_export.report.inspect import format_report, load_target, report

    plan, manifest = load_target(target)
    rep = report(plan, manifest, latent_side=latent_side, target=target)
    if plots_dir:
        if plan is None:
            raise UserError(f"{target}: an FP engine set has no plan to plot")
        from qdit4sr_export.report.plots import plot_abits_heatmap, plot_act_variance, plot_weight_bits

        folder = Path(plots_dir)
        runs = rep["plan"]["runs"]
        written = [plot_weight_bits(plan, folder / "weight_bits.png")]
        try:
            written.append(plot_abits_heatmap(plan, folder / "abits_heatmap.png", runs=runs))
            chosen = layer or _variance_layer(plan)
            written.append(plot_act_variance(plan, chosen, folder / "act_variance.png", runs=runs))
        except UserError as exc:
            if layer:
                raise
            rep.setdefault("notices", []).append(str(exc))
        rep["plots"] = [str(p) for p in written]
    if as_json:
        click.echo(json.dumps(rep, indent=1))
        return
    click.echo(format_report(rep, layers=not no_layers))
    for note in rep.get("notices", []):
        click.echo(f"notice: {note}", err=True)
    for path in rep.get("plots", []):
        click.echo(f"plot: {path}")
