"""A model summary for ``qdit4sr-export info``: config, parameter counts by part, stored dtypes, linear layers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.checkpoint import TensorSpec, open_checkpoint
from qdit4sr_export.model.config import PRESETS, resolve_config
from qdit4sr_export.model.loading import check_state_specs, checkpoint_config
from qdit4sr_export.model.parts import PARTS, list_linears, parameter_part
from qdit4sr_export.model.transformer import build_dit4sr


def summarize(model: str | Path, *, config: Any = None) -> dict[str, Any]:
    """Summarise a preset name or a checkpoint without loading its weights (shapes and dtypes only)."""
    text = str(model)
    if text in PRESETS and not Path(text).exists():
        cfg = resolve_config(config if config is not None else text)
        meta = build_dit4sr(cfg, device="meta")
        specs = {k: TensorSpec(tuple(v.shape), "F32") for k, v in meta.state_dict().items()}
        source, fmt = text, "preset"
    else:
        if not Path(text).exists():
            raise UserError(f"'{text}' is neither a file or folder nor a preset ({', '.join(sorted(PRESETS))})")
        ckpt = open_checkpoint(model)
        cfg = checkpoint_config(ckpt, config)
        meta = build_dit4sr(cfg, device="meta")
        check_state_specs(meta, ckpt.specs, ckpt.path)
        specs, source, fmt = ckpt.specs, str(ckpt.path), ckpt.format

    param_names = [name for name, _ in meta.named_parameters()]
    by_part = Counter({part: 0 for part in PARTS})
    by_dtype: Counter[str] = Counter()
    for name in param_names:
        n = specs[name].numel
        by_part[parameter_part(name)] += n
        by_dtype[specs[name].dtype] += n
    linears = list_linears(meta)
    in_blocks = [lin for lin in linears if lin.in_blocks]
    buffers = {name: list(buf.shape) for name, buf in meta.named_buffers()}
    return {
        "source": source,
        "format": fmt,
        "config": cfg.to_dict(),
        "parameters": {"total": sum(by_part.values()), **dict(by_part)},
        "parameter_dtypes": dict(sorted(by_dtype.items())),
        "buffers": {name: {"shape": shape, "stored": name in specs and fmt != "preset"} for name, shape in buffers.items()},
        "linears": {
            "total": len(linears),
            "in_transformer_blocks": len(in_blocks),
            "in_plus_out_sum_in_blocks": sum(lin.in_features + lin.out_features for lin in in_blocks),
            "weight_values_in_blocks": sum(lin.in_features * lin.out_features for lin in in_blocks),
        },
        "linear_layers": [
            {"name": lin.name, "in_features": lin.in_features, "out_features": lin.out_features,
             "bias": lin.bias, "part": lin.part}
            for lin in linears
        ],
    }


def format_summary(summary: dict[str, Any], *, layers: bool = True) -> str:
    """Human-readable text of :func:`summarize`'s result."""
    p = summary["parameters"]
    lines = [f"model: {summary['source']} ({summary['format']})", "config:"]
    lines += [f"  {k}: {v}" for k, v in summary["config"].items()]
    lines.append("parameters:")
    lines.append(f"  {'total':<24}{p['total']:>16,}")
    lines += [f"  {part:<24}{p[part]:>16,}" for part in PARTS]
    lines.append("stored dtypes (parameters):")
    lines += [f"  {dt:<24}{n:>16,}" for dt, n in summary["parameter_dtypes"].items()]
    lin = summary["linears"]
    lines.append(
        f"linear layers: {lin['total']} in all, {lin['in_transformer_blocks']} in transformer_blocks "
        f"(in+out sum {lin['in_plus_out_sum_in_blocks']:,}, {lin['weight_values_in_blocks']:,} weight values)"
    )
    if layers:
        width = max(len(row["name"]) for row in summary["linear_layers"])
        for row in summary["linear_layers"]:
            shape = f"{row['out_features']}x{row['in_features']}"
            lines.append(f"  {row['name']:<{width}}  {shape:>11}  {row['part']}")
    return "\n".join(lines)
