"""Q-DiT4SR's data-aware smoothing search: scored by the simulation's own layer, never worse than no smoothing."""

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.hadamard import Rotation
from qdit4sr_export.quant.hsvd import select_block
from qdit4sr_export.quant.layer_plan import LayerPlan
from qdit4sr_export.quant.rotated_smoothing import layer_output_error, search_rotated_smoothing


def _layer(inp=64, out=96, group=None):
    return LayerPlan(in_features=inp, out_features=out, wbits=4, abits=(None,),
                     rotation={"kind": "hadamard", **Rotation(inp, seed=0).to_dict()}, svd_rank=4,
                     local_block=select_block(out, inp, 2), group_size=group)


def _data(inp=64, out=96, outliers=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) / inp ** 0.5
    x = torch.randn(256, inp, generator=g)
    x[:, :4] *= outliers  # a few wide input channels, as DiT activations have
    return x, w


@pytest.mark.parametrize("group", [None, 32])
def test_search_picks_a_smoothing_that_lowers_the_layer_error(group):
    x, w = _data(outliers=30.0)
    plan = _layer(group=group)
    choice = search_rotated_smoothing(x, w, plan, abits=4, alphas=(0.25, 0.5, 0.75))
    assert len(choice.errors) == 4 and choice.errors[0] == layer_output_error(x, w, plan, 4, None)
    assert choice.alpha in (0.25, 0.5, 0.75) and choice.scales.shape == (64,)
    assert choice.error == min(choice.errors) < 0.2 * choice.errors[0]  # measured 0.165 / 0.167 of no smoothing
    assert choice.error == layer_output_error(x, w, plan, 4, choice.scales)


def test_no_smoothing_wins_when_nothing_scores_better():
    x, w = _data(outliers=1.0)
    choice = search_rotated_smoothing(x, w, _layer(), abits=8, alphas=(1.0,))
    assert choice.errors[1] >= choice.errors[0] and choice.alpha is None and choice.scales is None


def test_shapes_that_do_not_fit_the_layer_are_one_line_errors():
    x, w = _data()
    with pytest.raises(UserError, match="do not fit a 64 -> 96 layer"):
        search_rotated_smoothing(x[:, :32], w, _layer(), abits=4)
    x[0, 0] = float("nan")
    with pytest.raises(UserError, match="not finite"):
        search_rotated_smoothing(x, w, _layer(), abits=4, alphas=(0.5,))
