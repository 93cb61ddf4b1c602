"""LowerOrtPass: real low-bit storage and integer compute for ONNX Runtime, per annotated MatMul.

For each planned linear (tagged by AnnotateWeightBitsPass, bits set by SplitTimestepVariantsPass) the
residual weight initializer is quantized exactly as the simulation does (``quantize_weight``) and:

- ``int`` path (per-token activations, integer-grid weights): activations quantized per token at the
  scheduled bits to uint8 (zero point 128), weights stored as packed INT4 (<= 4 bits, Cast to int8 in the
  graph) or INT8 (UINT8 + 128 at 8 bits); ``com.microsoft.MatMulIntegerToFloat`` multiplies the integer product
  by the per-channel weight scale in the GEMM's epilogue, then one Mul applies the per-token scale.
- ``dequant`` path (float activations this step, or channel groups): weights stored as INT4/INT8 codes,
  ``DequantizeLinear`` (per channel, or blocked per group), activations fake-quantized in float.
- ``float`` path (TLQ's log levels, which have no ONNX integer type): the quantized weight stored in float32,
  activations fake-quantized in float. Weights a method stored on its integer grid (GPTQ) are stored as codes and
  scales like any other.

Softmax, norms and the H-SVD branches stay in float. Quantized weights go through a shared ``WeightStore``
so every variant of a build references the very same tensors (stored once in the engine set); they are lazy,
quantized when the engine set is written.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.passes import InPlacePass, PassResult
from onnx_ir.passes.common import RemoveUnusedNodesPass
from qdit4sr_export.passes.graph_edit import (
    ABITS_KEY,
    LAYER_KEY,
    WBITS_KEY,
    Emitter,
    annotated_matmuls,
    constant,
    replace_output,
)
from qdit4sr_export.passes.lazy import LayerCache, float_weight, lazy
from qdit4sr_export.passes.quant_ops import ZERO_POINT, emit_fake_quant, emit_uint8_codes
from qdit4sr_export.passes.registry import register_pass

from qdit4sr_export.quant.gaussian import quantize_weight
from qdit4sr_export.quant.plan import QuantPlan
from qdit4sr_export.quant.simulate import quantize_residual

LOWERING_KEY = "qdit4sr.lowering"
LOWERED_KEY = "qdit4sr.lowered_layer"
#: ONNX Runtime's contrib-op domain (MatMulIntegerToFloat).
MS_DOMAIN = "com.microsoft"


@dataclass
class LayerWeights:
    """One layer's stored quantized weight at one bit-width: ``kind`` int | grouped | float."""

    kind: str
    codes: ir.Tensor
    scale: ir.Tensor | None = None


@dataclass
class WeightStore:
    """Quantized weights by (layer, bits), shared across the variants of one build. Codes and scales are lazy
    tensors of known type and shape, quantized from the residual when first written (once per layer and bits)."""

    entries: dict[tuple[str, int], LayerWeights] = field(default_factory=dict)
    cache: LayerCache = field(default_factory=LayerCache, repr=False, compare=False)

    def get(self, plan: QuantPlan, layer: str, bits: int, residual: np.ndarray | ir.TensorProtocol) -> LayerWeights:
        key = (layer, bits)
        if key not in self.entries:
            quantize = functools.partial(self.cache.get, key,
                                         lambda: _quantize(plan, layer, bits, float_weight(residual).numpy()))
            self.entries[key] = _lazy_weights(plan, layer, bits, quantize)
        return self.entries[key]


def _stored_kind(plan: QuantPlan, layer: str, bits: int) -> tuple[str, ir.DataType]:
    """How ``_quantize`` stores a layer at ``bits``: kind (int | grouped | float) and the codes' type."""
    lp = plan.layers[layer]
    on_grid = lp.stored_weight and f"{layer}.weight_scale.{bits}" in plan.tensors
    if lp.weight_format != "int" or (lp.stored_weight and not on_grid):
        return "float", ir.DataType.FLOAT
    code = ir.DataType.UINT8 if bits == 8 else ir.DataType.INT4 if bits <= 4 else ir.DataType.INT8
    return ("int" if lp.group_size is None else "grouped"), code


def _lazy_weights(plan: QuantPlan, layer: str, bits: int, quantize) -> LayerWeights:
    """LayerWeights whose tensors ``quantize()`` computes when they are read."""
    lp = plan.layers[layer]
    kind, code = _stored_kind(plan, layer, bits)
    codes = lazy(f"{layer}.wq{bits}", code, (lp.in_features, lp.out_features), lambda: quantize().codes)
    if kind == "float":
        return LayerWeights(kind, codes)
    scale_shape = (lp.out_features,) if kind == "int" else (lp.in_features // lp.group_size, lp.out_features)
    return LayerWeights(kind, codes, lazy(f"{layer}.wscale{bits}", ir.DataType.FLOAT, scale_shape,
                                          lambda: quantize().scale))


def _code_tensor(codes: torch.Tensor, bits: int, name: str) -> ir.Tensor:
    """INT4 (packed) up to 4 bits, INT8 up to 7 bits, UINT8 with offset 128 at 8 bits.

    ONNX Runtime's AVX2 uint8 x int8 kernel sums pairs of products in int16 and saturates once
    2 * 255 * |w| > 32767 (measured: wrong results with full-range int8 weights); weights of at most 7 bits
    (|w| <= 63) are safe, and 8-bit weights use the exact uint8 x uint8 kernel with zero point 128.
    """
    c = codes.numpy().astype(np.int16)
    if bits == 8:
        return ir.tensor(np.ascontiguousarray((c + ZERO_POINT).astype(np.uint8)), name=name)
    dtype = ir.DataType.INT4 if bits <= 4 else ir.DataType.INT8
    return ir.tensor(np.ascontiguousarray(c.astype(np.int8)), dtype=dtype, name=name)


def stored_codes(plan: QuantPlan, layer: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 scales (out, groups)) of a weight a method stored in the plan on its integer grid
    (GPTQ: ``<layer>.weight.<bits>`` = codes x ``<layer>.weight_scale.<bits>`` per row and group; the codes
    themselves when stored as int8)."""
    lp = plan.layers[layer]
    stored = plan.tensors[f"{layer}.weight.{bits}"]
    scales = plan.tensors[f"{layer}.weight_scale.{bits}"].float()
    g = lp.group_size or lp.in_features
    m = 2 ** (bits - 1) - 1
    if stored.dtype == torch.int8:
        if stored.numel() and (int(stored.max()) > m or int(stored.min()) < -m):  # no int8 abs(-128)
            raise ir.passes.PassError(f"layer '{layer}': stored codes exceed the {bits}-bit grid")
        return stored, scales
    w = stored.float()
    codes = torch.round(w / scales.repeat_interleave(g, dim=1))
    if not torch.equal(codes * scales.repeat_interleave(g, dim=1), w) or codes.abs().max() > m:
        raise ir.passes.PassError(f"layer '{layer}': stored weight is not on its {bits}-bit grid")
    return codes.to(torch.int8), scales


def _quantize(plan: QuantPlan, layer: str, bits: int, residual: np.ndarray) -> LayerWeights:
    lp = plan.layers[layer]
    w = torch.from_numpy(np.array(residual, dtype=np.float32))
    on_grid = lp.stored_weight and f"{layer}.weight_scale.{bits}" in plan.tensors
    if lp.weight_format != "int" or (lp.stored_weight and not on_grid):
        q = plan.tensors[f"{layer}.weight.{bits}"] if lp.stored_weight else quantize_residual(w, lp, bits)
        return LayerWeights("float", ir.tensor(np.ascontiguousarray(q.float().T.numpy()), name=f"{layer}.wq{bits}"))
    out, in_ = w.shape
    g = lp.group_size
    if on_grid:
        codes, scale = stored_codes(plan, layer, bits)
    elif g is None:
        qw = quantize_weight(w, bits, clip=lp.clip)
        codes, scale = qw.codes, qw.scale
    else:
        qw = quantize_weight(w.reshape(-1, g), bits, clip=lp.clip)
        codes, scale = qw.codes.reshape(out, in_), qw.scale.reshape(out, in_ // g)
    kind = "int" if g is None else "grouped"
    scale = scale[:, 0] if g is None else scale.T
    return LayerWeights(kind, _code_tensor(codes.T, bits, f"{layer}.wq{bits}"),
                        ir.tensor(np.ascontiguousarray(scale.numpy()), name=f"{layer}.wscale{bits}"))


def _zero_points(scale: ir.Tensor, kind: str) -> ir.Tensor:
    """DequantizeLinear wants a zero point shaped like its scale."""
    return ir.tensor(np.full(scale.shape.numpy(), ZERO_POINT, np.uint8))


@register_pass("lower-ort",
               "Lower quantized linears to ONNX Runtime integer GEMMs with packed INT4/INT8 weights",
               takes=("plan", "store"))
class LowerOrtPass(InPlacePass):
    """Replace every annotated MatMul by its quantized arithmetic (see module doc)."""

    def __init__(self, plan: QuantPlan, store: WeightStore | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.store = store if store is not None else WeightStore()
        self.paths: Counter = Counter()

    def requires(self, model: ir.Model) -> None:
        for node in annotated_matmuls(model.graph):
            if ABITS_KEY not in node.metadata_props or "," in node.metadata_props.get(WBITS_KEY, ","):
                raise ir.passes.PreconditionError(
                    f"MatMul of layer '{node.metadata_props[LAYER_KEY]}' has no single variant's bits; "
                    "run SplitTimestepVariantsPass first")

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        quantized: dict[tuple, tuple[ir.Value, ir.Value]] = {}
        self.paths.clear()
        for node in annotated_matmuls(graph):
            self._lower(graph, node, quantized)
        if self.paths["int"]:
            graph.opset_imports.setdefault(MS_DOMAIN, 1)
        RemoveUnusedNodesPass()(model)
        return PassResult(model, bool(self.paths))

    def _lower(self, graph: ir.Graph, mm: ir.Node, quantized: dict) -> None:
        layer = mm.metadata_props[LAYER_KEY]
        lp = self.plan.layers[layer]
        wbits = int(mm.metadata_props[WBITS_KEY])
        raw = mm.metadata_props[ABITS_KEY]
        abits = None if raw == "none" else int(raw)
        transpose = mm.inputs[1].producer()
        weight_value = transpose.inputs[0] if transpose is not None and transpose.op_type == "Transpose" else None
        if weight_value is None or weight_value.const_value is None:
            raise ir.passes.PassError(f"layer '{layer}': MatMul weight is not Transpose(initializer)")
        weights = self.store.get(self.plan, layer, wbits, weight_value.const_value)
        z = mm.inputs[0]
        em = Emitter(graph, mm, f"{layer}/{mm.name}/q")
        codes = constant(graph, weights.codes.name, weights.codes)
        if weights.kind == "int" and abits is not None:
            key = (id(z), abits, lp.clip)
            if key not in quantized:
                quantized[key] = emit_uint8_codes(em, z, abits, lp.clip, lp.in_features)
            a_codes, a_scale = quantized[key]
            zp = em.const("quant.zero_point_u8", np.array(ZERO_POINT, np.uint8))
            inputs = [a_codes, codes, em.const("quant.one", np.array(1.0, np.float32)),
                      constant(graph, weights.scale.name, weights.scale), zp]
            if weights.codes.dtype == ir.DataType.UINT8:
                inputs.append(zp)
            elif weights.codes.dtype == ir.DataType.INT4:
                inputs[1] = em.op("Cast", [codes], {"to": ir.DataType.INT8})
            # (codes - 128) (w - w_zp) * (1 * weight scale per channel), then the per-token activation scale
            y = em.op("MatMulIntegerToFloat", inputs, domain=MS_DOMAIN)
            y = em.op("Mul", [y, a_scale])
            path = "int"
        else:
            if weights.kind == "float":
                w = codes
            else:
                scale = constant(graph, weights.scale.name, weights.scale)
                attrs = {"axis": 1} if weights.kind == "int" else {"axis": 0, "block_size": lp.group_size}
                inputs = [codes, scale]
                if weights.codes.dtype == ir.DataType.UINT8:
                    inputs.append(constant(graph, f"{weights.scale.name}.zero_point",
                                           _zero_points(weights.scale, weights.kind)))
                w = em.op("DequantizeLinear", inputs, attrs)
            if abits is not None:
                key = (id(z), abits, lp.clip, lp.group_size, "float")
                if key not in quantized:
                    quantized[key] = (emit_fake_quant(em, z, abits, lp.clip, lp.in_features, lp.group_size), None)
                z = quantized[key][0]
            y = em.op("MatMul", [z, w])
            path = "dequant" if weights.kind != "float" else "float"
        y.producer().metadata_props.update({LOWERED_KEY: layer, LOWERING_KEY: path})
        replace_output(mm, y)
        self.paths[path] += 1
