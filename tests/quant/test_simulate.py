"""The fake-quant simulation: Eq. 11 per layer, timestep-following activation bits, and model-level quality."""

import dataclasses

import pytest
import torch
from helpers import heavy_tailed_model, make_inputs, seeded_model

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import fake_quantize_tokens, fake_quantize_weight
from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.hsvd import hsvd
from qdit4sr_export.quant.methods.qdit4sr import QDiT4SRConfig, make_plan
from qdit4sr_export.quant.plan import LayerPlan
from qdit4sr_export.quant.simulate import FakeQuantLinear, StepState, apply_plan


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    reference, approx = reference.detach(), approx.detach()
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - approx).pow(2).sum()))


def test_fake_quant_linear_computes_eq_11():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 48)
    lp = LayerPlan(in_features=96, out_features=48, wbits=4, abits=(3, 6), rotation={"n": 96, "seed": 3, "block": None},
                   svd_rank=4, local_block=(8, 12))
    state = StepState()
    fq = FakeQuantLinear(linear, lp, state)
    x = torch.randn(5, 7, 96)
    rot = Rotation(n=96, seed=3)
    dec = hsvd(rot.apply(linear.weight.detach()), rank=4, local_rank=1, block=(8, 12))
    z = rot.apply(x)
    for step, bits in enumerate((3, 6)):
        state.step = step
        expected = (fake_quantize_tokens(z, bits) @ fake_quantize_weight(dec.residual, 4).T
                    + z @ dec.fp_dense().T + linear.bias)
        torch.testing.assert_close(fq(x), expected, rtol=1e-5, atol=1e-5)


def test_rotation_convention_preserves_the_layer():
    torch.manual_seed(1)
    linear = torch.nn.Linear(192, 64)
    lp = LayerPlan(in_features=192, out_features=64, wbits=8, abits=(None,), rotation={"n": 192, "seed": None,
                   "block": None}, svd_rank=16)
    fq = FakeQuantLinear(linear, lp, StepState())
    x = torch.randn(10, 192)
    # only the 8-bit weight error of the residual remains (kappa(8) alone is 40.5 dB); a wrong rotation
    # convention would give about 0 dB
    assert sqnr_db(linear(x), fq(x)) > 40


def test_activation_bits_follow_the_timestep(tiny_model):
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4, svd_rank=4, local_rank=1, steps=4))
    schedule = (2, 3, 5, 8)
    layers = {n: dataclasses.replace(lp, abits=schedule) for n, lp in plan.layers.items()}
    plan = dataclasses.replace(plan, layers=layers)
    sim = apply_plan(tiny_model, plan)
    used = []
    fq = tiny_model.transformer_blocks[0].attn.to_q
    fq.register_forward_hook(lambda m, a, o: used.append(m.current_abits()))
    x, lr, ctx, pooled, _ = make_inputs(tiny_model, batch=1)
    for t in plan.timesteps:
        with torch.no_grad():
            tiny_model(x, lr, ctx, pooled, torch.tensor([t]))
    assert used[::2] == list(schedule)  # to_q runs twice per forward (x, then LR)
    sim.weights_only()
    with torch.no_grad():
        tiny_model(x, lr, ctx, pooled, torch.tensor([plan.timesteps[0]]))
    assert used[-1] is None


def test_apply_plan_rejects_other_model(tiny_model):
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4, svd_rank=4, local_rank=1, steps=2))
    other = seeded_model("dit4sr-tiny", seed=5)
    with pytest.raises(UserError, match="weights"):
        apply_plan(other, plan)


def _outputs(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def test_w8a8_stays_close_to_fp(small_model):
    inputs = make_inputs(small_model, batch=2, side=16)
    reference = _outputs(small_model, inputs)
    plan = make_plan(small_model, QDiT4SRConfig(wbits=8, abits=8, svd_rank=32, local_rank=8, steps=10))
    apply_plan(small_model, plan)
    assert sqnr_db(reference, _outputs(small_model, inputs)) > 25


def rtn_plan(plan):
    """Plain RTN on the same layers: no rotation, no FP branches, min-max scales, uniform bits."""
    layers = {n: dataclasses.replace(lp, rotation=None, svd_rank=0, local_block=None, clip="minmax", wbits=4,
                                     abits=(4,) * len(plan.timesteps)) for n, lp in plan.layers.items()}
    return dataclasses.replace(plan, method="rtn", layers=layers)


def test_w4a4_qdit4sr_beats_rtn_on_heavy_tailed_weights():
    from qdit4sr_export.quant.calibration import CalibrationInputs

    model = heavy_tailed_model()
    inputs = make_inputs(model, batch=2, side=16, seed=3)
    reference = _outputs(model, inputs)
    calib = CalibrationInputs.with_null_prompt(torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(1)),
                                               model.config)
    plan = make_plan(model, QDiT4SRConfig(wbits=None, abits=4, svd_rank=32, local_rank=8, steps=4), calibration=calib)
    rtn = heavy_tailed_model()
    apply_plan(rtn, rtn_plan(plan))
    apply_plan(model, plan)
    ours = sqnr_db(reference, _outputs(model, inputs))
    baseline = sqnr_db(reference, _outputs(rtn, inputs))
    assert ours > baseline + 6, (ours, baseline)  # about 15 dB vs 4 dB on these inputs


def test_per_timestep_weight_bits():
    torch.manual_seed(2)
    linear = torch.nn.Linear(64, 32)
    lp = LayerPlan(in_features=64, out_features=32, wbits=4, abits=(None, None, None), wbits_schedule=(3, 8, 3),
                   clip="minmax")
    state = StepState()
    fq = FakeQuantLinear(linear, lp, state)
    x = torch.randn(5, 64)
    outputs = []
    for step in range(3):
        state.step = step
        outputs.append(fq(x))
        expected = x @ fake_quantize_weight(linear.weight.detach(), (3, 8, 3)[step], clip="minmax").T + linear.bias
        torch.testing.assert_close(outputs[-1], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(outputs[0], outputs[2]) and not torch.allclose(outputs[0], outputs[1])
    assert sqnr_db(linear(x), outputs[1]) > sqnr_db(linear(x), outputs[0]) + 20
    with pytest.raises(UserError, match="wbits_schedule and abits differ in length"):
        LayerPlan(in_features=64, out_features=32, wbits=4, abits=(4,), wbits_schedule=(3, 8))


def test_cached_weights_give_the_same_numbers(tiny_model):
    """``cache_weights`` keeps the rebuilt float weights (quality benchmarks): bit-identical outputs at every step."""
    import copy

    from qdit4sr_export.quant.methods.qdit4sr import QDiT4SRConfig, make_plan

    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4, svd_rank=8, local_rank=2, steps=3))
    plain, cached = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    apply_plan(plain, plan)
    apply_plan(cached, plan).cache_weights()
    inputs = make_inputs(tiny_model)[:4]
    with torch.no_grad():
        for t in plan.timesteps * 2:
            step = torch.tensor([t])
            assert torch.equal(plain(*inputs, step, return_dict=False)[0], cached(*inputs, step, return_dict=False)[0])
    layers = [m for m in cached.modules() if type(m).__name__ == "FakeQuantLinear"]
    assert all(set(m.cache) <= {4, "fp"} for m in layers) and sum(set(m.cache) == {4, "fp"} for m in layers) > 10
