"""One breakdown of what an engine set stores, used by ``build``, ``inspect`` and the storage benchmark.

Every byte of ``weights.bin`` falls in one category (from the manifest's tensor index and its per-layer record of
stored tensors): quantized weight codes, their scales, quantized weights a method keeps in float (TLQ levels),
the FP low-rank branches (SVD-G, SVD-L), rotation and smoothing constants, and unquantized parameters (embeddings,
norms, modulation, the positional table, the unquantized projections, biases). Graphs and pipeline files (the
autoencoder, prompt embeddings, plan, scheduler) are counted apart. The references are the FP model in float32
(every parameter at 4 bytes) and the checkpoint the set was built from, as it lies on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

CATEGORIES = ("codes", "scales", "float_quantized", "low_rank", "rotation", "unquantized")
LABELS = {"codes": "quantized weight codes", "scales": "weight scales",
          "float_quantized": "quantized weights kept in float (TLQ)", "low_rank": "FP low-rank branches (H-SVD)",
          "rotation": "rotation and smoothing constants", "unquantized": "unquantized parameters"}


def _categories(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Tensor name -> category, for the tensors a planned layer stores."""
    owner: dict[str, str] = {}
    for row in manifest.get("quantized_layers", {}).values():
        for name in row["codes"].values():
            owner[name] = "codes" if row["kind"] != "float" else "float_quantized"
        for name in row["scales"].values():
            owner[name] = "scales"
        for name in (row.get("svd_g") or []) + (row.get("svd_l") or []):
            owner[name] = "low_rank"
        if row.get("smooth"):
            owner[row["smooth"]] = "rotation"
    return owner


def _category(name: str, owner: Mapping[str, str]) -> str:
    if name in owner:
        return owner[name]
    if name.startswith("hadamard.") or ".rotation." in name:
        return "rotation"
    return "unquantized"


def size_breakdown(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Bytes by category (weights.bin), graphs, pipeline files, total, and the ratios to the references."""
    owner = _categories(manifest)
    weights = {c: 0 for c in CATEGORIES}
    for t in manifest["weights"]["tensors"]:
        weights[_category(t["name"], owner)] += int(t["bytes"])
    files = {f["path"]: int(f["bytes"]) for f in manifest["files"]}
    weights_file = files.get(manifest["weights"]["file"], 0)
    graphs = sum(b for p, b in files.items() if p.endswith(".onnx") and "/" not in p)
    total = sum(files.values())
    model = manifest.get("model", {})
    fp32 = int(model["parameters"]) * 4 if model.get("parameters") else None
    checkpoint = model.get("checkpoint_bytes")
    out = {"weights": weights, "weights_padding": weights_file - sum(weights.values()), "weights_file": weights_file,
           "graphs": graphs, "pipeline_files": total - weights_file - graphs, "total": total,
           "fp32_bytes": fp32, "checkpoint_bytes": checkpoint,
           "fp32_ratio": round(fp32 / weights_file, 3) if fp32 and weights_file else None,
           "checkpoint_ratio": round(checkpoint / weights_file, 3) if checkpoint and weights_file else None}
    return out


def checkpoint_bytes(model_path: str | Path) -> int | None:
    """Bytes of the FP transformer weights on disk (the file, or the weight files of the folder)."""
    path = Path(model_path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def format_breakdown(b: Mapping[str, Any]) -> list[str]:
    """Terminal lines: weights.bin by category, then graphs, pipeline files, and the references."""
    lines = [f"weights.bin {_mb(b['weights_file'])}:"]
    for c in CATEGORIES:
        if b["weights"][c]:
            share = b["weights"][c] / b["weights_file"] if b["weights_file"] else 0.0
            lines.append(f"  {LABELS[c]:<40}{_mb(b['weights'][c]):>12}  {share:6.1%}")
    lines.append(f"graphs {_mb(b['graphs'])}; pipeline files (autoencoder, prompts, plan) {_mb(b['pipeline_files'])};"
                 f" whole set {_mb(b['total'])}")
    refs = []
    if b["fp32_bytes"]:
        rel = b["fp32_ratio"]
        refs.append(f"FP32 model {_mb(b['fp32_bytes'])} ({rel}x weights.bin)")
    if b["checkpoint_bytes"]:
        refs.append(f"checkpoint on disk {_mb(b['checkpoint_bytes'])} ({b['checkpoint_ratio']}x weights.bin)")
    if refs:
        lines.append("against: " + "; ".join(refs))
    return lines


#: Bytes each variant graph takes per planned layer (measured about 9 KB on dit4sr-small), and for the rest.
GRAPH_BYTES_PER_LAYER = 16 << 10
GRAPH_BYTES_BASE = 4 << 20


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def predicted_engine_bytes(model, plan, grid: int, root: Path | None, *, variants: int = 1,
                           lower_bound: bool = False) -> int:
    """Bytes the engine set of ``model`` (shapes only) will take: float32 unquantized tensors, the positional crop of
    ``grid`` patches, each planned layer's stored bytes (``passes.storage``), graphs and pipeline files.
    ``lower_bound`` (no plan yet): every quantizable linear at packed 4-bit codes with per-row scales, no branches."""
    from qdit4sr_export.model.positions import POS_EMBED_KEY
    from qdit4sr_export.passes.storage import code_bytes, layer_bytes
    from qdit4sr_export.quant.accounting import quantizable_linears

    layers = dict(plan.layers) if plan is not None else {}
    linears = quantizable_linears(model) if lower_bound else {}
    total = 0
    for name, t in model.state_dict().items():
        layer = name[: -len(".weight")] if name.endswith(".weight") else None
        if layer in layers:
            lp = layers[layer]
            total += layer_bytes(lp) + (lp.in_features * 4 if lp.smoothing else 0)
        elif layer in linears:
            out, in_ = linears[layer]
            total += code_bytes(out * in_, 4) + out * 4
        elif name == POS_EMBED_KEY:
            total += grid * grid * t.shape[-1] * 4
        else:
            total += t.numel() * 4
    total += variants * (GRAPH_BYTES_BASE + len(layers) * GRAPH_BYTES_PER_LAYER)
    if root is not None:
        total += sum(folder_bytes(root / rel) for rel in ("vae", "prompt_embeds.safetensors", "scheduler"))
    return total
