"""``qdit4sr-export engines ENGINE_SET``: build the TensorRT engines of a ``--target trt`` engine set in place."""

from __future__ import annotations

from pathlib import Path

import click

from qdit4sr_export.cli.options import Command, list_flag, option, target_lines
from qdit4sr_export.errors import UserError


@click.command(cls=Command)
@click.argument("engine_dir", metavar="ENGINE_SET", type=click.Path(exists=True, file_okay=False, path_type=Path))
@option("-T", "--target-option", "target_option", section="Target", multiple=True, metavar="KEY=VALUE",
              help="Override a profile option of the build (repeatable): max_batch, min_latent_side, opt_latent_side, "
                   "max_latent_side (default: the build's).")
@option("--force", section="Output", is_flag=True,
        help="Rebuild engines the set already has (another TensorRT or GPU).")
@list_flag("--list-targets", "lowering targets, their passes and options", target_lines)
def engines(engine_dir: Path, target_option, force: bool) -> None:
    """Build one TensorRT engine per variant of ENGINE_SET (made with `build --target trt`), where TensorRT runs."""
    from qdit4sr_export.cli.options import key_values
    from qdit4sr_export.compiler.targets import get_target
    from qdit4sr_export.compiler.trt_engines import build_engines, require_tensorrt
    from qdit4sr_export.engine.format import check_files, read_manifest, write_manifest

    manifest = read_manifest(engine_dir)
    check_files(engine_dir, manifest["files"], "quick")
    target = manifest.get("target", {})
    if target.get("name") != "trt":
        raise UserError(f"{engine_dir}: built for target '{target.get('name', 'ort')}'; engines need a set built "
                        "with --target trt")
    if manifest.get("engines") and not force:
        raise UserError(f"{engine_dir}: the set already has engines (TensorRT {manifest['engines']['tensorrt_version']}); "
                        "pass --force to rebuild them")
    require_tensorrt()
    given = key_values(target_option, "-T/--target-option")
    trt = get_target("trt")
    configured = trt.configure(given)
    options = {**trt.upgrade(target["options"]), **{trt.renamed.get(k, k): configured[trt.renamed.get(k, k)]
                                                   for k in given}}
    manifest["engines"] = build_engines(engine_dir, manifest, options)
    for key in ("schema", "version", "tool_version", "files"):
        manifest.pop(key, None)
    write_manifest(engine_dir, manifest)
    click.echo(f"engines: {', '.join(manifest['engines']['files'].values())} (TensorRT "
               f"{manifest['engines']['tensorrt_version']}, compute capability {manifest['engines']['compute_capability']})")
