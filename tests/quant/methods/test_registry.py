import pytest
import torch
from helpers import heavy_tailed_model, make_inputs

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.methods import get_method, make_config, method_names
from qdit4sr_export.quant.plan import QuantPlan
from qdit4sr_export.quant.simulate import apply_plan


def calibration(model, n=2, side=8):
    lr = torch.randn(n, model.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    return CalibrationInputs.with_null_prompt(lr, model.config)


QUICK_SEARCH = {"population": 4, "top_k": 2, "mutations": 2, "crossovers": 2, "generations": 1, "eval_states": 2}
SMALL_OPTIONS = {"qdit4sr": {"svd_rank": 8, "local_rank": 2}, "svdquant": {"svd_rank": 8, "group_size": 32},
                 "qdit": {"min_mean_group": 32, **QUICK_SEARCH}, "lrq-dit": {"fluctuation_threshold": 1.0}}


@pytest.mark.parametrize("name", method_names(quantizing_only=True))
def test_every_method_yields_a_plan_that_simulates(tmp_path, tiny_model, name):
    method = get_method(name)
    config = make_config(method, {"steps": 3, **SMALL_OPTIONS.get(name, {})})
    plan = method.build(tiny_model, config, calibration=calibration(tiny_model))
    assert plan.method == name and len(plan.layers) == 63
    loaded = QuantPlan.load(plan.save(tmp_path / "plan.json"))
    assert loaded == plan and loaded.tensors.keys() == plan.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], plan.tensors[k]) for k in plan.tensors)
    inputs = make_inputs(tiny_model)
    apply_plan(tiny_model, loaded)
    with torch.no_grad():
        assert torch.isfinite(tiny_model(*inputs)).all()


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown method 'gptq'; valid: qdit4sr, rtn, quarot, svdquant, ptq4dit, qdit, adatsq, lrq-dit"):
        get_method("gptq")


def test_options_that_do_not_apply():
    with pytest.raises(UserError, match="option svd_rank does not apply to method 'rtn'"):
        make_config(get_method("rtn"), {"svd_rank": 8})


def test_string_options_are_converted():
    cfg = make_config(get_method("qdit4sr"), {"max_segments": "none", "vatmp": "false", "svd_rank": "16",
                                              "wbits_budget": "4.5"})
    assert cfg.max_segments is None and cfg.vatmp is False and cfg.svd_rank == 16 and cfg.wbits_budget == 4.5
    with pytest.raises(UserError, match="cannot read it"):
        make_config(get_method("quarot"), {"rotation_seed": "abc"})


@pytest.mark.parametrize("name", ["svdquant", "ptq4dit", "qdit", "adatsq", "lrq-dit"])
def test_calibrated_methods_need_calibration(tiny_model, name):
    method = get_method(name)
    assert method.needs_calibration
    with pytest.raises(UserError, match="needs calibration data"):
        method.build(tiny_model, make_config(method, {"steps": 2}), calibration=None)


def _sqnr(a, b):
    return float(10 * torch.log10(a.pow(2).sum() / (a - b).pow(2).sum()))


@pytest.mark.slow  # about 30 s of calibration and searches
def test_svdquant_and_quarot_beat_rtn_on_heavy_tailed_weights():
    inputs = make_inputs(heavy_tailed_model(), batch=2, side=16, seed=3)
    with torch.no_grad():
        reference = heavy_tailed_model()(*inputs)
    scores = {}
    for name, options in (("rtn", {}), ("quarot", {}), ("svdquant", {"group_size": 64}), ("ptq4dit", {}),
                          ("qdit", QUICK_SEARCH), ("adatsq", {}), ("lrq-dit", {})):
        model = heavy_tailed_model()
        method = get_method(name)
        plan = method.build(model, make_config(method, {"steps": 2, "abits": 6, **options}),
                            calibration=calibration(model, side=16))
        apply_plan(model, plan)
        with torch.no_grad():
            scores[name] = _sqnr(reference, model(*inputs))
    assert scores["quarot"] > scores["rtn"] + 3, scores
    assert scores["svdquant"] > scores["rtn"] + 3, scores
    assert scores["ptq4dit"] > scores["rtn"], scores
    assert scores["qdit"] > scores["rtn"] + 3, scores
    assert scores["adatsq"] > scores["rtn"], scores
    assert scores["lrq-dit"] > scores["rtn"] + 3, scores


def test_method_specific_plan_contents(tiny_model):
    rtn = get_method("rtn").build(tiny_model, make_config(get_method("rtn"), {"steps": 2}))
    assert all(lp.rotation is None and lp.clip == "minmax" and lp.svd_rank == 0 for lp in rtn.layers.values())
    quarot = get_method("quarot").build(tiny_model, make_config(get_method("quarot"), {"steps": 2}))
    assert all(lp.rotation == {"n": lp.in_features, "seed": 0, "block": None} for lp in quarot.layers.values())
    svdq = get_method("svdquant")
    plan = svdq.build(tiny_model, make_config(svdq, {"steps": 2, "svd_rank": 8, "group_size": 32}),
                      calibration=calibration(tiny_model))
    smoothed = [n for n, lp in plan.layers.items() if lp.smoothing]
    assert smoothed and all(plan.tensors[f"{n}.smooth"].shape == (plan.layers[n].in_features,) for n in smoothed)
    assert all(lp.group_size == 32 and lp.svd_rank == 8 for lp in plan.layers.values())
    assert not plan.layers["transformer_blocks.0.attn2.add_q_proj"].smoothing  # never runs: no statistics
    per_row = svdq.build(tiny_model, make_config(svdq, {"steps": 2, "svd_rank": 8, "group_size": 0}),
                         calibration=calibration(tiny_model))
    assert all(lp.group_size is None for lp in per_row.layers.values())
    assert "group size 0: per-row weight and per-token activation scales" in per_row.notes
    with pytest.raises(UserError, match="group_size >= 0"):
        make_config(svdq, {"group_size": -1})
    ptq = get_method("ptq4dit")
    plan = ptq.build(tiny_model, make_config(ptq, {"steps": 3}), calibration=calibration(tiny_model))
    b = plan.tensors["transformer_blocks.0.ff.net.2.smooth"]
    assert b.shape == (256,) and (b > 0).all() and plan.layers["transformer_blocks.0.ff.net.2"].smoothing


def test_qdit_group_sizes_and_gptq_weights(small_model):
    method = get_method("qdit")
    plan = method.build(small_model, make_config(method, {"steps": 2, **QUICK_SEARCH}),
                        calibration=calibration(small_model, side=16))
    active = [lp for lp in plan.layers.values() if lp.active]
    assert sum(lp.group_size for lp in active) / len(active) >= 128  # Q-DiT's constraint
    assert all(lp.in_features % lp.group_size == 0 for lp in active)
    stored = [n for n, lp in plan.layers.items() if lp.stored_weight]
    assert stored and all(plan.tensors[f"{n}.weight.4"].shape == (plan.layers[n].out_features,
                                                                  plan.layers[n].in_features) for n in stored)
    w = plan.tensors[f"{stored[0]}.weight.4"]
    g = plan.layers[stored[0]].group_size
    levels = (w.reshape(w.shape[0], -1, g) / w.reshape(w.shape[0], -1, g).abs().amax(-1, keepdim=True) * 7)
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # on the 4-bit grid of its group


def test_adatsq_schedules_layer_wise_bits_per_timestep_within_budget(tiny_model):
    method = get_method("adatsq")
    plan = method.build(tiny_model, make_config(method, {"steps": 4, "beam_width": 81}),
                        calibration=calibration(tiny_model))
    active = {n: lp for n, lp in plan.layers.items() if lp.active}
    sizes = {n: lp.in_features * lp.out_features for n, lp in active.items()}
    total = sum(sizes.values())
    per_step = [sum(sizes[n] * lp.abits[t] for n, lp in active.items()) / total for t in range(4)]
    assert sum(per_step) / 4 <= 4 + 1e-9  # the average-bit budget over the trajectory
    assert all(set(lp.abits) <= {3, 4, 5} for lp in active.values())
    assert all(lp.stored_weight for n, lp in active.items() if "attn2.add" not in n)
    assert any("beam search: path" in note for note in plan.notes)
    alphas = [float(a) for a in next(n for n in plan.notes if n.startswith("Fisher")).split(":")[1].split(",")]
    assert abs(sum(alphas) - 1) < 1e-2 and all(a >= 0 for a in alphas)


def test_lrq_dit_adaptive_rotation_and_tlq(tiny_model):
    method = get_method("lrq-dit")
    mild = method.build(tiny_model, make_config(method, {"steps": 2, "fluctuation_threshold": 100.0}),
                        calibration=calibration(tiny_model))
    assert all(lp.rotation.get("kind", "hadamard") == "hadamard" for lp in mild.layers.values())
    wild = method.build(tiny_model, make_config(method, {"steps": 2, "fluctuation_threshold": 1.0}),
                        calibration=calibration(tiny_model))
    outlier = [n for n, lp in wild.layers.items() if lp.rotation.get("kind") == "outlier"]
    assert outlier and all(f"{n}.rotation.blocks_1" in wild.tensors for n in outlier)
    assert all(lp.weight_format == "tlq" and set(lp.tlq) == {"eta", "p_pos", "p_neg"} for lp in wild.layers.values())


def test_the_registry_says_which_methods_calibrate():
    assert get_method("qdit4sr").uses_calibration and not get_method("qdit4sr").needs_calibration
    for name in ("svdquant", "ptq4dit", "qdit", "adatsq", "lrq-dit"):
        assert get_method(name).needs_calibration and get_method(name).uses_calibration
    for name in ("rtn", "fp"):
        assert not get_method(name).uses_calibration
    quarot = get_method("quarot")  # calibrates for its GPTQ variant only
    assert quarot.uses_calibration and not quarot.needs_calibration
    assert not quarot.wants_calibration(make_config(quarot, {}))
    assert quarot.wants_calibration(make_config(quarot, {"gptq": True}))
    assert method_names()[-1] == "fp" and "fp" not in method_names(quantizing_only=True)
    assert not get_method("fp").quantizes and "start_sigma" not in get_method("rtn").options()
    assert "start_sigma" in get_method("svdquant").options()  # every calibrated method follows the trajectory


def test_a_new_method_needs_no_cli_edit(tmp_path, tiny_model):
    """The CLI acts on the registered properties: a method registered with uses_calibration gets --calib data."""
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from qdit4sr_export.cli import main
    from qdit4sr_export.model.loading import save_dit4sr
    from qdit4sr_export.quant.methods import register, registry
    from qdit4sr_export.quant.methods.rtn import RTNConfig, build_rtn

    received = {}

    def builder(name):
        def build(model, config, *, calibration=None, progress=False):
            received[name] = calibration
            return build_rtn(model, config)
        return build

    register("test-calibrating", summary="test", config=RTNConfig, uses_calibration=True)(builder("test-calibrating"))
    register("test-plain", summary="test", config=RTNConfig)(builder("test-plain"))
    try:
        ckpt = save_dit4sr(tiny_model, tmp_path / "tiny")
        save_file({"lr_latent": torch.randn(2, 16, 8, 8)}, str(tmp_path / "calib.safetensors"))
        for name in ("test-calibrating", "test-plain"):
            result = CliRunner().invoke(main, ["plan", str(ckpt), "--method", name, "--wbits", "4", "--grid-steps", "2",
                                               "--calib", str(tmp_path / "calib.safetensors"), "--json"])
            assert result.exit_code == 0, result.output
        assert len(received["test-calibrating"]) == 2 and received["test-plain"] is None
    finally:
        for name in ("test-calibrating", "test-plain"):
            registry.METHODS.remove(name)


def test_adatsq_caching_gives_the_uncached_plan_in_fewer_model_calls(tiny_model):
    """Caching the state before each step changes nothing in the plan, only the number of model calls: one per
    evaluated prefix instead of one per prefix element."""
    from qdit4sr_export.quant.methods.adatsq import search_extensions

    method = get_method("adatsq")
    plans, calls = {}, {}
    for cached in (True, False):
        seen = []
        hook = tiny_model.register_forward_pre_hook(lambda m, args: seen.append(m is tiny_model))
        plans[cached] = method.build(tiny_model, make_config(method, {"steps": 4, "beam_width": 2,
                                                                      "cache_states": cached}),
                                     calibration=calibration(tiny_model))
        hook.remove()
        calls[cached] = seen.count(False)  # the simulated copies' calls: the search
    assert plans[True].layers == plans[False].layers and plans[True].tensors.keys() == plans[False].tensors.keys()
    assert calls[True] <= search_extensions(4, 2) < calls[False]
