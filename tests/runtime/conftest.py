"""Fixtures of the runtime tests."""

import pytest
import torch
from conftest import STEPS
from qdit4sr_export.runtime.engine_set import EngineSet

from qdit4sr_export.compiler.build import build_engine_set
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config


@pytest.fixture(scope="module")
def w4_engine(pipeline_folder, tmp_path_factory):
    """W4 weights, VaTMP at 4.5 average activation bits: several variants sharing the INT4 codes."""
    model, folder = pipeline_folder
    method = get_method("qdit4sr")
    calib = CalibrationInputs.with_null_prompt(
        torch.randn(2, 12, 8, 8, generator=torch.Generator().manual_seed(1)), model.config)
    plan = method.build(model, make_config(method, {"wbits": 4, "abits": 4.5, "steps": STEPS}), calibration=calib)
    out = tmp_path_factory.mktemp("w4") / "w4"
    build_engine_set(model, folder, out, plan=plan, steps=STEPS, max_variants=None, build_info={}, progress=False)
    return model, EngineSet.load(out)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster (2 CPUs) for the whole session; workers unpack shipped engine sets into a folder of
    the session (the cache location reaches them through the environment they inherit)."""
    import os

    import ray
    from qdit4sr_export.runtime.engine_shipping import CACHE_ENV

    cache = tmp_path_factory.mktemp("engine-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(cache)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield cache
    ray.shutdown()
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
