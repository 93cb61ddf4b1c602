"""The ort-prepacked backend: each session folds and prepacks its own weights, with the shared runner's results."""

import numpy as np
import onnx
import pytest
from helpers import step_feeds
from qdit4sr_export.runtime.backends import OrtRunner
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.prepacked import prepacked_graph
from qdit4sr_export.runtime.registry import get_backend
from qdit4sr_export.runtime.shared_weights import uint8_x_int8_exact

from qdit4sr_export.errors import UserError


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    err = float(((ref - got) ** 2).sum())
    return float("inf") if err == 0 else 10 * np.log10(float((ref ** 2).sum()) / err)


def _both(engine):
    return OrtRunner(engine, threads=1), get_backend("ort-prepacked").open(engine, threads=1)


def test_every_variant_matches_the_shared_runner(w4_engine):
    _, engine = w4_engine
    shared, prepacked = _both(engine)
    assert prepacked.prepack and len(engine.variants) > 1
    for v in engine.variants:
        feeds = step_feeds(engine, engine.timesteps[v.steps[0]])
        shared.activate(v.index)
        prepacked.activate(v.index)
        ref, got = shared.infer(*feeds.values()).numpy(), prepacked.infer(*feeds.values()).numpy()
        assert _sqnr(ref, got) >= 100.0, v.index
    assert not prepacked.shared.values  # nothing unpacked into the shared store: the sessions own their weights


def test_uint8_weights_are_shifted_to_int8_where_the_kernel_is_exact(engine_sets):
    _, w8_folder, _ = engine_sets
    engine = EngineSet.load(w8_folder)
    v = engine.variants[0]
    graph = onnx.load_from_string(prepacked_graph(engine.folder / v.file)).graph
    mm = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert mm
    if uint8_x_int8_exact():
        assert all(len(n.input) == 5 and n.input[1].endswith(".prepack.int8") for n in mm)
    else:
        assert all(len(n.input) == 6 for n in mm)
    shared, prepacked = _both(engine)
    feeds = step_feeds(engine, engine.timesteps[v.steps[0]])
    shared.activate(v.index)
    prepacked.activate(v.index)
    assert _sqnr(shared.infer(*feeds.values()).numpy(), prepacked.infer(*feeds.values()).numpy()) >= 100.0


def test_cuda_is_refused():
    with pytest.raises(UserError, match="--backend ort-prepacked runs on cpu, not --device cuda"):
        get_backend("ort-prepacked").check_device("cuda")
