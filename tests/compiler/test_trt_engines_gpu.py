"""Where TensorRT and a GPU exist: engines built from a trt engine set run through polygraphy's TrtRunner and agree
with the same graph on the ONNX Runtime reference ops. Skipped with the reason elsewhere (never faked)."""

import numpy as np
import pytest
import torch

from qdit4sr_export.compiler.trt_engines import tensorrt_available

pytestmark = [pytest.mark.trt,
              pytest.mark.skipif(not tensorrt_available(), reason="TensorRT (>= 10.9 with tensorrt.plugin) is not "
                                                                  "installed"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT engines need a CUDA GPU")]


def test_engines_agree_with_the_reference_graph(pipeline_folder, tmp_path):
    from click.testing import CliRunner
    from helpers import make_inputs
    from qdit4sr_export.runtime.backends import OrtRunner
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.registry import get_backend

    from qdit4sr_export.cli import main

    model, folder = pipeline_folder
    out = tmp_path / "trt"
    result = CliRunner().invoke(main, ["build", str(folder), "--wbits", "4", "--abits", "4", "--grid-steps",
                                       "6", "--target", "trt", "-T", "precision=fp32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    engine = EngineSet.load(out)
    assert set(engine.manifest["engines"]["files"]) == {str(v.index) for v in engine.variants}
    trt_runner = get_backend("trt").open(engine, device="cuda")
    ort_runner = OrtRunner(engine)
    x, lr, ctx, pooled, _ = make_inputs(model, batch=2, side=32)
    for t in engine.timesteps:
        v = engine.variant_for_timestep(t).index
        trt_runner.activate(v)
        ort_runner.activate(v)
        ts = torch.full((2,), t)
        a = trt_runner.infer(x, lr, ctx, pooled, ts).numpy()
        b = ort_runner.infer(x, lr, ctx, pooled, ts).numpy()
        assert 10 * np.log10((b ** 2).sum() / ((a - b) ** 2).sum()) >= 40
