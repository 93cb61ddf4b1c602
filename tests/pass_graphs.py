"""A tiny hand-built ONNX graph with three linears (one called twice, one a Gemm) and its torch twin."""

from __future__ import annotations

import copy

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch
from torch import nn

from qdit4sr_export.quant.plan import LayerPlan, QuantPlan

IN, HID, OUT = 48, 32, 16
TIMESTEPS = (900.0, 500.0, 100.0)


class Twin(nn.Module):
    """y = l2(relu(l1(x) + l1(x2))), y2 = g(p): the torch model the graph computes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = nn.Linear(IN, HID)
        self.l2 = nn.Linear(HID, OUT, bias=False)
        self.g = nn.Linear(IN, OUT)
        with torch.no_grad():  # heavy-ish tails so quantization error is visible
            for m in (self.l1, self.l2, self.g):
                m.weight.mul_(1 + 3 * (torch.rand_like(m.weight) > 0.97))

    def forward(self, x, x2, p):
        return self.l2(torch.relu(self.l1(x) + self.l1(x2))), self.g(p)


def _linear(nodes, inits, name, x, w, b, gemm=False):
    wv = ir.Value(name=f"{name}.weight", const_value=ir.tensor(w.detach().numpy(), name=f"{name}.weight"))
    wv.shape, wv.type = ir.Shape(w.shape), ir.TensorType(ir.DataType.FLOAT)
    inits.append(wv)
    bv = None
    if b is not None:
        bv = ir.Value(name=f"{name}.bias", const_value=ir.tensor(b.detach().numpy(), name=f"{name}.bias"))
        bv.shape, bv.type = ir.Shape(b.shape), ir.TensorType(ir.DataType.FLOAT)
        inits.append(bv)
    if gemm:
        node = ir.Node("", "Gemm", [x, wv, bv], {"transB": ir.AttrInt64("transB", 1)}, name=f"{name}_gemm")
        nodes.append(node)
        return node.outputs[0]
    t = ir.Node("", "Transpose", [wv], {"perm": ir.AttrInt64s("perm", [1, 0])}, name=f"{name}_t{len(nodes)}")
    mm = ir.Node("", "MatMul", [x, t.outputs[0]], name=f"{name}_mm{len(nodes)}")
    nodes += [t, mm]
    if bv is None:
        return mm.outputs[0]
    add = ir.Node("", "Add", [mm.outputs[0], bv], name=f"{name}_add{len(nodes)}")
    nodes.append(add)
    return add.outputs[0]


def build_graph(twin: Twin) -> ir.Model:
    """The ONNX graph of ``twin`` in the exporter's linear forms (Transpose -> MatMul -> Add, and Gemm)."""
    f = ir.TensorType(ir.DataType.FLOAT)
    x = ir.Value(name="x", type=f, shape=ir.Shape(["b", "t", IN]))
    x2 = ir.Value(name="x2", type=f, shape=ir.Shape(["b", "t", IN]))
    p = ir.Value(name="p", type=f, shape=ir.Shape(["b", IN]))
    nodes, inits = [], []
    h1 = _linear(nodes, inits, "l1", x, twin.l1.weight, twin.l1.bias)
    # the second call shares the first call's initializers, as the exporter emits it
    t = ir.Node("", "Transpose", [inits[0]], {"perm": ir.AttrInt64s("perm", [1, 0])}, name="l1_t_second")
    mm = ir.Node("", "MatMul", [x2, t.outputs[0]], name="l1_mm_second")
    add = ir.Node("", "Add", [mm.outputs[0], inits[1]], name="l1_add_second")
    nodes += [t, mm, add]
    h2 = add.outputs[0]
    s = ir.Node("", "Add", [h1, h2], name="sum")
    r = ir.Node("", "Relu", [s.outputs[0]], name="relu")
    nodes += [s, r]
    y = _linear(nodes, inits, "l2", r.outputs[0], twin.l2.weight, None)
    y2 = _linear(nodes, inits, "g", p, twin.g.weight, twin.g.bias, gemm=True)
    y.name, y2.name = "y", "y2"
    for v in (y, y2):
        v.type = f
    graph = ir.Graph([x, x2, p], [y, y2], nodes=nodes, initializers=inits, opset_imports={"": 21})
    return ir.Model(graph, ir_version=10)


def inputs(seed: int = 1, batch: int = 2, tokens: int = 5) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {"x": g.standard_normal((batch, tokens, IN), dtype=np.float32),
            "x2": g.standard_normal((batch, tokens, IN), dtype=np.float32),
            "p": g.standard_normal((batch, IN), dtype=np.float32)}


def run_ort(model: ir.Model, feeds: dict[str, np.ndarray], tmp_path) -> list[np.ndarray]:
    path = tmp_path / f"graph{len(list(tmp_path.iterdir()))}.onnx"
    ir.save(model, path)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def run_torch(twin: nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in twin(*(torch.from_numpy(feeds[k]) for k in ("x", "x2", "p")))]


def layer(in_f: int, out_f: int, abits=(8, 8, 8), **kw) -> LayerPlan:
    return LayerPlan(in_features=in_f, out_features=out_f, wbits=kw.pop("wbits", 8), abits=tuple(abits), **kw)


def make_plan(layers: dict[str, LayerPlan], tensors=None) -> QuantPlan:
    return QuantPlan(method="test", method_config={}, model_config={}, fingerprint={}, timesteps=TIMESTEPS,
                     layers=layers, tensors=dict(tensors or {}))


def simulate(twin: Twin, plan: QuantPlan, step: int | None):
    """The torch fake-quant oracle of ``plan`` on a copy of ``twin`` at grid step ``step``."""
    from qdit4sr_export.quant.simulate import FakeQuantLinear, StepState

    sim = copy.deepcopy(twin)
    state = StepState()
    state.step = step
    for name, lp in plan.layers.items():
        setattr(sim, name, FakeQuantLinear(getattr(twin, name), lp, state, name=name, tensors=plan.tensors))
    return sim


def sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - x) ** 2).sum(), 1e-30)))
