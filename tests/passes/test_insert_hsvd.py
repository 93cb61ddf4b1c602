import numpy as np
from pass_graphs import HID, IN, OUT, Twin, build_graph, inputs, layer, make_plan, run_ort, run_torch
from qdit4sr_export.passes.insert_hsvd import InsertHSVDPass

from qdit4sr_export.quant.hsvd import hsvd, select_block


def _plan():
    return make_plan({"l1": layer(IN, HID, svd_rank=4, local_block=select_block(HID, IN, 1)),
                      "l2": layer(HID, OUT, svd_rank=2), "g": layer(IN, OUT, local_block=(4, 12))})


def test_fp_output_unchanged_residual_stored(tmp_path):
    twin = Twin()
    model = build_graph(twin)
    feeds = inputs()
    assert InsertHSVDPass(_plan())(model).modified
    for a, t in zip(run_ort(model, feeds, tmp_path), run_torch(twin, feeds)):
        assert np.abs(a - t).max() < 1e-5
    dec = hsvd(twin.l1.weight.detach(), rank=4, local_rank=1, block=select_block(HID, IN, 1))
    np.testing.assert_allclose(model.graph.initializers["l1.weight"].const_value.numpy(), dec.residual.numpy(),
                               atol=1e-6)


def test_branches_stay_factored(tmp_path):
    twin = Twin()
    model = build_graph(twin)
    InsertHSVDPass(_plan())(model)
    inits = model.graph.initializers
    for name, w in (("l1", twin.l1.weight), ("l2", twin.l2.weight), ("g", twin.g.weight)):
        stored = sum(int(np.prod(v.const_value.shape)) for k, v in inits.items() if k.startswith(f"{name}.svd_"))
        lp = _plan().layers[name]
        dec = hsvd(w.detach(), rank=lp.svd_rank, local_rank=1 if lp.local_block else 0, block=lp.local_block)
        # sigma is folded into u, so one value per SVD-L block fewer than Eq. 7 counts
        blocks = dec.local.s.numel() if dec.local is not None else 0
        assert stored == dec.num_params - blocks
        assert stored < w.numel()


def test_no_hsvd_layers_is_a_no_op():
    model = build_graph(Twin())
    plan = make_plan({"l1": layer(IN, HID), "l2": layer(HID, OUT), "g": layer(IN, OUT)})
    assert not InsertHSVDPass(plan)(model).modified
