"""Tests for channel smoothing: SVDQuant alpha search, PTQ4DiT salience balancing, Spearman, group quantizer."""

import math

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.smoothing import (
    ALPHA_GRID,
    SmoothingSearchResult,
    channel_absmax,
    group_fake_quantize,
    salience_balance,
    search_smoothing,
    smooth,
    smoothing_error,
    smoothing_scales,
    spearman,
    weight_absmax,
)

OUTLIERS = [3, 40, 77, 100]


def outlier_layer(seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (2, 96, 128) with a few channels 30x larger, and a (64, 128) weight."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 96, 128, generator=g, dtype=dtype)
    x[..., OUTLIERS] *= 30.0
    w = torch.randn(64, 128, generator=g, dtype=dtype) * 0.05
    return x, w


def ref_group_quant(t: torch.Tensor, bits: int, g: int) -> torch.Tensor:
    """Loop reference: symmetric min-max per row and per group of g columns."""
    m = 2 ** (bits - 1) - 1
    out = torch.empty_like(t)
    for i in range(t.shape[0]):
        for j in range(0, t.shape[1], g):
            blk = t[i, j : j + g]
            s = blk.abs().max() / m
            out[i, j : j + g] = torch.zeros_like(blk) if s == 0 else torch.clamp(torch.round(blk / s), -m, m) * s
    return out


def brute_objective(x, w, alpha, bits, g, low_rank=0) -> float:
    """The search objective written out independently of the module."""
    x2 = x.reshape(-1, x.shape[-1])
    s = x2.abs().amax(0) ** alpha / w.abs().amax(0) ** (1 - alpha)
    xs, ws = x2 / s, w * s
    fp = torch.zeros(x2.shape[0], w.shape[0], dtype=x.dtype)
    if low_rank:
        u, sv, vh = torch.linalg.svd(ws, full_matrices=False)
        lr = u[:, :low_rank] @ torch.diag(sv[:low_rank]) @ vh[:low_rank]
        ws, fp = ws - lr, xs @ lr.T
    y = ref_group_quant(xs, bits, g) @ ref_group_quant(ws, bits, g).T + fp
    return float(torch.linalg.norm(x2 @ w.T - y))


def test_alpha_grid():
    assert len(ALPHA_GRID) == 20
    assert ALPHA_GRID[0] == pytest.approx(0.05) and ALPHA_GRID[-1] == 1.0
    assert all(b - a == pytest.approx(0.05) for a, b in zip(ALPHA_GRID, ALPHA_GRID[1:]))


def test_absmax_and_scales():
    x = torch.tensor([[[1.0, -5.0], [2.0, 0.5]], [[-3.0, 1.0], [0.0, 0.0]]])
    assert torch.equal(channel_absmax(x), torch.tensor([3.0, 5.0]))
    w = torch.tensor([[1.0, -4.0], [-2.0, 1.0], [0.5, 0.0]])
    assert torch.equal(weight_absmax(w), torch.tensor([2.0, 4.0]))
    s = smoothing_scales(torch.tensor([4.0, 9.0]), torch.tensor([1.0, 4.0]), 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 1.5]))
    assert torch.allclose(smoothing_scales(torch.tensor([4.0]), torch.tensor([2.0]), 1.0), torch.tensor([4.0]))
    assert torch.allclose(smoothing_scales(torch.tensor([4.0]), torch.tensor([2.0]), 0.0), torch.tensor([0.5]))
    z = smoothing_scales(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), 0.0)
    assert bool(torch.isfinite(z).all()) and bool((z > 0).all())


def test_group_fake_quantize_matches_loop():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(5, 24, generator=g, dtype=torch.float64)
    t[1, 8:16] = 0.0
    for bits, gs in [(4, 8), (3, 12), (8, 24)]:
        assert torch.allclose(group_fake_quantize(t, bits, gs), ref_group_quant(t, bits, gs), rtol=0, atol=1e-12)
    assert torch.equal(group_fake_quantize(t, 4, None), group_fake_quantize(t, 4, 24))
    t3 = t.reshape(1, 5, 24).to(torch.float16)
    q = group_fake_quantize(t3, 4, 8)
    assert q.dtype == torch.float16 and q.shape == t3.shape


def test_svdquant_smoothing_is_exact():
    x, w = outlier_layer()
    res = search_smoothing(x, w, alphas=(0.5,))
    xs, ws = smooth(x, w, res.scales)
    assert torch.allclose(xs @ ws.T, x @ w.T, rtol=0, atol=1e-10)


def test_search_returns_grid_minimum():
    x, w = outlier_layer(seed=2)
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    res = search_smoothing(x, w, bits_w=4, bits_a=4, group_size=32, alphas=alphas)
    assert isinstance(res, SmoothingSearchResult) and len(res.errors) == len(alphas)
    brute = [brute_objective(x, w, a, 4, 32) for a in alphas]
    assert res.errors == pytest.approx(brute, rel=1e-9)
    i = min(range(len(alphas)), key=lambda k: (brute[k], k))
    assert res.alpha == alphas[i] and res.error == pytest.approx(brute[i], rel=1e-9)
    assert torch.allclose(res.scales, smoothing_scales(channel_absmax(x), weight_absmax(w), alphas[i]))
    assert smoothing_error(x, w, res.scales, group_size=32) == pytest.approx(res.error, rel=1e-12)


def test_search_with_low_rank_matches_brute_force():
    x, w = outlier_layer(seed=3)
    alphas = (0.2, 0.6)
    res = search_smoothing(x, w, group_size=64, low_rank=8, alphas=alphas)
    brute = [brute_objective(x, w, a, 4, 64, low_rank=8) for a in alphas]
    assert res.errors == pytest.approx(brute, rel=1e-9)
    plain = search_smoothing(x, w, group_size=64, alphas=alphas)
    assert all(lr < p for lr, p in zip(res.errors, plain.errors))  # the FP rank-8 branch only helps


def test_ties_pick_first():
    x, w = outlier_layer(seed=4)
    # A quantizer that zeroes activations makes every alpha give the same error ||x W^T||: the first wins.
    res = search_smoothing(x, w, alphas=(0.7, 0.2, 0.9), act_quantizer=torch.zeros_like)
    assert res.errors[0] == res.errors[1] == res.errors[2] and res.alpha == 0.7
    assert torch.allclose(res.scales, smoothing_scales(channel_absmax(x), weight_absmax(w), 0.7))


def test_outlier_channels_smoothing_beats_no_smoothing():
    x, w = outlier_layer(seed=5)
    res = search_smoothing(x, w)  # INT4 g64 weights and activations, default grid
    ones = torch.ones(x.shape[-1], dtype=x.dtype)
    none = smoothing_error(x, w, ones)
    zero = smoothing_error(x, w, smoothing_scales(channel_absmax(x), weight_absmax(w), 0.0))
    ref = float(torch.linalg.norm(x.reshape(-1, 128) @ w.T))
    print(
        f"\noutlier layer W4A4 g64: best alpha {res.alpha:.2f} rel err {res.error / ref:.4f}; "
        f"no smoothing {none / ref:.4f}; alpha=0 {zero / ref:.4f}; alpha=0.5 {res.errors[9] / ref:.4f}"
    )
    assert res.error < 0.6 * none and res.error < 0.6 * zero  # about 0.49x in practice
    assert res.error == min(res.errors)


def test_float32_and_device_dtype():
    x, w = outlier_layer(seed=6, dtype=torch.float32)
    res = search_smoothing(x, w, alphas=(0.5,))
    assert res.scales.dtype == torch.float32 and math.isfinite(res.error)
    res_custom = search_smoothing(x, w, alphas=(0.5,), act_quantizer=lambda t: t, weight_quantizer=lambda t: t)
    assert res_custom.error < 1e-3 * res.error  # identity quantizers: only float32 rounding remains


def test_spearman():
    a = torch.tensor([1.0, 2.0, 2.0, 3.0])
    b = torch.tensor([1.0, 3.0, 2.0, 4.0])
    # ranks a = (1, 2.5, 2.5, 4), b = (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(a, b) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    # ties in both: ranks (1.5, 1.5, 3, 4) vs (1, 3, 3, 3), centred (-1, -1, .5, 1.5) . (-1.5, .5, .5, .5)
    # = 2.0, squared norms 4.5 and 3.0: rho = 2 / sqrt(13.5)
    c = torch.tensor([5.0, 5.0, 7.0, 9.0])
    d = torch.tensor([0.1, 0.4, 0.4, 0.4])
    assert spearman(c, d) == pytest.approx(2.0 / math.sqrt(13.5), abs=1e-12)
    x = torch.tensor([0.3, -1.0, 2.0, 7.0, 4.0])
    assert spearman(x, x.exp()) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, -x**3) == pytest.approx(-1.0, abs=1e-12)
    assert spearman(x, torch.ones(5)) == 0.0


def test_salience_weights_softmax_of_minus_rho():
    w_max = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    steps = torch.stack([w_max * 2, w_max.flip(0), torch.tensor([2.0, 1.0, 3.0, 5.0, 4.0], dtype=torch.float64)])
    b, weights = salience_balance(steps, w_max)
    rho = torch.tensor([spearman(s, w_max) for s in steps], dtype=torch.float64)
    assert rho.tolist() == pytest.approx([1.0, -1.0, 0.8])  # 1 - 6 * 4 / (5 * 24) for the swapped pairs
    assert torch.allclose(weights, torch.softmax(-rho, 0), atol=1e-15)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-15)
    assert weights[1] > weights[2] > weights[0]  # less correlated with the weight salience: more weight
    assert torch.allclose(b, ((weights[:, None] * steps).sum(0) / w_max).sqrt())


def test_salience_balance_hand_example():
    w_max = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    steps = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=torch.float64)  # rho = +1, -1
    b, weights = salience_balance(steps, w_max)
    w1 = math.exp(1) / (math.exp(1) + math.exp(-1))
    w0 = 1 - w1
    assert weights.tolist() == pytest.approx([w0, w1], abs=1e-15)
    s_x = [w0 * 1 + w1 * 3, 2.0, w0 * 3 + w1 * 1]
    assert b.tolist() == pytest.approx([math.sqrt(s_x[0] / 1), 1.0, math.sqrt(s_x[2] / 3)], abs=1e-14)


def test_salience_smoothing_is_exact():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 50, 32, generator=g, dtype=torch.float64)  # 4 timesteps
    x[..., 5] *= 25.0
    w = torch.randn(16, 32, generator=g, dtype=torch.float64)
    per_step = torch.stack([channel_absmax(x[k]) for k in range(4)])
    b, weights = salience_balance(per_step, weight_absmax(w))
    assert weights.shape == (4,) and b.shape == (32,)
    xs, ws = smooth(x, w, b)
    assert torch.allclose(xs @ ws.T, x @ w.T, rtol=0, atol=1e-10)


def test_user_errors():
    x, w = outlier_layer()
    with pytest.raises(UserError, match="channels"):
        search_smoothing(x, w[:, :64])
    with pytest.raises(UserError, match="does not divide"):
        search_smoothing(x, w, group_size=48)
    with pytest.raises(UserError, match="does not divide"):
        group_fake_quantize(x, 4, 100)
    with pytest.raises(UserError, match="non-empty"):
        search_smoothing(x[:, :0], w)
    with pytest.raises(UserError, match="non-empty"):
        channel_absmax(torch.empty(0, 8))
    with pytest.raises(UserError, match="alpha"):
        search_smoothing(x, w, alphas=(0.5, 1.5))
    with pytest.raises(UserError, match="alpha"):
        smoothing_scales(torch.ones(3), torch.ones(3), -0.1)
    with pytest.raises(UserError, match="alphas"):
        search_smoothing(x, w, alphas=())
    with pytest.raises(UserError, match="shape"):
        smoothing_scales(torch.ones(3), torch.ones(4), 0.5)
    with pytest.raises(UserError, match="low_rank"):
        search_smoothing(x, w, low_rank=65)
    with pytest.raises(UserError, match="bits"):
        search_smoothing(x, w, bits_a=1)
    with pytest.raises(UserError, match="equal length"):
        spearman(torch.ones(3), torch.ones(4))
    with pytest.raises(UserError, match="channels"):
        salience_balance(torch.ones(2, 3), torch.ones(4))
    with pytest.raises(UserError, match="non-negative"):
        salience_balance(-torch.ones(2, 3), torch.ones(3))
