"""``qdit4sr-export engines ENGINE_SET``: build the TensorRT engines of a ``--target trt`` engine set in place."""

from __future__ import annotations

from pathlib import Path

import click

from qdit4sr_export.errors import UserError


@click.command()
@click.argument("engine_dir", metavar="ENGINE_SET", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-T", "--target-option", "target_option", multiple=True, metavar="KEY=VALUE",
              help="Override a profile option of the build (max_batch, min_side, opt_side, max_side).")
@click.option("--force", is_flag=True, help="Rebuild engines the set already has (another TensorRT or GPU).")
def engines(engine_dir: Path, target_option, force: bool) -> None:
    """Build one TensorRT engine per variant of ENGINE_SET (made with `build --target trt`), where TensorRT runs."""
    from qdit4sr_export.cli.build import _key_values
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
    given = {k.replace("-", "_"): v for k, v in _key_values(target_option, "--target-option").items()}
    configured = get_target("trt").configure(given)
    options = {**target["options"], **{k: configured[k] for k in given}}
    manifest["engines"] = build_engines(engine_dir, manifest, options)
    for key in ("schema", "version", "tool_version", "files"):
        manifest.pop(key, None)
    write_manifest(engine_dir, manifest)
    click.echo(f"engines: {', '.join(manifest['engines']['files'].values())} (TensorRT "
               f"{manifest['engines']['tensorrt_version']}, compute capability {manifest['engines']['compute_capability']})")
