"""Variant graphs for sessions that prepack their weights (the ``ort-prepacked`` backend): memory for speed.

The ``ort`` backend shares one copy of the weights across variants, so its sessions neither prepack nor
constant-fold (ONNX Runtime would give each session a private copy). Here each session owns its weights:
ONNX Runtime folds the graph's ``Cast(INT4) -> INT8`` into an int8 initializer and prepacks it for its integer
GEMM, at the cost of one private copy of the (int8, prepacked) weights per variant session. 8-bit weights stored
as uint8 with zero point 128 are shifted to int8 by foldable nodes where the machine's u8 x s8 kernel is exact, so
they take the fast kernel too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from qdit4sr_export.runtime.shared_weights import uint8_gemm_weights, uint8_x_int8_exact

OFFSET = "prepack.uint8_offset"


def prepacked_graph(path: Path) -> bytes:
    """The variant graph at ``path`` (external data left in place) with each uint8 weight of a
    ``MatMulIntegerToFloat`` whose zero point is 128 read as ``int8(int32(w) - 128)`` (folded when the session is
    created), when the u8 x s8 kernel is exact on this machine; otherwise unchanged."""
    model = onnx.load(str(path), load_external_data=False)
    pairs = uint8_gemm_weights(model)
    if not pairs or not uint8_x_int8_exact():
        return model.SerializeToString()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(128, np.int32), OFFSET))
    shifts: list[onnx.NodeProto] = []  # on initializers only, so they can lead the graph
    shifted: dict[str, str] = {}
    for node, w in pairs:
        if w.name not in shifted:
            shifted[w.name] = _shift_nodes(shifts, w.name)
        node.input[1] = shifted[w.name]
        del node.input[5:]
    nodes = shifts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


def _shift_nodes(nodes: list[onnx.NodeProto], name: str) -> str:
    """Append ``int8(int32(name) - 128)`` to ``nodes``; return its output name."""
    wide, centred, out = f"{name}.prepack.i32", f"{name}.prepack.centred", f"{name}.prepack.int8"
    nodes += [onnx.helper.make_node("Cast", [name], [wide], to=onnx.TensorProto.INT32, name=wide),
              onnx.helper.make_node("Sub", [wide, OFFSET], [centred], name=centred),
              onnx.helper.make_node("Cast", [centred], [out], to=onnx.TensorProto.INT8, name=out)]
    return out
