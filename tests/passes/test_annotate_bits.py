import numpy as np
from pass_graphs import HID, IN, OUT, Twin, build_graph, inputs, layer, make_plan, run_ort, run_torch
from qdit4sr_export.passes.annotate_bits import AnnotateWeightBitsPass
from qdit4sr_export.passes.graph_edit import LAYER_KEY, WBITS_KEY


def test_every_call_site_tagged_and_gemm_rewritten(tmp_path):
    twin = Twin()
    model = build_graph(twin)
    plan = make_plan({"l1": layer(IN, HID, wbits=3), "l2": layer(HID, OUT, wbits=5),
                      "g": layer(IN, OUT, wbits=4, wbits_schedule=(4, 6, 6))})
    assert AnnotateWeightBitsPass(plan)(model).modified
    tags = [(n.metadata_props[LAYER_KEY], n.metadata_props[WBITS_KEY]) for n in model.graph
            if n.op_type == "MatMul" and LAYER_KEY in n.metadata_props]
    assert sorted(tags) == [("g", "4,6"), ("l1", "3"), ("l1", "3"), ("l2", "5")]
    assert not any(n.op_type == "Gemm" for n in model.graph)
    feeds = inputs()
    for a, t in zip(run_ort(model, feeds, tmp_path), run_torch(twin, feeds)):
        assert np.abs(a - t).max() < 1e-5
