"""FoldHadamardPass: rotate each planned linear's weight offline and rotate its input online.

``W x = (W R)(x R)`` for an orthonormal R, so the weight initializer becomes ``W R`` (after the per-channel
smoothing ``W * s`` when the plan smooths the layer; a lazy tensor, computed when it is read) and the activation
path gets ``x / s`` and the structured rotation (see ``rotation_ops``) in front of the MatMul. Layers fed by the
same tensor with the same rotation (q, k, v) share one online rotation. The FP output is unchanged up to float
rounding.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.passes import InPlacePass, PassResult
from onnx_ir.passes.common import TopologicalSortPass
from qdit4sr_export.passes.graph_edit import LAYER_KEY, Emitter, constant, set_initializer
from qdit4sr_export.passes.lazy import float_weight, lazy
from qdit4sr_export.passes.linear_sites import matmul_sites
from qdit4sr_export.passes.registry import register_pass
from qdit4sr_export.passes.rotation_ops import emit_rotation

from qdit4sr_export.quant.plan import QuantPlan
from qdit4sr_export.quant.simulate import make_rotation


def fold_weight(source: ir.TensorProtocol, smooth: torch.Tensor | None, rot) -> np.ndarray:
    """``(W * s) R`` in float32 for one layer (read from ``source`` when it is called)."""
    weight = float_weight(source)
    if smooth is not None:
        weight = weight * smooth.to(torch.float32)
    if rot is not None:
        weight = rot.apply(weight)
    return weight.numpy()


@register_pass("fold-hadamard",
               "Rotate each planned linear's weight offline (after smoothing) and its input online (or in the plugin)")
class FoldHadamardPass(InPlacePass):
    """Fold the plan's rotations (and channel smoothing) into the weights; rotate activations online.

    ``online=False`` folds the weights only and leaves each MatMul reading the unrotated input (the smoothing
    vector stays as an initializer), for a lowering whose own op smooths and rotates (the TensorRT plugins)."""

    def __init__(self, plan: QuantPlan, *, online: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.online = online

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        names = [n for n, lp in self.plan.layers.items() if lp.rotation is not None or lp.smoothing]
        sites = matmul_sites(graph, names)
        rotated: dict[tuple, ir.Value] = {}
        modified = False
        for name in names:
            if not sites[name]:
                continue
            lp = self.plan.layers[name]
            rot = make_rotation(lp.rotation, name, self.plan.tensors)
            smooth = self.plan.tensors.get(f"{name}.smooth") if lp.smoothing else None
            source = graph.initializers[f"{name}.weight"].const_value
            set_initializer(graph, f"{name}.weight", lazy(f"{name}.weight", ir.DataType.FLOAT, source.shape,
                                                          functools.partial(fold_weight, source, smooth, rot)))
            modified = True
            if not self.online:  # the lowering's own op smooths and rotates the input (TensorRT plugins)
                if smooth is not None:
                    constant(graph, f"{name}.smooth", smooth.to(torch.float32).numpy())
                for site in sites[name]:
                    site.matmul.metadata_props[LAYER_KEY] = name
                continue
            rot_key = json.dumps(dict(lp.rotation), sort_keys=True) if lp.rotation is not None else None
            if lp.rotation is not None and lp.rotation.get("kind", "hadamard") != "hadamard":
                rot_key = name  # learned rotations belong to one layer
            for site in sites[name]:
                x = site.input
                key = (id(x), name if smooth is not None else None, rot_key)
                if key not in rotated:
                    em = Emitter(graph, site.matmul, f"{name}/rotate{len(rotated)}")
                    z = x
                    if smooth is not None:
                        z = em.op("Div", [z, em.const(f"{name}.smooth", smooth.to(torch.float32).numpy())])
                    if rot is not None:
                        z = emit_rotation(em, z, rot, name)
                    rotated[key] = z
                site.matmul.replace_input_with(0, rotated[key])
                site.matmul.metadata_props[LAYER_KEY] = name
        if modified and self.online:
            TopologicalSortPass()(model)
        return PassResult(model, modified)
