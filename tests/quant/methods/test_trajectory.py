"""Every calibrated method samples the same trajectory: the grid and start sigma of its config (the pipeline's),
in batches, one pass where it needs several statistics."""

import pytest
import torch

from qdit4sr_export.model.sampling import flow_schedule, start_index
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config
from qdit4sr_export.quant.methods.adatsq import search_extensions

STEPS, SIGMA, SAMPLES, BATCH = 6, 0.5, 10, 8  # 2 batches; steps 3-5 run
QUICK = {"qdit4sr": {"svd_rank": 8, "local_rank": 2, "wbits": 4, "abits": 4.5},
         "svdquant": {"svd_rank": 8, "group_size": 32},
         "qdit": {"min_mean_group": 32, "population": 2, "top_k": 1, "mutations": 1, "crossovers": 0,
                  "generations": 1, "eval_states": 2},
         "adatsq": {"beam_width": 2}}


def calls_of(model):
    """Every forward call of ``model`` and of any other DiT4SR (its copies and the simulations, which may be lazy
    twins built afresh): (is the FP model, timestep). A global hook, removed by the returned handle."""
    from qdit4sr_export.model import DiT4SRTransformer

    seen = []

    def record(m, args):
        if isinstance(m, DiT4SRTransformer):
            seen.append((m is model, float(args[4][0])))
    return seen, torch.nn.modules.module.register_module_forward_pre_hook(record)


@pytest.mark.parametrize("name", ["qdit4sr", "svdquant", "ptq4dit", "qdit", "adatsq", "lrq-dit"])
def test_calibration_runs_only_the_pipelines_steps(tiny_model, name):
    timesteps, sigmas = flow_schedule(STEPS)
    first = start_index(sigmas, SIGMA)
    run = {float(t) for t in timesteps[first:]}
    assert 0 < first < STEPS - 1
    lr = torch.randn(SAMPLES, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    method = get_method(name)
    config = make_config(method, {"steps": STEPS, "start_sigma": SIGMA, **QUICK.get(name, {})})
    seen, hook = calls_of(tiny_model)
    try:
        plan = method.build(tiny_model, config, calibration=CalibrationInputs.with_null_prompt(lr, tiny_model.config))
    finally:
        hook.remove()
    assert {t for _, t in seen} == run  # nothing before the start sigma, every step after it
    fp_calls = sum(1 for fp, _ in seen if fp)
    one_pass = 2 * (STEPS - first)  # 2 batches x the steps that run
    expected = {"qdit4sr": 0,  # VaTMP collects on a weights-quantized copy
                "svdquant": one_pass, "ptq4dit": one_pass, "lrq-dit": one_pass,  # one pass, all statistics
                "qdit": one_pass + 2,  # + the FP references of the 2 fitness states
                "adatsq": 2 * one_pass}  # the FP pass and the Fisher pass (which also collects the Hessians)
    assert fp_calls == expected[name]
    if name == "adatsq":
        searched = sum(1 for fp, _ in seen if not fp)
        assert searched <= search_extensions(STEPS - first, 2)  # one batch (8 search samples) per prefix
        assert plan.method_config["start_sigma"] == SIGMA
        active = [lp for lp in plan.layers.values() if lp.active]
        assert all(lp.abits[:first] == (4,) * first for lp in active)  # steps that never run: static bits
