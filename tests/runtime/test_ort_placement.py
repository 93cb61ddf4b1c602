"""ONNX Runtime's node placement, read from the session's own record: the same mechanism for every execution
provider, so it is checked here on real CPU sessions; a session asked for CUDA names every node placed elsewhere."""

import logging

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from qdit4sr_export.runtime import ort_placement
from qdit4sr_export.runtime.backends import make_session, ort_providers

from qdit4sr_export.errors import UserError

CPU = "CPUExecutionProvider"


def _model() -> bytes:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "r"], ["z"], name="square")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
                              initializer=[helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.ones(12))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()


@pytest.fixture
def cpu_session():
    so = ort.SessionOptions()
    ort_placement.record(so)
    return ort.InferenceSession(_model(), so, providers=[CPU])


def test_the_record_names_every_node_and_its_provider(cpu_session):
    placed = ort_placement.assignment(cpu_session)
    assert set(placed) == {CPU}
    assert sorted(placed[CPU]) == [("mm", "MatMul"), ("relu", "Relu"), ("square", "Mul")]
    assert ort_placement.describe(placed, CPU, "g") is None
    line = ort_placement.describe(placed, ort_placement.CUDA, "g.onnx")
    assert line.startswith("g.onnx: 3 of 3 nodes not on CUDAExecutionProvider (3 on CPUExecutionProvider; by op: ")
    assert "\n" not in line and all(name in line for name in ("mm", "relu", "square"))


def test_a_cuda_session_lists_what_went_elsewhere(cpu_session, caplog):
    """``report`` on a session asked for CUDA warns with every node placed elsewhere (here: the CPU took all)."""
    with caplog.at_level(logging.WARNING):
        placed = ort_placement.report(cpu_session, [ort_placement.CUDA, CPU], "variant_00.onnx")
    assert placed == ort_placement.assignment(cpu_session)
    assert "variant_00.onnx: 3 of 3 nodes not on CUDAExecutionProvider" in caplog.text
    caplog.clear()
    assert ort_placement.report(cpu_session, [CPU], "variant_00.onnx") is None and not caplog.text


def test_cpu_sessions_do_not_record_placement(caplog):
    with caplog.at_level(logging.WARNING):
        session = make_session(_model(), [CPU])
    assert not caplog.text
    with pytest.raises(RuntimeError, match="does not have configuration with key"):
        session.get_session_options().get_session_config_entry(ort_placement.RECORD_KEY)


@pytest.mark.skipif(ort_placement.CUDA in ort.get_available_providers(), reason="onnxruntime-gpu is installed")
def test_cuda_without_onnxruntime_gpu_is_a_one_line_error():
    with pytest.raises(UserError, match=r"^--device cuda needs onnxruntime-gpu \(pip install 'qdit4sr-export\[gpu\]'; "
                                        r"CUDAExecutionProvider is not among this onnxruntime's providers: .*CPU"):
        ort_providers("cuda")
