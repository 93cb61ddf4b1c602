import pytest
import torch
from helpers import make_inputs, seeded_model
from qdit4sr_export.passes.linear_sites import find_linear_sites

from qdit4sr_export.compiler.trace import trace_to_onnx
from qdit4sr_export.quant.accounting import quantizable_linears


@pytest.fixture(scope="module")
def traced():
    model = seeded_model("dit4sr-tiny")
    return model, trace_to_onnx(model)


def test_every_linear_call_is_found(traced):
    model, onnx_model = traced
    names = list(quantizable_linears(model))
    calls = dict.fromkeys(names, 0)
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_pre_hook(lambda m, a, n=name: calls.__setitem__(n, calls[n] + 1))
    with torch.no_grad():
        model(*make_inputs(model, batch=1))
    sites = find_linear_sites(onnx_model.graph, names)
    # The exported graph drops the dead code the official quirk creates: to_k_control's result is discarded,
    # so neither it nor the to_k call on the LR tokens that only feeds it survives.
    expected = {n: 0 if n.endswith(".to_k_control") else c - 1 if n.endswith(".to_k") else c
                for n, c in calls.items()}
    assert {n: len(s) for n, s in sites.items()} == expected  # to_q runs twice, attn2's text projections never
    assert len(sites["transformer_blocks.0.attn.to_q"]) == 2
    assert sites["transformer_blocks.0.attn2.add_q_proj"] == []
    site = sites["transformer_blocks.0.ff.net.2"][0]
    assert site.matmul.op_type in ("MatMul", "Gemm") and site.input is site.matmul.inputs[0]
    if site.matmul.op_type == "MatMul":
        assert site.transpose is not None and site.bias_add is not None
