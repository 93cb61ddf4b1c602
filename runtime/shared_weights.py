"""Weights derived once per process and shared by every variant's ONNX Runtime session: int8 GEMM operands.

- INT4 codes. The integer GEMMs (MatMulIntegerToFloat) take int8 weights and ONNX has no INT4 GEMM, so a graph
  stores packed INT4 codes and casts them (``Cast(INT4 initializer) -> INT8``). With constant folding off (it
  would give each session a private copy), that Cast runs on every inference.
- 8-bit codes, stored as uint8 + 128 and multiplied as uint8 x uint8, because ONNX Runtime's AVX2 uint8 x int8
  kernel saturates on full-range int8 weights. Where the machine's kernel is exact (AVX-VNNI, AVX512-VNNI, AMX:
  ``uint8_x_int8_exact`` checks it on worst-case values), uint8 x int8 is the fast path (measured 5-8x faster
  than uint8 x uint8 on AMX), so the weights are shifted to int8 once.

``SharedInt8`` makes each int8 tensor once from the memory-mapped ``weights.bin`` and hands the same buffer to
every session as a shared initializer (``SessionOptions.add_initializer``: ORT uses it in place, no copy per
session); ``session_graph`` rewrites a variant graph in memory to use them. The stored graph is unchanged (it
stays valid on its own), every integer product is the same, and the memory cost is one int8 copy of those codes
per process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from qdit4sr_export.engine.format import WeightsFile


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Packed INT4 bytes (two codes per byte, low nibble first, row-major) -> int8 array of ``shape``."""
    b = np.ascontiguousarray(packed).reshape(-1)
    out = np.empty(2 * b.size, np.int8)
    out[0::2] = ((b & 0x0F) ^ 8).astype(np.int8) - 8
    out[1::2] = ((b >> 4) ^ 8).astype(np.int8) - 8
    return out[: int(np.prod(shape))].reshape(shape)


def uint8_x_int8_exact() -> bool:
    """Whether ONNX Runtime's uint8 x int8 GEMM on this machine is exact on full-range int8 weights (no int16
    saturation of pairs of products, as AVX2's kernel has): one small MatMulIntegerToFloat on worst-case values."""
    global _EXACT
    if _EXACT is None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        k = 64
        a = np.full((k, k), 255, np.uint8)
        a[1::2, ::3] = 0
        b = np.where(np.arange(k * k).reshape(k, k) % 5 == 0, -128, 127).astype(np.int8)
        inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                 numpy_helper.from_array(np.array(0, np.uint8), "zp")]
        node = helper.make_node("MatMulIntegerToFloat", ["a", "b", "one", "one", "zp"], ["y"], domain="com.microsoft")
        graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, k])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                        helper.make_opsetid("com.microsoft", 1)], ir_version=10)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = a.astype(np.int64) @ b.astype(np.int64)
        _EXACT = all(np.array_equal(sess.run(None, {"a": a[:m]})[0], want[:m].astype(np.float32)) for m in (1, k))
    return _EXACT


_EXACT: bool | None = None


def int4_casts(model: onnx.ModelProto) -> dict[str, str]:
    """Cast nodes turning an INT4 initializer into INT8: Cast output name -> initializer name."""
    int4 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    found = {}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input[0] in int4:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == onnx.TensorProto.INT8:
                found[node.output[0]] = node.input[0]
    return found


class SharedInt8:
    """int8 copies of an engine set's INT4 codes and (shifted) uint8 codes, made on first use and kept for every
    session of the process."""

    def __init__(self, weights: WeightsFile) -> None:
        self.weights = weights
        self.values: dict[str, object] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def ortvalue(self, name: str):
        """The int8 codes of stored tensor ``name`` (INT4, or UINT8 holding codes + 128) as an OrtValue over a
        buffer this object keeps alive."""
        import onnxruntime as ort

        if name not in self.values:
            entry = self.weights.entries[name]
            raw = self.weights.array(name)
            if entry.dtype == "INT4":
                codes = unpack_int4(raw, entry.shape)
            elif entry.dtype == "UINT8":
                codes = (raw.astype(np.int16) - 128).astype(np.int8)
            else:
                raise ValueError(f"tensor {name!r} is {entry.dtype}, not INT4 or UINT8 codes")
            self.arrays[name] = codes
            self.values[name] = ort.OrtValue.ortvalue_from_numpy(codes)
        return self.values[name]

    def nbytes(self) -> int:
        """Bytes held (the int8 copies made so far)."""
        return sum(a.nbytes for a in self.arrays.values())

    def clear(self) -> None:
        self.values.clear()
        self.arrays.clear()


def _inline_scalar(model: onnx.ModelProto, name: str):
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name and t.data_location != onnx.TensorProto.EXTERNAL:
            a = numpy_helper.to_array(t)
            return a.item() if a.size == 1 else None
    return None


def uint8_gemm_weights(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(MatMulIntegerToFloat node, its weight initializer) for each uint8 weight with zero point 128: the 8-bit
    weights that read the same as int8 with the zero point dropped."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat" or len(node.input) < 6 or node.input[5] == "":
            continue
        w = inits.get(node.input[1])
        if w is not None and w.data_type == onnx.TensorProto.UINT8 and _inline_scalar(model, node.input[5]) == 128:
            out.append((node, w))
    return out


def _declare(graph: onnx.GraphProto, name: str, like: onnx.TensorProto) -> None:
    """An INT8 initializer ``name`` shaped like ``like``, with ``like``'s external-data record (never read)."""
    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.INT8, dims=like.dims,
                         data_location=onnx.TensorProto.EXTERNAL)
    t.external_data.extend(like.external_data)
    graph.initializer.append(t)


def session_graph(path: Path, shared: SharedInt8, *, shift_uint8: bool | None = None) -> tuple[bytes, dict[str, object]]:
    """The variant graph at ``path`` with its int8 GEMM operands made shared initializers: each
    ``Cast(INT4) -> INT8`` output, and (when ``shift_uint8``, by default when :func:`uint8_x_int8_exact`) each
    uint8 weight with zero point 128 of a MatMulIntegerToFloat, shifted to int8 with the zero-point input dropped.
    Returns (serialized graph, initializer name -> OrtValue for ``SessionOptions.add_initializer``).

    A replacement initializer is declared with the stored tensor's external-data record (a valid location in
    weights.bin, never read: ORT takes the shared value instead), so the graph holds no copy of the codes.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    values: dict[str, object] = {}
    casts = int4_casts(model)
    if casts:
        kept = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in casts)]
        del graph.node[:]
        graph.node.extend(kept)
        for out, src in casts.items():
            _declare(graph, out, inits[src])
            values[out] = shared.ortvalue(src)
    if shift_uint8 is None:
        shift_uint8 = any(n.op_type == "MatMulIntegerToFloat" and len(n.input) > 5 for n in graph.node) \
            and uint8_x_int8_exact()
    if shift_uint8:
        for node, w in uint8_gemm_weights(model):
            name = f"{w.name}.int8"
            if name not in values:
                _declare(graph, name, w)
                values[name] = shared.ortvalue(w.name)
            node.input[1] = name
            del node.input[5:]
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used and t.name not in values]:
        graph.initializer.remove(t)
    return model.SerializeToString(), values
