"""Find where each ``nn.Linear`` of the traced model is computed in the ONNX graph.

The exporter keeps parameter names as initializer names and lowers every call of a linear to
``weight -> Transpose -> MatMul (-> Add bias)`` or to ``Gemm(x, weight, bias, transB=1)``. Following the
weight initializer's uses finds every call site, including layers called twice (DiT4SR runs ``to_q``,
``to_k``, ``to_v`` on the x and the LR tokens separately).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir


@dataclass(frozen=True)
class LinearSite:
    """One call of a linear: ``matmul`` computes ``x @ W^T`` (a MatMul fed by ``transpose``, or a Gemm)."""

    name: str
    matmul: ir.Node
    transpose: ir.Node | None
    bias_add: ir.Node | None

    @property
    def input(self) -> ir.Value:
        return self.matmul.inputs[0]


def _bias_add(matmul: ir.Node, bias: ir.Value | None) -> ir.Node | None:
    if bias is None:
        return None
    for use in matmul.outputs[0].uses():
        if use.node.op_type == "Add" and bias in use.node.inputs:
            return use.node
    return None


def find_linear_sites(graph: ir.Graph, names: list[str]) -> dict[str, list[LinearSite]]:
    """Call sites of each named linear (module name without ``.weight``); an unused layer maps to []."""
    sites: dict[str, list[LinearSite]] = {}
    for name in names:
        weight = graph.initializers.get(f"{name}.weight")
        bias = graph.initializers.get(f"{name}.bias")
        found = []
        if weight is not None:
            for use in weight.uses():
                node = use.node
                if node.op_type == "Gemm" and use.idx == 1:
                    found.append(LinearSite(name, node, None, None))
                elif node.op_type == "Transpose":
                    for mm in node.outputs[0].uses():
                        if mm.node.op_type == "MatMul" and mm.idx == 1:
                            found.append(LinearSite(name, mm.node, node, _bias_add(mm.node, bias)))
        sites[name] = found
    return sites


def _split_gemm(graph: ir.Graph, site: LinearSite) -> LinearSite:
    """Rewrite ``Gemm(x, W, b, transB=1)`` as ``MatMul(x, Transpose(W)) + b`` (same numbers, one MatMul form)."""
    gemm = site.matmul
    attrs = {k: a.value for k, a in gemm.attributes.items()}
    if attrs.get("transA", 0) or not attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 or \
            attrs.get("beta", 1.0) != 1.0:
        raise ValueError(f"layer '{site.name}': unsupported Gemm attributes {attrs}")
    x, weight = gemm.inputs[0], gemm.inputs[1]
    bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    prefix = gemm.name or site.name
    transpose = ir.Node("", "Transpose", [weight], {"perm": ir.AttrInt64s("perm", [1, 0])}, name=f"{prefix}/T")
    matmul = ir.Node("", "MatMul", [x, transpose.outputs[0]], name=f"{prefix}/MatMul")
    transpose.outputs[0].name, matmul.outputs[0].name = f"{prefix}/T", f"{prefix}/MatMul"
    nodes = [transpose, matmul]
    add = None
    if bias is not None:
        add = ir.Node("", "Add", [matmul.outputs[0], bias], name=f"{prefix}/Add")
        add.outputs[0].name = f"{prefix}/Add"
        nodes.append(add)
    graph.insert_before(gemm, nodes)
    ir.convenience.replace_all_uses_with(gemm.outputs[0], nodes[-1].outputs[0], replace_graph_outputs=True)
    graph.remove(gemm, safe=True)
    return LinearSite(site.name, matmul, transpose, add)


def matmul_sites(graph: ir.Graph, names: list[str]) -> dict[str, list[LinearSite]]:
    """Like :func:`find_linear_sites`, with every Gemm site first rewritten to Transpose -> MatMul -> Add."""
    sites = find_linear_sites(graph, names)
    return {name: [s if s.transpose is not None else _split_gemm(graph, s) for s in found]
            for name, found in sites.items()}
