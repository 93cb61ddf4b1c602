"""The triton backend compiled for a CUDA GPU with CUDA graphs (run with ``pytest -m gpu``; bench/gpu_all.sh)."""

import pytest
import torch
from qdit4sr_export.plugins.triton_env import interpreting

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs CUDA, compiled")]


def test_triton_runner_cuda_graph_replays_eager(engine_sets):
    from qdit4sr_export.runtime.backends import OrtRunner
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.triton_backend import TritonRunner

    from qdit4sr_export.report.compare import error_stats

    _, w8, _ = engine_sets
    engine = EngineSet.load(w8)
    graphed = TritonRunner(engine, device="cuda", dtype=torch.float32)
    eager = TritonRunner(engine, device="cuda", dtype=torch.float32, cuda_graphs=False)
    ort = OrtRunner(engine)
    g = torch.Generator().manual_seed(0)
    cfg = engine.config()
    x = torch.randn(1, cfg["in_channels"], 16, 16, generator=g)
    args = (x, torch.randn(x.shape, generator=g), torch.randn(1, 4, cfg["joint_attention_dim"], generator=g),
            torch.randn(1, cfg["pooled_projection_dim"], generator=g))
    for v in engine.variants:
        t = torch.tensor([engine.timesteps[v.steps[0]]])
        for r in (graphed, eager, ort):
            r.activate(v.index)
        first, again = graphed.infer(*args, t), graphed.infer(*args, t)  # capture, then replay
        assert torch.equal(first, again) and torch.equal(first, eager.infer(*args, t))
        assert error_stats(ort.infer(*args, t).numpy(), first.numpy())["sqnr_db"] > 60
    assert graphed.use_graphs and len(graphed.graphs.graphs) == len(engine.variants)
