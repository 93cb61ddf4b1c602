import json

import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.methods.qdit4sr import QDiT4SRConfig, make_plan
from qdit4sr_export.quant.plan import (
    LayerPlan,
    QuantPlan,
    architecture_fingerprint,
    check_plan_matches,
    weights_fingerprint,
)


@pytest.fixture
def tiny_plan(tiny_model):
    return make_plan(tiny_model, QDiT4SRConfig(wbits=4, abits=4, svd_rank=8, local_rank=2, steps=5))


def test_json_round_trip(tmp_path, tiny_plan):
    path = tiny_plan.save(tmp_path / "plan.json")
    loaded = QuantPlan.load(path)
    assert loaded == tiny_plan
    assert loaded.to_json() == tiny_plan.to_json()
    data = json.loads(path.read_text())
    assert data["schema"] == "qdit4sr-export/quant-plan" and data["version"] == 1
    layer = data["layers"]["transformer_blocks.0.attn.to_q"]
    assert layer["wbits"] == 4 and layer["abits"] == [4] * 5 and layer["svd_rank"] == 8
    assert layer["rotation"]["n"] == 64 and len(layer["local_block"]) == 2


def test_step_for_timestep_maps_by_value(tiny_plan):
    grid = tiny_plan.timesteps
    assert [tiny_plan.step_for_timestep(t) for t in grid] == list(range(len(grid)))
    assert tiny_plan.step_for_timestep(grid[1] + 0.4 * (grid[0] - grid[1])) == 1
    assert tiny_plan.step_for_timestep(5000.0) == 0
    assert tiny_plan.step_for_timestep(-3.0) == len(grid) - 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="other"), "not a QuantPlan"),
        (lambda d: d.update(version=99), "version 99 is not supported"),
        (lambda d: d["layers"]["transformer_blocks.0.attn.to_q"].pop("wbits"), "transformer_blocks.0.attn.to_q"),
        (lambda d: d.pop("timesteps"), "missing or malformed key"),
        (lambda d: d["layers"]["transformer_blocks.0.attn.to_q"].update(wbits=12), "to_q': wbits 12 not in 2..8"),
        (lambda d: d["layers"]["transformer_blocks.0.attn.to_q"].update(group_size=48), "does not divide"),
        (lambda d: d["layers"]["transformer_blocks.0.attn.to_q"].update(bogus=1), "unknown key"),
        (lambda d: d["layers"]["transformer_blocks.0.attn.to_q"].update(weight_format="fp4"), "weight_format"),
    ],
)
def test_bad_plan_files(tmp_path, tiny_plan, mutate, message):
    data = tiny_plan.to_dict()
    mutate(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        QuantPlan.load(path)


def test_unreadable_plan_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        QuantPlan.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        QuantPlan.load(tmp_path / "bad.json")


def test_plan_must_match_model(tiny_plan, tiny_model):
    linears = quantizable_linears(tiny_model)
    weights = weights_fingerprint(tiny_model, sorted(linears))
    check_plan_matches(tiny_plan, tiny_model.config, linears, weights)

    other = build_dit4sr("dit4sr-small", device="meta")
    with pytest.raises(UserError, match="does not cover 30 model layer"):
        check_plan_matches(tiny_plan, other.config, quantizable_linears(other), None)

    fewer = dict(linears)
    fewer.pop("transformer_blocks.0.attn.to_q")
    with pytest.raises(UserError, match="model lacks.*transformer_blocks.0.attn.to_q"):
        check_plan_matches(tiny_plan, tiny_model.config, fewer, weights)

    with pytest.raises(UserError, match="weights"):
        check_plan_matches(tiny_plan, tiny_model.config, linears, "0" * 64)

    import dataclasses

    changed = dataclasses.replace(tiny_model.config, control_scale=1.0)
    with pytest.raises(UserError, match="fingerprint does not match"):
        check_plan_matches(tiny_plan, changed, linears, weights)


def test_fingerprints_are_stable(tiny_model):
    linears = quantizable_linears(tiny_model)
    assert architecture_fingerprint(tiny_model.config, linears) == architecture_fingerprint(tiny_model.config, linears)
    meta = build_dit4sr("dit4sr-tiny", device="meta")
    assert weights_fingerprint(meta, sorted(linears)) is None


def test_layer_plan_round_trip():
    lp = LayerPlan(in_features=8, out_features=4, wbits=3, abits=(4, None, 2), rotation={"n": 8, "seed": 1,
                   "block": None}, svd_rank=2, local_block=(2, 4), active=False, weight_variance=0.5,
                   act_variance=(1.0, 2.0, 3.0))
    assert LayerPlan.from_dict(json.loads(json.dumps(lp.to_dict())), "x") == lp


def test_tensor_sidecar_is_checked(tmp_path, tiny_plan):
    import dataclasses

    import torch

    plan = dataclasses.replace(tiny_plan, tensors={"transformer_blocks.0.attn.to_q.smooth": torch.ones(64)})
    path = plan.save(tmp_path / "p.json")
    side = tmp_path / "p.tensors.safetensors"
    assert json.loads(path.read_text())["tensor_file"]["name"] == side.name
    assert torch.equal(QuantPlan.load(path).tensors["transformer_blocks.0.attn.to_q.smooth"], torch.ones(64))
    side.write_bytes(side.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="does not match the plan's checksum"):
        QuantPlan.load(path)
    side.unlink()
    with pytest.raises(UserError, match="tensor file p.tensors.safetensors is missing"):
        QuantPlan.load(path)
