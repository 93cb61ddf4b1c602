"""Small helpers the passes share to add nodes and constants to an onnx-ir graph with stable names.

Every new node is inserted just before an anchor node, so the graph stays topologically sorted, and every
value and node gets a name derived from a caller-given prefix, so the same build gives the same graph.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

#: Metadata keys the passes use to hand information to each other on the linear's MatMul node.
LAYER_KEY = "qdit4sr.layer"
WBITS_KEY = "qdit4sr.wbits"
ABITS_KEY = "qdit4sr.abits"


class Emitter:
    """Adds nodes before ``anchor`` in ``graph``; values are named ``<prefix>/<n>_<op>``."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, prefix: str) -> None:
        self.graph = graph
        self.anchor = anchor
        self.prefix = prefix
        self.count = 0

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attributes: Mapping[str, Any] | None = None,
           *, domain: str = "") -> ir.Value:
        """One single-output node, inserted before the anchor; returns its output."""
        name = f"{self.prefix}/{self.count}_{op_type}"
        self.count += 1
        attrs = ir.convenience.convert_attributes(attributes or {})
        node = ir.Node(domain, op_type, inputs, attrs, num_outputs=1, name=name)
        node.outputs[0].name = name
        self.graph.insert_before(self.anchor, node)
        return node.outputs[0]

    def const(self, name: str, array: np.ndarray | ir.TensorProtocol) -> ir.Value:
        """The initializer ``name`` (created once per graph; later calls with the same name reuse it)."""
        return constant(self.graph, name, array)


def constant(graph: ir.Graph, name: str, array: np.ndarray | ir.TensorProtocol) -> ir.Value:
    """Get or create the initializer ``name``; an existing one is reused (shared constants are stored once)."""
    existing = graph.initializers.get(name)
    if existing is not None:
        return existing
    tensor = array if isinstance(array, ir.TensorProtocol) else ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def replace_output(node: ir.Node, new_value: ir.Value) -> None:
    """Point every use of ``node``'s first output (graph outputs included) at ``new_value``."""
    old = node.outputs[0]
    move_graph_output(node.graph, old, new_value)
    ir.convenience.replace_all_uses_with(old, new_value)


def move_graph_output(graph: ir.Graph | None, old: ir.Value, new_value: ir.Value) -> None:
    """If ``old`` is a graph output, make ``new_value`` that output instead (it takes over the name)."""
    if graph is None:
        return
    for i, out in enumerate(graph.outputs):
        if out is old:
            name = old.name
            old.name = f"{name}__inner"
            new_value.name = name
            graph.outputs[i] = new_value


def initializer_array(value: ir.Value) -> np.ndarray:
    """The numpy array of an initializer value (read-only view or copy)."""
    if value.const_value is None:
        raise ValueError(f"value {value.name!r} is not a constant")
    return value.const_value.numpy()


def set_initializer(graph: ir.Graph, name: str, array: np.ndarray | ir.TensorProtocol) -> None:
    """Replace the data of the existing initializer ``name`` (same dtype, any shape; a tensor may be lazy)."""
    value = graph.initializers[name]
    tensor = array if isinstance(array, ir.TensorProtocol) else ir.tensor(np.ascontiguousarray(array), name=name)
    value.const_value = tensor
    value.shape = ir.Shape(tensor.shape)
    value.type = ir.TensorType(tensor.dtype)


def annotated_matmuls(graph: ir.Graph) -> list[ir.Node]:
    """MatMul nodes of planned linears (those AnnotateWeightBitsPass or earlier passes tagged), in graph order."""
    return [node for node in graph if node.op_type == "MatMul" and LAYER_KEY in node.metadata_props]
