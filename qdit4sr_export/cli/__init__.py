"""The ``qdit4sr-export`` command line: a click group whose commands live one per module.

Command modules import torch, onnx and diffusers inside their functions, after the arguments and paths are
checked, so a mistyped command answers in a fraction of a second."""

from __future__ import annotations

import logging
import os
import sys

# GNU OpenMP worker threads spin while they wait. On a machine whose few cores are shared with other jobs, a spinning
# thread burns the time slice its partner needs: LAPACK (eigh, SVD) ran 10-20x slower with 2 threads on a busy
# 2-core machine (measured; bench/full_size.py). Sleeping waits cost little when the machine is idle. Set before
# torch loads the OpenMP runtime; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from qdit4sr_export import __version__
from qdit4sr_export.errors import UserError


class _Group(click.Group):
    """Turns :class:`UserError` and a command's usage errors (a missing argument, a path that does not exist)
    into a one-line ``error: ...`` on stderr and exit status 2 (Ctrl-C: exit 130)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except click.UsageError as exc:
            command = f"{exc.ctx.command_path} " if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()} (see {command}--help)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # outputs are written under temporary names and renamed at the end
            click.echo("error: interrupted; nothing was written (partial outputs removed)", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="qdit4sr-export")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def main(verbose: bool) -> None:
    """Quantize DiT4SR super-resolution transformers and export them for deployment."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


def _register() -> None:
    from qdit4sr_export.cli.build import build
    from qdit4sr_export.cli.compare import compare
    from qdit4sr_export.cli.engines import engines
    from qdit4sr_export.cli.info import info
    from qdit4sr_export.cli.inspect import inspect
    from qdit4sr_export.cli.plan import plan
    from qdit4sr_export.cli.run import run

    main.add_command(info)
    main.add_command(plan)
    main.add_command(build)
    main.add_command(run)
    main.add_command(compare)
    main.add_command(inspect)
    main.add_command(engines)


_register()
