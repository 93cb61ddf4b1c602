import json

import pytest
from onnx_ir.passes import PreconditionError
from pass_graphs import HID, IN, OUT, Twin, build_graph, layer, make_plan
from qdit4sr_export.passes.annotate_bits import AnnotateWeightBitsPass
from qdit4sr_export.passes.graph_edit import ABITS_KEY, LAYER_KEY, WBITS_KEY
from qdit4sr_export.passes.split_variants import VARIANT_KEY, SplitTimestepVariantsPass

from qdit4sr_export.quant.variants import Variant, plan_variants


def test_variant_bits_written_on_every_site():
    model = build_graph(Twin())
    plan = make_plan({"l1": layer(IN, HID, abits=(4, 4, 8)), "l2": layer(HID, OUT, abits=(None, 8, 8)),
                      "g": layer(IN, OUT, abits=(6, 6, 6), wbits=4, wbits_schedule=(4, 4, 6))})
    AnnotateWeightBitsPass(plan)(model)
    schedule = plan_variants(plan)
    assert [v.steps for v in schedule.variants] == [(0,), (1,), (2,)]
    v = schedule.variants[2]
    SplitTimestepVariantsPass(v)(model)
    tags = {(n.metadata_props[LAYER_KEY], n.metadata_props[ABITS_KEY], n.metadata_props[WBITS_KEY])
            for n in model.graph if LAYER_KEY in n.metadata_props}
    assert tags == {("l1", "8", "8"), ("l2", "8", "8"), ("g", "6", "6")}
    assert json.loads(model.metadata_props[VARIANT_KEY]) == {"index": 2, "steps": [2]}
    other = build_graph(Twin())
    AnnotateWeightBitsPass(plan)(other)
    SplitTimestepVariantsPass(schedule.variants[0])(other)
    assert {n.metadata_props[ABITS_KEY] for n in other.graph if n.metadata_props.get(LAYER_KEY) == "l2"} == {"none"}


def test_variant_missing_a_layer_is_rejected():
    model = build_graph(Twin())
    plan = make_plan({"l1": layer(IN, HID), "l2": layer(HID, OUT), "g": layer(IN, OUT)})
    AnnotateWeightBitsPass(plan)(model)
    with pytest.raises(PreconditionError):
        SplitTimestepVariantsPass(Variant(0, (0, 1, 2), {"l1": 8}, {"l1": 8}))(model)
