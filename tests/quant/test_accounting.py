import pytest

from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.quant.accounting import account, quantizable_linears, tokens_per_linear
from qdit4sr_export.quant.methods.qdit4sr import QDiT4SRConfig, make_plan


@pytest.fixture(scope="module")
def medium():
    return build_dit4sr("dit4sr-medium", device="meta")


@pytest.mark.parametrize("local_rank, params_m", [(4, 454.78), (8, 465.39), (16, 486.62), (32, 529.06)])
def test_paper_model_sizes(medium, local_rank, params_m):
    plan = make_plan(medium, QDiT4SRConfig(wbits=4, svd_rank=32, local_rank=local_rank, steps=4))
    acc = account(plan, medium)
    assert acc.params_m == pytest.approx(params_m, rel=1e-3)
    assert acc.fp_params == 2_716_814_144
    assert acc.avg_wbits == 4


def test_w4_local8_is_the_papers_5_8x(medium):
    plan = make_plan(medium, QDiT4SRConfig(wbits=4, svd_rank=32, local_rank=8, steps=4))
    assert round(account(plan, medium).size_ratio, 1) == 5.8


def test_bops_ratio_without_branches(medium):
    plan = make_plan(medium, QDiT4SRConfig(wbits=4, abits=4, svd_rank=0, local_rank=0, steps=4))
    acc = account(plan, medium)
    assert acc.fp_bops_per_step / acc.bops_per_step == pytest.approx(64.0)  # (32*32) / (4*4)


def test_tokens_seen_by_each_linear(medium):
    rows = tokens_per_linear(medium, latent_side=64, text_tokens=333)
    n = 32 * 32  # tokens per stream for a 64x64 latent with patch 2
    assert rows["transformer_blocks.0.attn.to_q"] == 2 * n  # x, then the shared projection of the LR tokens
    assert rows["transformer_blocks.0.attn.to_q_control"] == n
    assert rows["transformer_blocks.0.attn.to_k_control"] == n  # computed, then discarded
    assert rows["transformer_blocks.0.attn.add_q_proj"] == 333
    assert rows["transformer_blocks.0.ff.net.2"] == 2 * n
    assert rows["transformer_blocks.0.norm1.linear"] == 1
    assert "transformer_blocks.0.attn2.add_q_proj" not in rows  # never called
    assert len(quantizable_linears(medium)) == 585
