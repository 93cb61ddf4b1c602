"""engine_writer: an engine set appears whole or not at all (too little disk, Ctrl-C mid-write)."""

from collections import namedtuple

import numpy as np
import onnx_ir as ir
import pytest

from qdit4sr_export.engine import writer as engine_writer
from qdit4sr_export.errors import UserError


def _model() -> ir.Model:
    """y = x @ W with a 64 x 64 float initializer (stored in weights.bin)."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 64]))
    w = ir.Value(name="w", const_value=ir.tensor(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), name="w"),
                 type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([64, 64]))
    node = ir.Node("", "MatMul", [x, w], num_outputs=1)
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[w], opset_imports={"": 21})
    return ir.Model(graph, ir_version=10)


def _write(out, **kw):
    return engine_writer.write_engine_set(out, [("variant_00.onnx", _model())], {"schema": "test"}, lambda tmp: None,
                                          **kw)


def test_writes_the_set(tmp_path):
    out = _write(tmp_path / "set")
    assert {p.name for p in out.iterdir()} >= {"variant_00.onnx", "weights.bin", "manifest.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_too_little_disk_is_refused_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(engine_writer.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"not enough disk space for .*set: needs about .* MB, 0.0 MB free"):
        _write(tmp_path / "set")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_writer, "write_weights", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "set")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_replacing_keeps_the_old_set(tmp_path, monkeypatch):
    out = _write(tmp_path / "set")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_writer, "write_weights", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "set", force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
