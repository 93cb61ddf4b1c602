"""LowerTrtPass: every quantized linear becomes ``qdit4sr::RotateQuantize`` + ``qdit4sr::LowbitGemm`` plugin nodes.

TensorRT cannot run W4A4 on its own (its ONNX parser rejects MatMulInteger and DynamicQuantizeLinear, and its INT4
is weight-only), so each planned linear's arithmetic moves into two plugin ops (``plugins/trt_ops.py``), which
launch the Triton kernels of ``plugins/`` inside TensorRT. Run after ``FoldHadamardPass(online=False)`` (weights
rotated, the MatMul still reads the unrotated input x), ``InsertHSVDPass(emit=False)`` (the residual as weight,
the H-SVD factors as initializers) and ``SplitTimestepVariantsPass``:

    x -> RotateQuantize(x, smooth, signs, H_K, H_1, H_2, B, V) -> codes, scales, h, t, z
      -> LowbitGemm(codes, scales, z, W codes, W scales, h, A, t, U, bias) -> y   (replaces MatMul and bias Add)

The weight codes and scales are the ones ``LowerOrtPass`` stores (the same quantizer), as UINT8 bytes. Everything
else in the graph stays as traced; attention is left to TensorRT's own fusions.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult
from onnx_ir.passes.common import RemoveUnusedNodesPass
from qdit4sr_export.passes.graph_edit import (
    ABITS_KEY,
    LAYER_KEY,
    WBITS_KEY,
    annotated_matmuls,
    constant,
    replace_output,
)
from qdit4sr_export.passes.lower_ort import LOWERED_KEY, LOWERING_KEY, LayerWeights, WeightStore
from qdit4sr_export.passes.registry import register_pass
from qdit4sr_export.plugins.trt_launch import prepared_rotate_quantize
from qdit4sr_export.plugins.trt_ops import (
    DOMAIN,
    LOWBIT_GEMM,
    NONE,
    ROTATE_QUANTIZE,
    ROTATE_QUANTIZE_OUTPUTS,
    LowbitGemmAttrs,
    RotateQuantizeAttrs,
)

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.plan import QuantPlan

PLUGIN_PATH = "plugin"


def as_bytes(t: ir.TensorProtocol, name: str) -> ir.Tensor:
    """Stored weight codes (INT4 packed, INT8 or UINT8) as UINT8 bytes of the same content: (K, N/2) or (K, N)."""
    k, n = (int(d) for d in t.shape)
    raw = np.frombuffer(t.tobytes(), dtype=np.uint8)
    return ir.tensor(raw.reshape(k, -1).copy(), name=name)


class TrtWeightStore(WeightStore):
    """The ORT lowering's quantized weights, with codes as UINT8 bytes (what the plugins read)."""

    def get(self, plan: QuantPlan, layer: str, bits: int, residual: np.ndarray) -> LayerWeights:
        key = (layer, bits)
        if key not in self.entries:
            lw = super().get(plan, layer, bits, residual)
            self.entries[key] = LayerWeights(lw.kind, as_bytes(lw.codes, lw.codes.name), lw.scale)
        return self.entries[key]


def check_supported(plan: QuantPlan) -> None:
    """Refuse, naming the layer, a plan whose layers the plugins do not cover."""
    for name, lp in plan.layers.items():
        if not lp.active:
            continue
        if lp.weight_format != "int":
            raise UserError(f"layer '{name}': {lp.weight_format} weights have no TensorRT lowering (the plugins "
                            "take integer-grid weights); build this method with --target ort")
        if lp.rotation is not None and lp.rotation.get("kind", "hadamard") != "hadamard":
            raise UserError(f"layer '{name}': the {lp.rotation['kind']} rotation has no TensorRT lowering (the "
                            "plugins apply Hadamard rotations); build this method with --target ort")
        if min(lp.distinct_weight_bits()) <= 4 and lp.out_features % 2:
            raise UserError(f"layer '{name}': {lp.out_features} output channels is odd; packed INT4 weights need "
                            "an even count for the plugins")


def _rotation_inputs(graph: ir.Graph, lp, n: int) -> tuple[list[ir.Value], dict]:
    """(signs, H_K, H_1, H_2) initializers (placeholders where absent) and the rotation attributes."""
    from qdit4sr_export.plugins.activation_layout import factor_matrices, rotation_layout

    from qdit4sr_export.quant.hadamard import Rotation

    none = _none(graph)
    if lp.rotation is None:
        return [none] * 4, {}
    spec = {k: v for k, v in lp.rotation.items() if k != "kind"}
    rot = Rotation.from_dict(spec)
    layout = rotation_layout(n, rot)
    mats = factor_matrices(layout)
    key = f"hadamard.n{n}.block{rot.block or 0}"
    values = [constant(graph, f"hadamard.n{n}.seed{rot.seed}.signs", rot.signs().float().numpy())
              if rot.seed is not None else none]
    values += [constant(graph, f"{key}.{m}", mats[m].numpy()) if m in mats else none for m in ("hk", "h1", "h2")]
    attrs = {"rotation_n": n, "rotation_seed": -1 if rot.seed is None else int(rot.seed),
             "rotation_block": int(rot.block or 0)}
    return values, attrs


def _none(graph: ir.Graph) -> ir.Value:
    return constant(graph, NONE, np.zeros(1, np.float32))


def _optional(graph: ir.Graph, name: str) -> ir.Value:
    value = graph.initializers.get(name)
    return value if value is not None else _none(graph)


def _bias_add(mm: ir.Node, layer: str) -> ir.Node | None:
    """The Add of the layer's bias right after the MatMul (fused into LowbitGemm), if there is one."""
    uses = list(mm.outputs[0].uses())
    if len(uses) != 1 or uses[0].node.op_type != "Add":
        return None
    add = uses[0].node
    other = add.inputs[1 - uses[0].idx]
    return add if other is not None and other.name == f"{layer}.bias" and other.const_value is not None else None


@register_pass("lower-trt",
               "Lower quantized linears to qdit4sr::RotateQuantize + qdit4sr::LowbitGemm plugin nodes",
               takes=("plan", "store"))
class LowerTrtPass(InPlacePass):
    """Replace every annotated MatMul (and its bias Add) by the two plugin nodes (see module doc)."""

    def __init__(self, plan: QuantPlan, store: WeightStore | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.store = store if store is not None else TrtWeightStore()
        self.paths: Counter = Counter()

    def requires(self, model: ir.Model) -> None:
        check_supported(self.plan)
        for node in annotated_matmuls(model.graph):
            if ABITS_KEY not in node.metadata_props:
                raise ir.passes.PreconditionError(
                    f"MatMul of layer '{node.metadata_props[LAYER_KEY]}' has no variant bits; run "
                    "SplitTimestepVariantsPass first")

    def call(self, model: ir.Model) -> PassResult:
        self.paths.clear()
        for node in annotated_matmuls(model.graph):
            self._lower(model.graph, node)
        if self.paths:
            model.opset_imports[DOMAIN] = 1
        RemoveUnusedNodesPass()(model)
        return PassResult(model, bool(self.paths))

    def _lower(self, graph: ir.Graph, mm: ir.Node) -> None:
        layer = mm.metadata_props[LAYER_KEY]
        lp = self.plan.layers[layer]
        wbits = int(mm.metadata_props[WBITS_KEY])
        raw = mm.metadata_props[ABITS_KEY]
        abits = 0 if raw == "none" else int(raw)
        transpose = mm.inputs[1].producer()
        weight = transpose.inputs[0] if transpose is not None and transpose.op_type == "Transpose" else None
        if weight is None or weight.const_value is None:
            raise ir.passes.PassError(f"layer '{layer}': MatMul weight is not Transpose(initializer)")
        stored = self.store.get(self.plan, layer, wbits, weight.const_value.numpy())
        x = mm.inputs[0]
        half = x.dtype is not None and x.dtype != ir.DataType.FLOAT
        n_in, n_out = lp.in_features, lp.out_features
        rot_values, rot_attrs = _rotation_inputs(graph, lp, n_in)
        has = lambda name: name in graph.initializers  # noqa: E731
        local = graph.initializers.get(f"{layer}.svd_l.u")
        p, q, s_o = (int(d) for d in local.shape) if local is not None else (0, 0, 0)
        rq = RotateQuantizeAttrs(n=n_in, bits=abits, clip=lp.clip, group_size=lp.group_size or 0,
                                 smooth=int(has(f"{layer}.smooth")), rank=lp.svd_rank if has(f"{layer}.svd_g.b") else 0,
                                 svd_l_p=p, svd_l_q=q, **rot_attrs)
        b_name = f"{layer}.svd_g.b"
        if rq.rank and not prepared_rotate_quantize(rq).h_dot:  # the kernel reads B^T rows (see rotate_quantize)
            b = graph.initializers[b_name].const_value.numpy()
            b_name = f"{layer}.svd_g.bt"
            constant(graph, b_name, np.ascontiguousarray(b.T))
            rq = dataclasses.replace(rq, b_transposed=1)
        add = _bias_add(mm, layer)
        gm = LowbitGemmAttrs(k=n_in, n=n_out, abits=abits, wbits=wbits, group_size=lp.group_size or 0, rank=rq.rank,
                             svd_l_p=p, svd_l_q=q, svd_l_so=s_o, bias=int(add is not None))
        prefix = f"{layer}/{mm.name}"
        if add is None and f"{layer}.bias" in graph.initializers and half:
            raise ir.passes.PassError(f"layer '{layer}': its bias Add could not be fused into LowbitGemm")
        nodes = []
        if half:  # the plugins take and give float32 activations; the graph around them is fp16
            cast = ir.Node("", "Cast", [x], {"to": ir.AttrInt64("to", ir.DataType.FLOAT)}, name=f"{prefix}/x32")
            cast.outputs[0].name, cast.outputs[0].type = f"{prefix}/x32", ir.TensorType(ir.DataType.FLOAT)
            nodes.append(cast)
            x = cast.outputs[0]
        rq_node = ir.Node(DOMAIN, ROTATE_QUANTIZE,
                          [x, _optional(graph, f"{layer}.smooth"), *rot_values, _optional(graph, b_name),
                           _optional(graph, f"{layer}.svd_l.v")],
                          ir.convenience.convert_attributes(rq.to_attributes()), num_outputs=len(ROTATE_QUANTIZE_OUTPUTS),
                          name=f"{prefix}/{ROTATE_QUANTIZE}")
        for value, kind, suffix in zip(rq_node.outputs, rq.output_types(), ROTATE_QUANTIZE_OUTPUTS):
            value.name = f"{prefix}/{suffix}"
            value.type = ir.TensorType(ir.DataType[kind])
        codes, scales, h, t, z = rq_node.outputs
        w_codes = constant(graph, stored.codes.name, stored.codes)
        w_scales = constant(graph, stored.scale.name, stored.scale)
        bias = add.inputs[0] if add is not None and add.inputs[0] is not mm.outputs[0] else \
            (add.inputs[1] if add is not None else _none(graph))
        gemm = ir.Node(DOMAIN, LOWBIT_GEMM,
                       [codes, scales, z, w_codes, w_scales, h, _optional(graph, f"{layer}.svd_g.a"), t,
                        _optional(graph, f"{layer}.svd_l.u"), bias],
                       ir.convenience.convert_attributes(gm.to_attributes()), num_outputs=1,
                       name=f"{prefix}/{LOWBIT_GEMM}")
        y = gemm.outputs[0]
        y.name = f"{prefix}/y"
        y.type = ir.TensorType(ir.DataType.FLOAT)
        gemm.metadata_props.update({LOWERED_KEY: layer, LOWERING_KEY: PLUGIN_PATH})
        nodes += [rq_node, gemm]
        if half:
            back = ir.Node("", "Cast", [y], {"to": ir.AttrInt64("to", mm.inputs[0].dtype)}, name=f"{prefix}/y16")
            back.outputs[0].name, back.outputs[0].type = f"{prefix}/y16", mm.inputs[0].type
            nodes.append(back)
            y = back.outputs[0]
        graph.insert_before(mm, nodes)
        replace_output(add if add is not None else mm, y)
        self.paths[PLUGIN_PATH] += 1
