"""``qdit4sr-export info MODEL``: config, parameter counts by part, stored dtypes and linear layers."""

from __future__ import annotations

import json

import click

from qdit4sr_export.cli.options import Command, option


@click.command(cls=Command)
@click.argument("model")
@option("--config", "config", section="Input", default=None, metavar="NAME|FILE",
        help="Model config (a preset name or config.json) for a .safetensors/.pt file that carries none (default: "
             "the checkpoint's own).")
@option("--json", "as_json", section="Output", is_flag=True, help="Print the summary as JSON.")
@option("--no-layers", section="Output", is_flag=True, help="Leave out the per-layer list (text output).")
def info(model: str, config: str | None, as_json: bool, no_layers: bool) -> None:
    """Describe MODEL (a preset name or a checkpoint) without loading its weights."""
    from qdit4sr_export.cli.plan import is_preset

    is_preset(model)  # a path that does not exist and is no preset: an error before torch loads
    from qdit4sr_export.model.summary import format_summary, summarize

    summary = summarize(model, config=config)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary, layers=not no_layers))
