"""Shared fixtures: small seeded DiT4SR models; a tiny pipeline folder (12-channel pixel-unshuffle autoencoder)
and FP and W8A8 engine sets built from it; a session-wide cache of traced graphs.

Without CUDA the Triton kernels run in Triton's CPU interpreter, which must be chosen before triton is first
imported (diffusers imports it), hence here, first."""

import hashlib
import json
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from helpers import make_pipeline_folder, seeded_model  # noqa: E402

from qdit4sr_export.compiler.build import build_engine_set
from qdit4sr_export.model import DiT4SRTransformer
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config


@pytest.fixture
def tiny_model() -> DiT4SRTransformer:
    return seeded_model("dit4sr-tiny")


@pytest.fixture
def small_model() -> DiT4SRTransformer:
    return seeded_model("dit4sr-small")


STEPS = 6


@pytest.fixture(scope="session")
def pipeline_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    model = make_pipeline_folder(root / "model")
    return model, root / "model"


@pytest.fixture(scope="session")
def engine_sets(pipeline_folder, tmp_path_factory):
    """FP and W8A8 (VaTMP at 7.5 average bits: several variants) engine sets of the tiny pipeline."""
    model, folder = pipeline_folder
    out = tmp_path_factory.mktemp("engines")
    build_engine_set(model, folder, out / "fp", plan=None, steps=STEPS, max_variants=None, build_info={},
                     progress=False)
    method = get_method("qdit4sr")
    calib = CalibrationInputs.with_null_prompt(
        torch.randn(2, 12, 8, 8, generator=torch.Generator().manual_seed(1)), model.config)
    plan = method.build(model, make_config(method, {"wbits": 8, "abits": 7.5, "steps": STEPS}), calibration=calib)
    build_engine_set(model, folder, out / "w8", plan=plan, steps=STEPS, max_variants=None, build_info={},
                     progress=False)
    return out / "fp", out / "w8", plan


@pytest.fixture(scope="session")
def w4_engine_set(pipeline_folder, tmp_path_factory):
    """A W4A4 engine set of the tiny pipeline (packed INT4 weights, 4-bit activations, H-SVD branches)."""
    model, folder = pipeline_folder
    method = get_method("qdit4sr")
    plan = method.build(model, make_config(method, {"wbits": 4, "abits": 4, "steps": STEPS}))
    out = tmp_path_factory.mktemp("engines-w4") / "w4"
    build_engine_set(model, folder, out, plan=plan, steps=STEPS, max_variants=None, build_info={}, progress=False)
    return out, plan


@pytest.fixture(scope="session", autouse=True)
def traced_graph_cache():
    """Trace each distinct architecture (config, positional crop) once per session; builds get a clone of the
    cached weight-free graph and attach their own weights.

    Tracing (torch.export + the ONNX exporter) is most of a build's time in these tests; it never reads weights and
    is deterministic for a given config, and tests/test_trace.py checks it on its own.
    """
    from qdit4sr_export.compiler import trace

    original = trace.trace_graph
    cache = {}

    def cached(config, *, grid=None, dynamic=True, dtype=torch.float32):
        key = hashlib.sha256(json.dumps([config.to_dict(), grid, dynamic, str(dtype)], sort_keys=True).encode()).hexdigest()
        if key not in cache:
            cache[key] = original(config, grid=grid, dynamic=dynamic, dtype=dtype)
        return cache[key].clone()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "trace_graph", cached)
        yield cache
