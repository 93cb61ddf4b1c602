import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from helpers import make_inputs
from qdit4sr_export.passes.fuse_attention import FuseAttentionPass

from qdit4sr_export.compiler.trace import INPUT_NAMES


def _run(model: ir.Model, feeds, path):
    ir.save(model, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_every_attention_becomes_multihead_attention(traced_tiny, tmp_path):
    model, traced = traced_tiny
    graph = traced.clone()
    softmaxes = sum(n.op_type == "Softmax" for n in graph.graph)
    fuse = FuseAttentionPass()
    assert fuse(graph).modified
    ops = [n.op_type for n in graph.graph]
    assert fuse.fused == softmaxes == ops.count("MultiHeadAttention") > 0
    assert "Softmax" not in ops
    feeds = {n: v.numpy() for n, v in zip(INPUT_NAMES, make_inputs(model, batch=2, side=8))}
    want, got = _run(traced.clone(), feeds, tmp_path / "a.onnx"), _run(graph, feeds, tmp_path / "b.onnx")
    # the same attention up to float rounding (measured max error 1e-6 of the output's range)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_other_scales_are_left_alone(traced_tiny):
    _, traced = traced_tiny
    graph = traced.clone()
    for node in graph.graph:  # a different scale on q: no longer the default-scale pattern
        if node.op_type == "Softmax":
            q_mul = node.inputs[0].producer().inputs[0].producer()
            q_mul.replace_input_with(1, ir.Value(name=f"{q_mul.name}.c", const_value=ir.tensor(np.float32(0.5))))
            graph.graph.register_initializer(q_mul.inputs[1])
    fuse = FuseAttentionPass()
    fuse(graph)
    assert fuse.fused == 0
