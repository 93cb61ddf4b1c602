"""AnnotateWeightBitsPass: record each planned linear's layer name and (VaSMP) weight bits on its MatMul.

The metadata (``qdit4sr.layer``, ``qdit4sr.wbits``) is how later passes find what to lower; it also makes
the bits visible in any ONNX viewer. A per-timestep weight schedule is written as its distinct bits.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult
from qdit4sr_export.passes.graph_edit import LAYER_KEY, WBITS_KEY
from qdit4sr_export.passes.linear_sites import matmul_sites
from qdit4sr_export.passes.registry import register_pass

from qdit4sr_export.quant.plan import QuantPlan


@register_pass("annotate-bits", "Mark each planned MatMul with its layer name and weight bits")
class AnnotateWeightBitsPass(InPlacePass):
    """Tag every call site of every planned linear with its layer name and weight bits."""

    def __init__(self, plan: QuantPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> PassResult:
        sites = matmul_sites(model.graph, list(self.plan.layers))
        modified = False
        for name, found in sites.items():
            lp = self.plan.layers[name]
            bits = ",".join(str(b) for b in lp.distinct_weight_bits())
            for site in found:
                site.matmul.metadata_props[LAYER_KEY] = name
                site.matmul.metadata_props[WBITS_KEY] = bits
                modified = True
        return PassResult(model, modified)
