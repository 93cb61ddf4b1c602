"""Tests for GPTQ: gain over RTN on correlated inputs, H = I invariant, grid/format, act-order, dead inputs, errors."""

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import qmax, quantize_weight
from qdit4sr_export.quant.gptq import GPTQResult, HessianAccumulator, gptq_quantize, rtn_quantize

N, IN, OUT = 2048, 256, 128


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def correlated():
    """X = Z A with a random mixing matrix (strongly correlated features), W ~ N(0, 1), H from the accumulator."""
    g = _gen(0)
    x = torch.randn(N, IN, generator=g) @ (torch.randn(IN, IN, generator=g) / IN**0.5)
    w = torch.randn(OUT, IN, generator=g)
    acc = HessianAccumulator(IN)
    acc.add(x)
    return x, w, acc.hessian()


def _out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float((x @ w.T - x @ wq.T).norm())


def _check_format(res: GPTQResult, w: torch.Tensor, bits: int, group_size: int) -> None:
    out, in_f = w.shape
    assert res.codes.dtype == torch.int8 and res.codes.shape == (out, in_f)
    assert res.scales.dtype == torch.float32 and res.scales.shape == (out, in_f // group_size)
    assert res.weight.dtype == torch.float32 and res.weight.shape == (out, in_f)
    assert res.group_size == group_size and res.bits == bits
    assert int(res.codes.abs().max()) <= qmax(bits)
    assert torch.equal(res.dequantize(), res.weight)
    for gi in range(in_f // group_size):
        cols = slice(gi * group_size, (gi + 1) * group_size)
        assert torch.equal(res.codes[:, cols].float() * res.scales[:, gi : gi + 1], res.weight[:, cols])
    assert bool(torch.isfinite(res.weight).all())


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size", [None, 64])
def test_gptq_beats_rtn_on_correlated_inputs(correlated, bits, group_size):
    x, w, h = correlated
    gptq = gptq_quantize(w, h, bits, group_size=group_size)
    rtn = rtn_quantize(w, bits, group_size=group_size)
    _check_format(gptq, w, bits, group_size or IN)
    _check_format(rtn, w, bits, group_size or IN)
    e_gptq, e_rtn = _out_err(x, w, gptq.weight), _out_err(x, w, rtn.weight)
    assert e_gptq <= 0.8 * e_rtn, (e_gptq, e_rtn)
    # Scales: the first group's (or the row's) from the original weights, later groups' from updated ones.
    assert torch.equal(gptq.scales[:, :1], rtn.scales[:, :1])
    if group_size is not None:
        assert not torch.equal(gptq.scales[:, 1:], rtn.scales[:, 1:])


@pytest.mark.parametrize("clip", ["minmax", "gaussian"])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_gives_rtn_codes(clip, group_size, act_order):
    w = torch.randn(48, 128, generator=_gen(1))
    rtn = rtn_quantize(w, 3, group_size=group_size, clip=clip)
    res = gptq_quantize(w, torch.eye(128), 3, group_size=group_size, clip=clip, act_order=act_order, block_size=40)
    assert torch.equal(res.codes, rtn.codes)
    assert torch.equal(res.scales, rtn.scales)
    assert torch.equal(res.weight, rtn.weight)


@pytest.mark.parametrize("clip", ["minmax", "gaussian"])
def test_rtn_per_channel_matches_the_projects_weight_quantizer(clip):
    w = torch.randn(32, 96, generator=_gen(2))
    rtn = rtn_quantize(w, 4, clip=clip)
    ref = quantize_weight(w, 4, clip=clip)
    assert torch.equal(rtn.codes, ref.codes) and torch.equal(rtn.scales, ref.scale)


def _reference_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Unblocked OBS-form GPTQ in float64 (minmax): update with the inverse of the remaining H; each group's
    scale taken from its current (error-updated) weights when the loop reaches it."""
    w = w.double().clone()
    h = h.double().clone()
    h.diagonal().add_(0.01 * h.diagonal().mean())
    m = qmax(bits)
    codes = torch.zeros_like(w)
    for j in range(w.shape[1]):
        if j % group_size == 0:
            scale = (w[:, j : j + group_size].abs().amax(dim=1) / m).float().double()
        hinv = torch.linalg.inv(h[j:, j:])
        c = torch.clamp(torch.round(w[:, j] / scale), -m, m)
        codes[:, j] = c
        err = (w[:, j] - c * scale) / hinv[0, 0]
        w[:, j:] -= torch.outer(err, hinv[0, :])
    return codes


@pytest.mark.parametrize("group_size", [48, 16])
def test_matches_unblocked_reference_for_any_block_size(group_size):
    g = _gen(3)
    x = torch.randn(256, 48, generator=g) @ torch.randn(48, 48, generator=g)
    w = torch.randn(16, 48, generator=g)
    acc = HessianAccumulator(48)
    acc.add(x)
    h = acc.hessian()
    ref = _reference_gptq(w, h, 4, group_size)
    assert float((rtn_quantize(w, 4, group_size=group_size).codes.double() == ref).double().mean()) < 0.9
    for block in (5, 16, 128):  # 5: blocks not aligned with groups
        res = gptq_quantize(w, h, 4, group_size=group_size, block_size=block)
        assert float((res.codes.double() == ref).double().mean()) >= 0.99


@pytest.mark.parametrize("group_size", [None, 64])
def test_act_order_valid_and_deterministic(correlated, group_size):
    x, w, _ = correlated
    # Uneven feature scales so the diag(H) ordering is far from the identity permutation.
    xs = x * torch.linspace(0.2, 3.0, IN)[torch.randperm(IN, generator=_gen(4))]
    acc = HessianAccumulator(IN)
    acc.add(xs)
    h = acc.hessian()
    a = gptq_quantize(w, h, 3, group_size=group_size, act_order=True)
    b = gptq_quantize(w, h, 3, group_size=group_size, act_order=True)
    _check_format(a, w, 3, group_size or IN)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    # Static groups: the scales are RTN's (original weights), only the codes differ.
    rtn = rtn_quantize(w, 3, group_size=group_size)
    assert torch.equal(a.scales, rtn.scales)
    assert _out_err(xs, w, a.weight) <= 0.8 * _out_err(xs, w, rtn.weight)


@pytest.mark.parametrize("act_order", [False, True])
def test_dead_inputs_are_zeroed_without_nan(act_order):
    g = _gen(5)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)
    dead = [0, 7, 40, 63]
    x[:, dead] = 0.0
    w = torch.randn(24, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(x)
    res = gptq_quantize(w, acc.hessian(), 4, group_size=16, act_order=act_order)
    _check_format(res, w, 4, 16)
    assert not bool(res.codes[:, dead].any())
    assert _out_err(x, w, res.weight) < _out_err(x, w, rtn_quantize(w, 4, group_size=16).weight)
    # All-zero Hessian: every input dead, the whole weight becomes zero.
    zero = gptq_quantize(w, torch.zeros(64, 64), 4, act_order=act_order)
    assert not bool(zero.codes.any()) and bool(torch.isfinite(zero.scales).all())


def test_accumulator_two_adds_equal_one_concatenated_add():
    g = _gen(6)
    x1, x2 = torch.randn(2, 10, 32, generator=g), torch.randn(37, 32, generator=g)
    split, joint = HessianAccumulator(32), HessianAccumulator(32)
    split.add(x1)
    split.add(x2)
    joint.add(torch.cat([x1.reshape(-1, 32), x2]))
    assert split.count == joint.count == 57
    assert split.hessian().dtype == torch.float64
    # float32 inputs: the Gram matrices are float32 products summed in float64.
    torch.testing.assert_close(split.hessian(), joint.hessian(), rtol=1e-5, atol=1e-5)
    xx = torch.cat([x1.reshape(-1, 32), x2]).double()
    torch.testing.assert_close(joint.hessian(), 2 * xx.T @ xx / 57, rtol=1e-5, atol=1e-5)


def test_accumulator_weighted_formula():
    g = _gen(7)
    x1, x2 = torch.randn(20, 16, generator=g).double(), torch.randn(30, 16, generator=g).double()
    acc = HessianAccumulator(16)
    acc.add(x1, weight=2.5)
    acc.add(x2, weight=0.5)
    acc.add(torch.randn(9, 16, generator=g), weight=0.0)  # counted as rows, contributes nothing
    expected = (2.5 * 2 * x1.T @ x1 + 0.5 * 2 * x2.T @ x2) / (2.5 * 20 + 0.5 * 30)
    torch.testing.assert_close(acc.hessian(), expected)
    assert acc.count == 59 and acc.total_weight == pytest.approx(65.0)


def test_accumulator_errors():
    acc = HessianAccumulator(8)
    with pytest.raises(UserError, match="no calibration rows"):
        acc.hessian()
    with pytest.raises(UserError, match=r"\(\.\.\., 8\)"):
        acc.add(torch.randn(4, 9))
    with pytest.raises(UserError, match="weight"):
        acc.add(torch.randn(4, 8), weight=-1.0)
    with pytest.raises(UserError, match="non-finite"):
        acc.add(torch.full((2, 8), float("nan")))
    with pytest.raises(UserError, match="in_features"):
        HessianAccumulator(0)


def test_quantize_errors():
    w, h = torch.randn(8, 32), torch.eye(32)
    with pytest.raises(UserError, match=r"hessian shape \(16, 16\).*weight shape \(8, 32\)"):
        gptq_quantize(w, torch.eye(16), 4)
    with pytest.raises(UserError, match="group_size 12 does not divide in_features 32"):
        gptq_quantize(w, h, 4, group_size=12)
    with pytest.raises(UserError, match="group_size 12"):
        rtn_quantize(w, 4, group_size=12)
    for bits in (1, 9):
        with pytest.raises(UserError, match="bits"):
            gptq_quantize(w, h, bits)
    bad = h.clone()
    bad[3, 5] = float("inf")
    with pytest.raises(UserError, match="non-finite"):
        gptq_quantize(w, bad, 4)
    for damp in (0.0, -0.01):
        with pytest.raises(UserError, match="damp"):
            gptq_quantize(w, h, 4, damp=damp)
    with pytest.raises(UserError, match="clip"):
        gptq_quantize(w, h, 4, clip="mse")
    with pytest.raises(UserError, match="block_size"):
        gptq_quantize(w, h, 4, block_size=0)
    with pytest.raises(UserError, match="positive definite"):
        gptq_quantize(w, -torch.eye(32), 4)
