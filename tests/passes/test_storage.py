import pytest
from helpers import lowered_layer_bytes
from qdit4sr_export.passes.annotate_bits import AnnotateWeightBitsPass
from qdit4sr_export.passes.fold_hadamard import FoldHadamardPass
from qdit4sr_export.passes.insert_hsvd import InsertHSVDPass
from qdit4sr_export.passes.lower_ort import LowerOrtPass
from qdit4sr_export.passes.split_variants import SplitTimestepVariantsPass
from qdit4sr_export.passes.storage import code_bytes, layer_bytes

from qdit4sr_export.quant.methods import get_method, make_config
from qdit4sr_export.quant.variants import plan_variants


def test_code_bytes():
    assert code_bytes(7, 4) == 4 and code_bytes(8, 3) == 4 and code_bytes(8, 5) == 8


@pytest.mark.parametrize("bits", [4, 6])
def test_prediction_equals_the_lowered_graph(traced_tiny, bits):
    model, traced = traced_tiny
    method = get_method("qdit4sr")
    plan = method.build(model, make_config(method, {"wbits": bits, "abits": bits, "steps": 4}))
    graph = traced.clone()
    for p in (FoldHadamardPass(plan), InsertHSVDPass(plan), AnnotateWeightBitsPass(plan)):
        p(graph)
    SplitTimestepVariantsPass(plan_variants(plan).variants[0])(graph)
    LowerOrtPass(plan)(graph)
    stored = lowered_layer_bytes(graph)
    lowered = {n for n in plan.layers if n in stored}
    assert lowered and all(stored[n] == layer_bytes(plan.layers[n]) for n in lowered)
