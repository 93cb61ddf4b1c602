"""SplitTimestepVariantsPass: specialise a graph to one engine variant of the trajectory.

``plan_variants`` (``quant/variants.py``) groups the plan's timesteps into variants; this pass writes one
variant's per-layer activation bits (and weight bits) onto the annotated MatMuls, and the variant's steps
into the model metadata, so LowerOrtPass lowers exactly that configuration. The build runs it once per
variant on a clone of the annotated graph (initializer tensors are shared between clones).
"""

from __future__ import annotations

import json

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult
from qdit4sr_export.passes.graph_edit import ABITS_KEY, LAYER_KEY, WBITS_KEY, annotated_matmuls
from qdit4sr_export.passes.registry import register_pass

from qdit4sr_export.quant.variants import Variant

VARIANT_KEY = "qdit4sr.variant"


@register_pass("split-variants",
               "Set every annotated MatMul's bits to one timestep variant's (per variant, on a clone)",
               takes=("variant",))
class SplitTimestepVariantsPass(InPlacePass):
    """Set each annotated MatMul's bits to those of ``variant``."""

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant

    def requires(self, model: ir.Model) -> None:
        missing = {n.metadata_props[LAYER_KEY] for n in annotated_matmuls(model.graph)} - set(self.variant.abits)
        if missing:
            raise ir.passes.PreconditionError(f"variant lacks bits for layer(s) {sorted(missing)[:3]}")

    def call(self, model: ir.Model) -> PassResult:
        for node in annotated_matmuls(model.graph):
            layer = node.metadata_props[LAYER_KEY]
            abits = self.variant.abits[layer]
            node.metadata_props[ABITS_KEY] = "none" if abits is None else str(abits)
            node.metadata_props[WBITS_KEY] = str(self.variant.wbits[layer])
        model.metadata_props[VARIANT_KEY] = json.dumps({"index": self.variant.index, "steps": list(self.variant.steps)})
        return PassResult(model, True)
