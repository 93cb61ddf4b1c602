"""Write an engine set (format: :mod:`qdit4sr_export.engine.format`): variant graphs sharing one external
weights file, pipeline extras, and the manifest.

``weights.bin`` holds every parameter-like initializer once (64-byte aligned, sorted by name), referenced by all
variants as ONNX external data with relative paths so the folder can move; only shape constants and scalars stay
inside the graphs. The folder is written under a temporary name beside the destination and renamed into place,
so a failed build leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx_ir as ir

from qdit4sr_export.engine.format import ALIGN, WEIGHTS_FILE, TensorEntry, write_manifest
from qdit4sr_export.errors import UserError
from qdit4sr_export.report.progress import progress_bar

#: Float initializers at most this large (scalars) and every INT64 one (shapes, axes) stay inside each graph.
INLINE_BYTES = 16


def stored_in_weights(t: ir.TensorProtocol) -> bool:
    """Whether an initializer goes to weights.bin (parameters, codes, scales, branches) or stays inline."""
    return t.dtype != ir.DataType.INT64 and t.nbytes > INLINE_BYTES


def shared_initializers(models: Sequence[ir.Model]) -> dict[str, ir.TensorProtocol]:
    """Parameter-like initializers of all variants by name; the same name must hold the same bytes everywhere."""
    tensors: dict[str, ir.TensorProtocol] = {}
    for model in models:
        for name, value in model.graph.initializers.items():
            t = value.const_value
            if t is None or not stored_in_weights(t):
                continue
            seen = tensors.get(name)
            if seen is None:
                tensors[name] = t
            elif seen is not t and seen.tobytes() != t.tobytes():
                raise RuntimeError(f"initializer {name!r} differs between variants")
    return dict(sorted(tensors.items()))


def write_weights(folder: Path, tensors: Mapping[str, ir.TensorProtocol], *,
                  progress: bool = False) -> dict[str, TensorEntry]:
    """Write ``weights.bin`` one tensor at a time (a lazy tensor is computed as it is written, then dropped);
    returns its index, name -> entry."""
    layout = {}
    bar = progress_bar(total=sum(t.nbytes for t in tensors.values()), desc="write weights.bin", unit="B", unit_scale=True,
               enabled=progress)
    with open(folder / WEIGHTS_FILE, "wb") as f, bar:
        for name, t in tensors.items():
            pad = (-f.tell()) % ALIGN
            f.write(b"\0" * pad)
            data = t.tobytes()
            if len(data) != t.nbytes:
                raise RuntimeError(f"tensor {name!r} produced {len(data)} bytes, {t.nbytes} expected")
            layout[name] = TensorEntry(name, t.dtype.name, tuple(int(d) for d in t.shape), f.tell(), len(data))
            f.write(data)
            del data
            bar.update(t.nbytes)
    return layout


def externalize(model: ir.Model, layout: Mapping[str, TensorEntry], folder: Path) -> None:
    """Point the model's stored initializers at ``weights.bin`` (relative location)."""
    for name, value in model.graph.initializers.items():
        if name not in layout:
            continue
        t = value.const_value
        e = layout[name]
        value.const_value = ir.ExternalTensor(WEIGHTS_FILE, e.offset, e.nbytes, t.dtype, shape=t.shape, name=name,
                                              base_dir=str(folder))


def strip_exporter_metadata(model: ir.Model) -> None:
    """Drop the torch exporter's per-node metadata (stack traces, scopes: about 2 MB per variant file and as much
    again in every ONNX Runtime session), keeping the ``qdit4sr.*`` annotations."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in [k for k in node.metadata_props if not k.startswith("qdit4sr.")]:
            del node.metadata_props[key]


def io_specs(model: ir.Model) -> dict[str, list[dict[str, Any]]]:
    """Graph inputs and outputs: name, element type, dims (symbolic dims by name)."""
    def spec(v: ir.Value) -> dict[str, Any]:
        dims = [d if isinstance(d, int) else str(d) for d in (v.shape.dims if v.shape is not None else ())]
        return {"name": v.name, "dtype": v.dtype.name if v.dtype is not None else None, "shape": dims}
    return {"inputs": [spec(v) for v in model.graph.inputs], "outputs": [spec(v) for v in model.graph.outputs]}


def check_destination(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise UserError(f"{output} already exists (pass --force to replace it)")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a folder")


def check_disk(output: Path, needed: int) -> None:
    """Fail early, before writing anything, when the destination's file system lacks ``needed`` bytes."""
    parent = output.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot create {output}: folder {parent} does not exist")
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise UserError(f"not enough disk space for {output}: needs about {needed / 1e6:.1f} MB, "
                        f"{free / 1e6:.1f} MB free")


def write_engine_set(output: str | Path, variants: Sequence[tuple[str, ir.Model]],
                     manifest: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
                     extras: Callable[[Path], None], *, force: bool = False, progress: bool = False) -> Path:
    """Write the engine set atomically: temp folder, then rename (replacing ``output`` when ``force``).
    ``manifest`` may be a function, called after the weights are written."""
    output = Path(output)
    check_destination(output, force)
    tensors = shared_initializers([m for _, m in variants])
    check_disk(output, sum(t.nbytes for t in tensors.values()) + (64 << 20))
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        layout = write_weights(tmp, tensors, progress=progress)
        if callable(manifest):
            manifest = manifest()
        for file, model in variants:
            externalize(model, layout, tmp)
            strip_exporter_metadata(model)
            ir.save(model, tmp / file)
        extras(tmp)
        write_manifest(tmp, {**manifest, "weights": {"file": WEIGHTS_FILE,
                                                     "tensors": [e.to_dict() for e in layout.values()]}})
        for path in tmp.rglob("*"):  # temp files are created private; an engine set is meant to be shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old)
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
