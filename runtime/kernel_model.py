"""The DiT4SR module the triton backend runs, built from an engine set: no checkpoint, no re-quantizing.

Every quantized layer listed in the manifest (``quantized_layers``: stored codes and scales per weight bit
width, clip, groups, rotation, smoothing, H-SVD factors, bias, all by name in ``weights.bin``) becomes a
:class:`KernelLinear`; every other parameter is loaded from ``weights.bin`` by its model name. Linears that
the exporter pruned (their outputs never reach the model output, e.g. ``to_k_control``) are
:class:`DeadLinear` and other pruned parameters are NaN (a use would surface as a non-finite output, which the
pipeline refuses). Anything the kernels do not cover is refused here, before a step runs, naming the layer.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from qdit4sr_export.plugins.activation_spec import ActivationSpec
from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
from qdit4sr_export.plugins.weight_spec import WeightSpec
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.kernel_linear import DeadLinear, EpilogueTerms, FloatWeightGemm, KernelLinear
from torch import nn

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.model.transformer import DiT4SRTransformer

KINDS = ("int", "grouped", "float")


class WeightReader:
    """Tensors of ``weights.bin`` by name as torch tensors in process memory (one copy, made once: the
    interpreter writes its arguments back, which a read-only map would not allow)."""

    def __init__(self, engine: EngineSet) -> None:
        self.weights = engine.weights
        self.folder = engine.folder

    def __contains__(self, name: str) -> bool:
        return name in self.weights

    def get(self, name: str | None, layer: str) -> torch.Tensor | None:
        if name is None:
            return None
        if name not in self.weights:
            raise UserError(f"{self.folder}: layer '{layer}' needs tensor '{name}', which weights.bin lacks")
        return torch.from_numpy(np.array(self.weights.array(name)))


def _plan_tensors(engine: EngineSet) -> Mapping[str, torch.Tensor]:
    """The plan's tensor sidecar (learned rotations keep their int64 permutations there, not in weights.bin)."""
    from qdit4sr_export.quant.plan import QuantPlan

    path = engine.plan_path
    return QuantPlan.load(path).tensors if path is not None and path.is_file() else {}


def _rotation(row: Mapping[str, Any], layer: str, engine: EngineSet, cache: dict):
    from qdit4sr_export.quant.simulate import make_rotation

    spec = row.get("rotation")
    if spec is None:
        return None
    if dict(spec).get("kind", "hadamard") != "hadamard" and "tensors" not in cache:
        cache["tensors"] = _plan_tensors(engine)
    return make_rotation(spec, layer, cache.get("tensors", {}))


def _variant_bits(engine: EngineSet, layer: str) -> set[tuple[int, int | None]]:
    return {v.layers[layer] for v in engine.variants if layer in v.layers}


def kernel_linear(engine: EngineSet, reader: WeightReader, layer: str, row: Mapping[str, Any], out_features: int,
                  in_features: int, device: torch.device, cache: dict) -> KernelLinear:
    """One layer's KernelLinear; a path the kernels do not cover is a UserError naming the layer."""
    kind = row.get("kind")
    if kind not in KINDS:
        raise UserError(f"layer '{layer}': stored weight kind {kind!r} has no triton path (known: {', '.join(KINDS)})")
    get = lambda name: reader.get(name, layer)
    g_names = row.get("svd_g") or (None, None)
    l_names = row.get("svd_l") or (None, None)
    group = row.get("group_size")
    try:
        spec = ActivationSpec(in_features, _rotation(row, layer, engine, cache), row.get("clip", "gaussian"), group,
                              get(row.get("smooth")), get(g_names[0]), get(l_names[0]), name=layer)
        gemms = {}
        for bits, codes_name in row["codes"].items():
            bits = int(bits)
            scale = get(row["scales"].get(str(bits))) if kind != "float" else None
            codes = get(codes_name)
            terms = dict(svd_g_a=get(g_names[1]), svd_l_u=get(l_names[1]), bias=get(row.get("bias")))
            if kind == "float":  # float-stored weight (K, N): the torch fallback of the GEMM
                gemms[bits] = FloatWeightGemm(codes, EpilogueTerms(out_features, **terms), device)
            else:
                w = WeightSpec(codes, scale, bits, in_features, out_features, group if kind == "grouped" else None,
                               **terms, name=layer)
                gemms[bits] = LowbitGemm(w, device)
        for wbits, abits in _variant_bits(engine, layer):
            if wbits not in gemms:
                raise UserError(f"a variant runs it at {wbits} weight bits, which weights.bin does not store")
            if abits is not None and abits <= 4 and in_features % 2:
                raise UserError(f"{abits}-bit activation codes pack two per byte; {in_features} channels is odd")
        return KernelLinear(layer, spec, gemms, out_features, device)
    except UserError as exc:
        msg = str(exc)
        raise UserError(msg if f"'{layer}'" in msg else f"layer '{layer}': {msg}") from None


def build_kernel_model(engine: EngineSet, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> tuple[DiT4SRTransformer, dict[str, KernelLinear]]:
    """The engine set's DiT4SR with kernel linears, on ``device`` in ``dtype`` (kernels compute in float32)."""
    device = torch.device(device)
    rows = engine.quantized_layers
    if not rows:
        raise UserError(f"{engine.folder}: an FP engine set (no quantized layers); the triton backend runs "
                        "quantized engine sets (use --backend ort for this one)")
    cfg = DiT4SRConfig.from_dict(engine.config(), source=f"{engine.folder}/manifest.json")
    with torch.device("meta"):
        model = DiT4SRTransformer(cfg)
    modules = dict(model.named_modules())
    reader = WeightReader(engine)
    layers: dict[str, KernelLinear] = {}
    cache: dict = {}
    for name, module in list(modules.items()):
        if not isinstance(module, nn.Linear):
            continue
        parent, _, child = name.rpartition(".")
        if name in rows:
            new = kernel_linear(engine, reader, name, rows[name], module.out_features, module.in_features, device, cache)
            layers[name] = new
        elif f"{name}.weight" not in reader:
            new = DeadLinear(module.in_features, module.out_features)
        else:
            continue
        setattr(modules[parent], child, new)
    state = {}
    for key, value in model.state_dict().items():
        # A parameter the exporter pruned feeds nothing that reaches the output; NaN makes any use loud (the
        # pipeline refuses non-finite outputs) instead of silently wrong.
        state[key] = reader.get(key, key).to(device=device, dtype=dtype) if key in reader else \
            torch.full(value.shape, float("nan"), device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), layers
