"""Passes register by name; targets name their pipelines with registered passes only."""

import pytest

from qdit4sr_export.compiler.targets import TARGETS
from qdit4sr_export.passes.registry import PASSES, PassStep, make_pass, register_pass


def test_every_target_names_registered_passes():
    for target in TARGETS:
        steps = [*target.graph_passes, target.lowering, *target.final_passes]
        for step in steps:
            assert step.name in PASSES, (target.name, step.name)
        assert target.pipeline()["per_variant"][0] == "split-variants"


def test_make_pass_gives_the_class_its_context_and_options(tiny_model):
    from qdit4sr_export.quant.methods import get_method, make_config

    method = get_method("rtn")
    plan = method.build(tiny_model, make_config(method, {"wbits": 8, "abits": 8, "steps": 2}))
    fold = make_pass(PassStep("fold-hadamard", {"online": False}), plan=plan, store=None)
    assert type(fold).__name__ == "FoldHadamardPass" and fold.plan is plan and fold.pass_name == "fold-hadamard"
    assert type(make_pass("fuse-attention", plan=plan)).__name__ == "FuseAttentionPass"
    with pytest.raises(ValueError, match="needs store"):
        make_pass("lower-ort", plan=plan)


def test_a_pass_may_only_take_known_context():
    with pytest.raises(ValueError, match="unknown context"):
        register_pass("bad", "x", takes=("weights",))
