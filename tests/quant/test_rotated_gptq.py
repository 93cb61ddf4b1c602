"""GPTQ on the transformed residual: z = (x / s) R as the simulated layer computes it, the layer's grid and storage,
the gain over rounding to nearest, a singular Hessian, the option checks."""

import dataclasses

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import qmax
from qdit4sr_export.quant.gptq import HessianAccumulator, rtn_quantize
from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.hsvd import select_block
from qdit4sr_export.quant.layer_plan import LayerPlan
from qdit4sr_export.quant.rotated_gptq import check_options, input_transform, quantize_layer, require_calibration
from qdit4sr_export.quant.simulate import FakeQuantLinear, StepState, split_weight, stored_weight

IN, OUT, N = 128, 96, 1024


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def layer():
    """Correlated inputs with a few outlier channels, a weight and a smoothing vector."""
    g = _gen(0)
    x = torch.randn(N, IN, generator=g) @ (torch.randn(IN, IN, generator=g) / IN ** 0.5)
    x[:, :4] *= 8.0
    w = torch.randn(OUT, IN, generator=g)
    smooth = torch.rand(IN, generator=g) + 0.5
    return x, w, smooth


def _hessian(z):
    acc = HessianAccumulator(z.shape[-1])
    acc.add(z)
    return acc.hessian()


def _plan(**kw):
    base = dict(in_features=IN, out_features=OUT, wbits=4, abits=(None,), rotation=Rotation(IN, seed=0).to_dict(),
                svd_rank=8, local_block=select_block(OUT, IN, 1), clip="gaussian")
    return LayerPlan(**{**base, **kw})


def test_input_transform_is_what_the_simulated_layer_quantizes(layer):
    x, w, smooth = layer
    plan = _plan(smoothing=True)
    tensors = {"l.smooth": smooth}
    sim = _sim_layer(w, plan, tensors)
    assert torch.equal(input_transform(plan, "l", tensors)(x), sim.rotation.apply(x / sim.smooth))
    assert input_transform(_plan(rotation=None), "l", {}) is None


def _sim_layer(w, plan, tensors):
    linear = torch.nn.Linear(IN, OUT, bias=False)
    linear.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    return FakeQuantLinear(linear, plan, StepState(), name="l", tensors=tensors)


@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("smoothing", [False, True])
def test_codes_on_the_layers_grid_beat_round_to_nearest(layer, group_size, smoothing):
    x, w, smooth = layer
    plan = _plan(group_size=group_size, smoothing=smoothing)
    tensors = {"l.smooth": smooth} if smoothing else {}
    h = _hessian(input_transform(plan, "l", tensors)(x))
    found = quantize_layer(w, plan, "l", tensors, h, damp=0.01, act_order=False)
    codes, scales = found["l.weight.4"], found["l.weight_scale.4"]
    groups = IN // (group_size or IN)
    assert codes.dtype == torch.int8 and codes.shape == (OUT, IN) and int(codes.abs().max()) <= qmax(4)
    assert scales.dtype == torch.float32 and scales.shape == (OUT, groups) and bool(torch.isfinite(scales).all())
    gptq = _sim_layer(w, dataclasses.replace(plan, stored_weight=True), {**tensors, **found})
    rtn = _sim_layer(w, plan, tensors)
    assert isinstance(stored_weight({**tensors, **found}, "l", 4, gptq.plan), type(rtn.codes[4]))  # compact codes
    with torch.no_grad():
        ref = x @ w.T
        e_gptq, e_rtn = float((gptq(x) - ref).norm()), float((rtn(x) - ref).norm())
    assert e_gptq <= 0.55 * e_rtn, (e_gptq, e_rtn)  # measured 0.42-0.48


def test_act_order_keeps_the_plain_layout(layer):
    x, w, _ = layer
    plan = _plan(group_size=32)
    h = _hessian(input_transform(plan, "l", {})(x))
    found = quantize_layer(w, plan, "l", {}, h, damp=0.01, act_order=True)
    again = quantize_layer(w, plan, "l", {}, h, damp=0.01, act_order=True)
    assert torch.equal(found["l.weight.4"], again["l.weight.4"])
    _, _, _, residual = split_weight(w, plan, "l", {})
    rtn = rtn_quantize(residual, 4, group_size=32, clip="gaussian")
    assert torch.equal(found["l.weight_scale.4"], rtn.scales)  # static groups: the original residual's scales


def test_all_zero_inputs_give_round_to_nearest_and_no_nan(layer):
    _, w, _ = layer
    for group_size in (None, 32):
        plan = _plan(group_size=group_size)
        found = quantize_layer(w, plan, "l", {}, torch.zeros(IN, IN, dtype=torch.float64), damp=0.01,
                               act_order=False)
        _, _, _, residual = split_weight(w, plan, "l", {})
        rtn = rtn_quantize(residual, 4, group_size=group_size, clip="gaussian")
        assert torch.equal(found["l.weight.4"], rtn.codes) and torch.equal(found["l.weight_scale.4"], rtn.scales)
        assert bool(torch.isfinite(found["l.weight_scale.4"]).all())


def test_option_checks():
    check_options("qdit4sr", True, 0.01, False, 4)
    for bad in ({"gptq": "yes"}, {"act_order": 1}):
        with pytest.raises(UserError, match="gptq and act_order must be true or false"):
            check_options("quarot", **{"gptq": True, "damp": 0.01, "act_order": False, "samples": 0, **bad})
    for damp in (0.0, -1.0, 2.0, float("nan"), True):
        with pytest.raises(UserError, match=r"svdquant: damp must be a number in \(0, 1\]"):
            check_options("svdquant", True, damp, False, 0)
    for samples in (-1, 2.5, True):
        with pytest.raises(UserError, match="gptq_samples must be an integer >= 0"):
            check_options("qdit4sr", True, 0.01, False, samples)
    with pytest.raises(UserError, match="--calib"):
        require_calibration("qdit4sr", None)
