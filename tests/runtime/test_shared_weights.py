"""The runtime's sessions share int8 GEMM operands made once per process, with results identical to the stored
graphs run as they are."""

import numpy as np
import onnx
import onnx_ir as ir
from helpers import step_feeds
from qdit4sr_export.runtime.backends import OrtRunner, make_session
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.shared_weights import session_graph, uint8_x_int8_exact, unpack_int4


def _plain(engine, variant, feeds):
    session = make_session(engine.folder / engine.variants[variant].file, ["CPUExecutionProvider"], 1)
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


def test_unpack_int4_matches_the_onnx_layout():
    codes = np.random.default_rng(0).integers(-8, 8, size=(7, 9)).astype(np.int8)  # odd count: a padding nibble
    packed = np.frombuffer(ir.tensor(codes, dtype=ir.DataType.INT4).tobytes(), np.uint8)
    assert packed.size == 32
    np.testing.assert_array_equal(unpack_int4(packed, codes.shape), codes)


def test_int4_codes_are_unpacked_once_and_shared(w4_engine):
    _, engine = w4_engine
    assert len(engine.variants) > 1
    runner = OrtRunner(engine, threads=1)
    int4 = {n for n, e in engine.weights.entries.items() if e.dtype == "INT4"}
    seen = {}
    for v in engine.variants:
        graph, values = session_graph(engine.folder / v.file, runner.shared)
        proto = onnx.load_from_string(graph)
        assert not any(n.op_type == "Cast" and n.input[0] in int4 for n in proto.graph.node)
        assert not any(t.name in int4 for t in proto.graph.initializer)  # nothing left to read or copy
        for name, value in values.items():
            assert seen.setdefault(name, value) is value  # the same buffer for every variant
        t = engine.timesteps[v.steps[0]]
        feeds = step_feeds(engine, t)
        runner.activate(v.index)
        got = runner.infer(*feeds.values()).numpy()
        np.testing.assert_array_equal(got, _plain(engine, v.index, feeds))
    assert set(runner.shared.values) == int4
    assert runner.shared.nbytes() == sum(int(np.prod(engine.weights.entries[n].shape)) for n in int4)


def test_uint8_weights_take_the_int8_kernel_where_it_is_exact(engine_sets):
    _, w8_folder, _ = engine_sets
    engine = EngineSet.load(w8_folder)
    runner = OrtRunner(engine, threads=1)
    v = engine.variants[0]
    graph, values = session_graph(engine.folder / v.file, runner.shared)
    mm = [n for n in onnx.load_from_string(graph).graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert mm
    if uint8_x_int8_exact():
        assert all(len(n.input) == 5 and n.input[1] in values for n in mm)
    else:
        assert all(len(n.input) == 6 for n in mm)
    feeds = step_feeds(engine, engine.timesteps[v.steps[0]])
    runner.activate(v.index)
    np.testing.assert_array_equal(runner.infer(*feeds.values()).numpy(), _plain(engine, v.index, feeds))
