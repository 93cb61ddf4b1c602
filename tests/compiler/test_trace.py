"""Tracing the FP model to ONNX: names, dynamic shapes, and ONNX Runtime against torch."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from helpers import make_inputs, seeded_model

from qdit4sr_export.compiler.trace import INPUT_NAMES, IR_VERSION, OUTPUT_NAME, trace_to_onnx


@pytest.fixture(scope="module")
def traced():
    model = seeded_model("dit4sr-tiny")
    onnx_model = trace_to_onnx(model)
    session = ort.InferenceSession(ir.serde.serialize_model(onnx_model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return model, onnx_model, session


def test_graph_interface(traced):
    _, onnx_model, session = traced
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    assert onnx_model.ir_version == IR_VERSION and onnx_model.opset_imports[""] == 21
    linear_weights = [v for v in onnx_model.graph.initializers if v.endswith("ff.net.2.weight")]
    assert len(linear_weights) == 3  # one per block: the weights the passes will quantize


@pytest.mark.parametrize("batch, side, text", [(1, 8, 5), (3, 12, 9), (2, 16, 3)])
def test_onnxruntime_matches_torch_at_every_shape(traced, batch, side, text):
    model, _, session = traced
    inputs = make_inputs(model, batch=batch, side=side, text_tokens=text, seed=batch)
    out = session.run(None, {name: x.numpy() for name, x in zip(INPUT_NAMES, inputs)})[0]
    with torch.no_grad():
        reference = model(*inputs).numpy()
    assert out.shape == reference.shape
    assert np.abs(out - reference).max() <= 1e-4
