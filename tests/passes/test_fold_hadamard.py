import numpy as np
import torch
from pass_graphs import HID, IN, OUT, Twin, build_graph, inputs, layer, make_plan, run_ort, run_torch
from qdit4sr_export.passes.fold_hadamard import FoldHadamardPass

from qdit4sr_export.quant.hadamard import Rotation


def _plan(smooth: bool = False):
    rot = lambda n, seed: {"kind": "hadamard", **Rotation(n, seed=seed).to_dict()}
    layers = {"l1": layer(IN, HID, rotation=rot(IN, 0)), "l2": layer(HID, OUT, rotation=rot(HID, None), smoothing=smooth),
              "g": layer(IN, OUT, rotation=rot(IN, 3))}
    tensors = {"l2.smooth": torch.linspace(0.5, 2.0, HID)} if smooth else {}
    return make_plan(layers, tensors)


def test_fp_output_unchanged_and_weights_rotated(tmp_path):
    twin = Twin()
    model = build_graph(twin)
    feeds = inputs()
    before = run_ort(model, feeds, tmp_path)
    assert FoldHadamardPass(_plan())(model).modified
    after = run_ort(model, feeds, tmp_path)
    for a, b, t in zip(before, after, run_torch(twin, feeds)):
        assert np.abs(a - t).max() < 1e-5
        assert np.abs(b - t).max() < 1e-5
    folded = model.graph.initializers["l1.weight"].const_value.numpy()
    expected = Rotation(IN, seed=0).apply(twin.l1.weight.detach()).numpy()
    np.testing.assert_allclose(folded, expected, atol=1e-6)


def test_rotation_is_structured_not_dense(tmp_path):
    model = build_graph(Twin())
    FoldHadamardPass(_plan())(model)
    shapes = [tuple(v.const_value.shape) for v in model.graph.initializers.values() if v.name.startswith("hadamard")]
    assert (12, 12) in shapes and (4, 4) in shapes and (IN, IN) not in shapes  # 48 = 12 x 4: Kronecker factors


def test_large_rotation_matches_torch_with_small_factors(tmp_path):
    import onnx_ir as ir
    import onnxruntime as ort
    from qdit4sr_export.passes.graph_edit import Emitter
    from qdit4sr_export.passes.rotation_ops import emit_hadamard

    n = 1536
    rot = Rotation(n, seed=1)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["b", "t", n]))
    anchor = ir.Node("", "Identity", [x], name="out")
    graph = ir.Graph([x], [anchor.outputs[0]], nodes=[anchor], opset_imports={"": 21})
    y = emit_hadamard(Emitter(graph, anchor, "rot"), x, rot)
    anchor.replace_input_with(0, y)
    anchor.outputs[0].name = "y"
    ir.save(ir.Model(graph, ir_version=10), tmp_path / "rot.onnx")
    feed = np.random.default_rng(0).standard_normal((2, 3, n), dtype=np.float32)
    out = ort.InferenceSession(str(tmp_path / "rot.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0]
    np.testing.assert_allclose(out, rot.apply(torch.from_numpy(feed)).numpy(), atol=1e-5)
    assert max(int(np.prod(v.const_value.shape)) for v in graph.initializers.values()) <= 512 * 512 // 4


def test_smoothing_folds_exactly(tmp_path):
    twin = Twin()
    model = build_graph(twin)
    feeds = inputs()
    FoldHadamardPass(_plan(smooth=True))(model)
    for a, t in zip(run_ort(model, feeds, tmp_path), run_torch(twin, feeds)):
        assert np.abs(a - t).max() < 1e-5
    assert any(n.op_type == "Div" for n in model.graph)


def test_shared_input_is_rotated_once(traced_tiny):
    model, graph = traced_tiny
    g = graph.clone()
    from qdit4sr_export.quant.methods import get_method, make_config

    m = get_method("quarot")
    plan = m.build(model, make_config(m, {"wbits": 8, "abits": 8}))
    FoldHadamardPass(plan)(g)
    sign_muls = [n for n in g.graph if n.op_type == "Mul" and any(
        i is not None and i.name.startswith("hadamard") and i.name.endswith("signs") for i in n.inputs)]
    sites = sum(1 for n in g.graph if n.op_type == "MatMul" and "qdit4sr.layer" in n.metadata_props)
    assert 0 < len(sign_muls) < sites  # to_q/to_k/to_v share one rotation of their common input
