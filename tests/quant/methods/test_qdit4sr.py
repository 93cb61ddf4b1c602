"""The Q-DiT4SR method end to end on small models: VaSMP bits, VaTMP schedules, ablations, errors."""


import numpy as np
import pytest
import torch
from helpers import make_inputs

from qdit4sr_export.errors import UserError
from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods.qdit4sr import QDiT4SRConfig, is_active, make_plan


def calibration_for(model, n=4, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lr = torch.randn(n, model.config.in_channels, side, side, generator=g)
    return CalibrationInputs.with_null_prompt(lr, model.config)


def test_inactive_layers():
    assert not is_active("transformer_blocks.0.attn2.add_q_proj")
    assert not is_active("transformer_blocks.0.attn2.to_add_out")
    assert not is_active("transformer_blocks.5.attn.to_k_control")
    assert is_active("transformer_blocks.0.attn.add_q_proj")
    assert is_active("transformer_blocks.0.attn2.to_q_control")


def test_vasmp_plan_meets_budget_and_favours_high_variance(small_model):
    with torch.no_grad():  # make one layer's weights much wider than the rest
        small_model.transformer_blocks[1].ff.net[2].weight.mul_(20)
    plan = make_plan(small_model, QDiT4SRConfig(wbits=None, wbits_budget=4, abits=6, steps=3))
    active = {n: lp for n, lp in plan.layers.items() if lp.active}
    sizes = np.array([lp.in_features * lp.out_features for lp in active.values()])
    bits = np.array([lp.wbits for lp in active.values()])
    assert (sizes * bits).sum() <= 4 * sizes.sum()
    assert (sizes * bits).sum() >= 4 * sizes.sum() - sizes.min()
    assert set(bits) <= {3, 4, 5} and len(set(bits)) > 1
    assert plan.layers["transformer_blocks.1.ff.net.2"].wbits == 5
    assert all(lp.wbits == 4 for lp in plan.layers.values() if not lp.active)
    assert all(lp.weight_variance is not None for lp in active.values())


def test_vatmp_puts_extra_bits_where_variance_is_high(tiny_model):
    # A random model's LayerNorm'd activations barely change over time (constant 4 bits is then optimal at an
    # integer budget); a fractional budget makes the DP place the spare bits, which shows where it puts them.
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4.5, svd_rank=8, local_rank=2, steps=8, max_segments=3),
                     calibration=calibration_for(tiny_model))
    active = [lp for lp in plan.layers.values() if lp.active]
    for lp in active:
        assert len(lp.abits) == 8 and sum(lp.abits) <= 36
        assert sum(1 for a, b in zip(lp.abits, lp.abits[1:]) if a != b) <= 2  # at most 3 segments
        assert lp.act_variance is not None and len(lp.act_variance) == 8
        bits, var = np.array(lp.abits), np.array(lp.act_variance)
        if len(set(lp.abits)) > 1:
            assert var[bits == bits.max()].mean() >= var[bits < bits.max()].mean()
    assert sum(len(set(lp.abits)) > 1 for lp in active) > len(active) // 2
    assert all(lp.abits == (4,) * 8 for lp in plan.layers.values() if not lp.active)
    assert any("VaTMP on 4 calibration samples" in note for note in plan.notes)


def test_vatmp_schedules_only_the_steps_a_run_from_start_sigma_executes(tiny_model, tmp_path):
    from qdit4sr_export.model.sampling import flow_schedule, start_index

    first = start_index(flow_schedule(8)[1], 0.5)
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4.5, svd_rank=8, local_rank=2, steps=8, start_sigma=0.5),
                     calibration=calibration_for(tiny_model))
    active = [lp for lp in plan.layers.values() if lp.active]
    assert 0 < first < 7
    for lp in active:
        assert lp.abits[:first] == (4,) * first  # never run: static floor(budget) bits
        assert sum(lp.abits[first:]) <= int(4.5 * (8 - first))  # the budget covers the steps that run
        assert lp.act_variance[:first] == (None,) * first and all(v > 0 for v in lp.act_variance[first:])
    assert sum(len(set(lp.abits[first:])) > 1 for lp in active) > len(active) // 2  # VaTMP used the spare bits
    assert any(f"steps {first}-7 of 8 (start sigma 0.5" in note for note in plan.notes)
    from qdit4sr_export.quant.plan import QuantPlan
    assert QuantPlan.load(plan.save(tmp_path / "plan.json")) == plan  # None variances survive the JSON


def test_vatmp_samples_measures_the_first_samples_exactly(tiny_model):
    cfg = dict(wbits=4, abits=4.5, svd_rank=8, local_rank=2, steps=6)
    calib = calibration_for(tiny_model, n=12)
    head = make_plan(tiny_model, QDiT4SRConfig(**cfg, vatmp_samples=9), calibration=calib)
    alone = make_plan(tiny_model, QDiT4SRConfig(**cfg, vatmp_samples=0), calibration=calib.head(9))
    every = make_plan(tiny_model, QDiT4SRConfig(**cfg, vatmp_samples=0), calibration=calib)
    variances = lambda plan: [lp.act_variance for lp in plan.layers.values() if lp.active]
    assert variances(head) == variances(alone) != variances(every)
    assert any("VaTMP on 9 calibration samples" in note for note in head.notes)
    assert any("VaTMP on 12 calibration samples" in note for note in every.notes)


def test_no_calibration_means_static_bits_with_a_note(tiny_model):
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=6, svd_rank=8, local_rank=2, steps=5))
    assert all(lp.abits == (6,) * 5 for lp in plan.layers.values())
    assert any("VaTMP off" in note for note in plan.notes)


def test_ablation_no_hsvd_drops_the_local_branch(tiny_model):
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, svd_rank=8, local_rank=0, steps=2))
    assert all(lp.local_block is None and lp.svd_rank == 8 for lp in plan.layers.values())


def test_plans_are_deterministic(tiny_model):
    cfg = QDiT4SRConfig(wbits=None, abits=4, svd_rank=8, local_rank=2, steps=4)
    a = make_plan(tiny_model, cfg, calibration=calibration_for(tiny_model))
    b = make_plan(tiny_model, cfg, calibration=calibration_for(tiny_model))
    assert a.to_json() == b.to_json()


def test_planning_does_not_touch_the_model(tiny_model):
    inputs = make_inputs(tiny_model)
    with torch.no_grad():
        before = tiny_model(*inputs)
    make_plan(tiny_model, QDiT4SRConfig(wbits=None, abits=4, svd_rank=8, local_rank=2, steps=3),
              calibration=calibration_for(tiny_model))
    with torch.no_grad():
        assert torch.equal(before, tiny_model(*inputs))
    assert all(type(m).__name__ != "FakeQuantLinear" for m in tiny_model.modules())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"wbits": 9}, "--wbits"),
        ({"wbits": 1}, "--wbits"),
        ({"abits": 1}, "--abits must be in 2..8"),
        ({"wbits_budget": 9.0}, "--wbits-budget"),
        ({"svd_rank": -1}, "svd_rank and local_rank must be >= 0"),
        ({"max_segments": 0}, "max_segments must be >= 1"),
        ({"start_sigma": 0.0}, "--start-sigma"),
        ({"start_sigma": 1.5}, "--start-sigma"),
        ({"group_size": -1}, "group_size >= 0"),
        ({"alpha_points": 0}, "alpha_points >= 1"),
        ({"vatmp_samples": -1}, "vatmp_samples must be >= 0"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        QDiT4SRConfig(**kwargs)


def test_rank_larger_than_layer(tiny_model):
    with pytest.raises(UserError, match=r"svd_rank=65 is larger than min"):
        make_plan(tiny_model, QDiT4SRConfig(wbits=4, svd_rank=65, steps=2))


def test_auto_bits_need_weights():
    meta = build_dit4sr("dit4sr-tiny", device="meta")
    with pytest.raises(UserError, match="VaSMP.*reads the weights"):
        make_plan(meta, QDiT4SRConfig(wbits=None, steps=2))


def test_fractional_abits_need_calibration(tiny_model):
    with pytest.raises(UserError, match="fractional"):
        make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4.5, svd_rank=8, steps=2))
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4.5, svd_rank=8, local_rank=2, steps=4),
                     calibration=calibration_for(tiny_model))
    assert all(sum(lp.abits) <= 18 for lp in plan.layers.values() if lp.active)


def test_group_size_sets_group_scales_and_names_the_layers_it_cannot_divide(tiny_model):
    plan = make_plan(tiny_model, QDiT4SRConfig(wbits=None, abits=4, group_size=128, steps=2))
    groups = {lp.in_features: lp.group_size for lp in plan.layers.values()}
    assert groups == {256: 128, 64: None}  # 64-wide inputs keep per-row scales
    assert any("use per-row scales: group size 128 does not divide" in note for note in plan.notes)
    paper = make_plan(tiny_model, QDiT4SRConfig(wbits=None, abits=4, steps=2))
    assert all(lp.group_size is None and not lp.smoothing for lp in paper.layers.values())
    assert [lp.wbits for lp in plan.layers.values()] == [lp.wbits for lp in paper.layers.values()]  # VaSMP as before


def test_smoothing_searches_on_calibration_data_and_feeds_vasmp(tiny_model, tmp_path):
    calib = calibration_for(tiny_model, n=2)
    cfg = QDiT4SRConfig(wbits=None, abits=4, svd_rank=8, local_rank=2, steps=2, smoothing=True, alpha_points=2,
                        group_size=32)
    plan = make_plan(tiny_model, cfg, calibration=calib)
    smoothed = [n for n, lp in plan.layers.items() if lp.smoothing]
    assert smoothed and all(plan.layers[n].active for n in smoothed)
    assert sorted(plan.tensors) == sorted(f"{n}.smooth" for n in smoothed)
    assert all(plan.tensors[f"{n}.smooth"].shape == (plan.layers[n].in_features,) for n in smoothed)
    assert any("smoothing searched on 2 calibration samples" in note for note in plan.notes)
    assert any("VaTMP on 2 calibration samples" in note for note in plan.notes)
    # VaSMP's statistic is of the weight the plan quantizes: (W s) R
    from qdit4sr_export.quant.hadamard import Rotation
    name = smoothed[0]
    lp = plan.layers[name]
    weight = dict(tiny_model.named_modules())[name].weight.detach()
    w_h = Rotation.from_dict({k: v for k, v in lp.rotation.items() if k != "kind"}).apply(
        weight * plan.tensors[f"{name}.smooth"])
    assert lp.weight_variance == pytest.approx(float(w_h.var(dim=1, unbiased=False).mean()), rel=1e-6)
    from qdit4sr_export.quant.plan import QuantPlan
    assert QuantPlan.load(plan.save(tmp_path / "plan.json")).to_json() == plan.to_json()


def test_smoothing_needs_calibration_even_without_vatmp(tiny_model):
    cfg = QDiT4SRConfig(wbits=4, abits=4, steps=2, smoothing=True, vatmp=False, alpha_points=2)
    assert cfg.wants_calibration() and not QDiT4SRConfig(vatmp=False).wants_calibration()
    with pytest.raises(UserError, match="smoothing=true searches each layer's smoothing on calibration data"):
        make_plan(tiny_model, cfg)
    plan = make_plan(tiny_model, cfg, calibration=calibration_for(tiny_model, n=2))
    assert any(lp.smoothing for lp in plan.layers.values())
    assert all(lp.abits == (4, 4) for lp in plan.layers.values())  # static bits: VaTMP off
    assert make_plan(tiny_model, cfg, calibration=calibration_for(tiny_model, n=2)).to_json() == plan.to_json()
