"""A traced tiny DiT4SR shared by the pass tests (tracing takes seconds; tests clone the graph)."""

import pytest
from helpers import seeded_model

from qdit4sr_export.compiler.trace import trace_to_onnx


@pytest.fixture(scope="session")
def traced_tiny():
    model = seeded_model("dit4sr-tiny")
    return model, trace_to_onnx(model)
