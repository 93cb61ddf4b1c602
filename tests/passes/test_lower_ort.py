import numpy as np
import onnx_ir as ir
import pytest
import torch
from pass_graphs import HID, IN, OUT, Twin, build_graph, inputs, layer, make_plan, run_ort, run_torch, simulate, sqnr
from qdit4sr_export.passes.annotate_bits import AnnotateWeightBitsPass
from qdit4sr_export.passes.fold_hadamard import FoldHadamardPass
from qdit4sr_export.passes.insert_hsvd import InsertHSVDPass
from qdit4sr_export.passes.lower_ort import LOWERING_KEY, LowerOrtPass, WeightStore
from qdit4sr_export.passes.split_variants import SplitTimestepVariantsPass

from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.hsvd import select_block
from qdit4sr_export.quant.variants import plan_variants


def _lower(twin, plan, step, full=False):
    model = build_graph(twin)
    passes = [FoldHadamardPass(plan), InsertHSVDPass(plan)] if full else []
    for p in passes + [AnnotateWeightBitsPass(plan)]:
        p(model)
    schedule = plan_variants(plan)
    SplitTimestepVariantsPass(schedule.variants[schedule.step_variant[step]])(model)
    lower = LowerOrtPass(plan)
    lower(model)
    return model, lower.paths


def _check(tmp_path, plan, step, bound, full=False):
    twin = Twin()
    model, paths = _lower(twin, plan, step, full)
    feeds = inputs()
    got = run_ort(model, feeds, tmp_path)
    want = run_torch(simulate(twin, plan, step), feeds)
    for g, w in zip(got, want):
        assert sqnr(w, g) >= bound
    return model, paths


@pytest.mark.parametrize("bits", [8, 6, 4, 3])
def test_integer_path_matches_simulation(tmp_path, bits):
    plan = make_plan({n: layer(i, o, abits=(bits,) * 3, wbits=bits) for n, i, o in
                      (("l1", IN, HID), ("l2", HID, OUT), ("g", IN, OUT))})
    model, paths = _check(tmp_path, plan, 1, 60.0)
    assert paths == {"int": 4}
    assert any(n.op_type == "MatMulIntegerToFloat" for n in model.graph)
    assert not any(n.op_type == "MatMul" for n in model.graph)
    dtypes = {v.const_value.dtype for k, v in model.graph.initializers.items() if ".wq" in k}
    assert dtypes == {ir.DataType.INT4 if bits <= 4 else ir.DataType.UINT8 if bits == 8 else ir.DataType.INT8}


def test_full_qdit4sr_chain_w4a4(tmp_path):
    rot = lambda n: {"kind": "hadamard", **Rotation(n, seed=0).to_dict()}
    plan = make_plan({"l1": layer(IN, HID, abits=(4, 6, 8), wbits=4, rotation=rot(IN), svd_rank=4,
                                  local_block=select_block(HID, IN, 1)),
                      "l2": layer(HID, OUT, abits=(4, 4, 4), wbits=3, rotation=rot(HID), svd_rank=2),
                      "g": layer(IN, OUT, abits=(8, 8, 8), wbits=5, rotation=rot(IN))})
    for step in range(3):
        _check(tmp_path, plan, step, 60.0, full=True)


def test_float_activation_steps_use_dequantized_weights(tmp_path):
    plan = make_plan({"l1": layer(IN, HID, abits=(None, 8, 8), wbits=4), "l2": layer(HID, OUT, abits=(None,) * 3),
                      "g": layer(IN, OUT, abits=(None,) * 3, wbits=8)})
    model, paths = _check(tmp_path, plan, 0, 60.0)
    assert paths == {"dequant": 4}
    assert any(n.op_type == "DequantizeLinear" for n in model.graph)


def test_groups_and_minmax(tmp_path):
    plan = make_plan({"l1": layer(IN, HID, abits=(4,) * 3, wbits=4, group_size=16, clip="minmax"),
                      "l2": layer(HID, OUT, abits=(6,) * 3, wbits=6, clip="minmax"),
                      "g": layer(IN, OUT, abits=(4,) * 3, wbits=8, group_size=12)})
    model, paths = _check(tmp_path, plan, 2, 60.0)
    assert paths == {"dequant": 3, "int": 1}


def test_stored_weights_use_the_float_path(tmp_path):
    twin = Twin()
    w = {f"{n}.weight.4": torch.round(getattr(twin, n).weight.detach() * 8) / 8 for n in ("l1", "l2", "g")}
    plan = make_plan({n: layer(i, o, abits=(8,) * 3, wbits=4, stored_weight=True) for n, i, o in
                      (("l1", IN, HID), ("l2", HID, OUT), ("g", IN, OUT))}, tensors=w)
    model, paths = _check(tmp_path, plan, 0, 60.0)
    assert paths == {"float": 4}


def test_weight_store_shares_tensors_between_variants():
    twin = Twin()
    plan = make_plan({"l1": layer(IN, HID, abits=(4, 6, 8), wbits=4), "l2": layer(HID, OUT), "g": layer(IN, OUT)})
    store = WeightStore()
    graphs = []
    for v in plan_variants(plan).variants:
        model = build_graph(twin)
        AnnotateWeightBitsPass(plan)(model)
        SplitTimestepVariantsPass(v)(model)
        LowerOrtPass(plan, store)(model)
        graphs.append(model)
    assert len(graphs) == 3
    first = graphs[0].graph.initializers["l1.wq4"].const_value
    assert all(g.graph.initializers["l1.wq4"].const_value is first for g in graphs)
    assert all(n.metadata_props.get(LOWERING_KEY) in (None, "int") for g in graphs for n in g.graph)


def test_lowering_needs_variant_bits():
    model = build_graph(Twin())
    plan = make_plan({"l1": layer(IN, HID), "l2": layer(HID, OUT), "g": layer(IN, OUT)})
    AnnotateWeightBitsPass(plan)(model)
    with pytest.raises(ir.passes.PreconditionError):
        LowerOrtPass(plan)(model)


def test_fp_unchanged_before_lowering(tmp_path):
    twin = Twin()
    model = build_graph(twin)
    feeds = inputs()
    for a, t in zip(run_ort(model, feeds, tmp_path), run_torch(twin, feeds)):
        assert np.abs(a - t).max() < 1e-5


@pytest.mark.parametrize("abits", [4, 8])
def test_qdit4sr_groups_and_smoothing_chain(tmp_path, abits):
    """Q-DiT4SR's options together (issue 19): smoothing before the rotation, group-wise Gaussian scales, H-SVD;
    the same arithmetic as the simulation (measured 132.9-138.1 dB)."""
    rot = lambda n: {"kind": "hadamard", **Rotation(n, seed=0).to_dict()}
    g = torch.Generator().manual_seed(3)
    plan = make_plan({"l1": layer(IN, HID, abits=(abits,) * 3, wbits=4, rotation=rot(IN), svd_rank=4, group_size=8,
                                  local_block=select_block(HID, IN, 1), smoothing=True),
                      "l2": layer(HID, OUT, abits=(abits,) * 3, wbits=4, rotation=rot(HID), svd_rank=2, group_size=8,
                                  smoothing=True),
                      "g": layer(IN, OUT, abits=(abits,) * 3, wbits=4, rotation=rot(IN), group_size=8)},
                     tensors={"l1.smooth": torch.rand(IN, generator=g) + 0.5,
                              "l2.smooth": torch.rand(HID, generator=g) + 0.5})
    model, paths = _check(tmp_path, plan, 1, 120.0, full=True)
    assert paths == {"dequant": 4}
    assert sum(n.op_type == "Div" for n in model.graph) >= 2
