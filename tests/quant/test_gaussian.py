"""Tests for the Gaussian quantizer: exact kappa/clip table, Monte Carlo agreement, weight quantization, errors."""

import math

import numpy as np
import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import (
    BITS,
    GRIDS,
    QuantizedWeight,
    check_bits,
    fake_quantize_midrise,
    fake_quantize_tokens,
    fake_quantize_weight,
    kappa,
    kappa_table,
    optimal_clip,
    qmax,
    quantize_weight,
    quantizer_mse,
    token_scales,
)

# Reference (exact numerical integration): bits -> (clip, kappa) per grid.
TABLE = {
    "midrise": {
        2: (1.9914, 0.11885),
        3: (2.3441, 0.03744),
        4: (2.6816, 0.011543),
        5: (3.0102, 0.0034952),
        6: (3.3300, 0.0010400),
        7: (3.6395, 3.0433e-4),
        8: (3.9376, 8.7686e-5),
    },
    "integer": {
        2: (1.2240, 0.19017),
        3: (1.9523, 0.04686),
        4: (2.4739, 0.012889),
        5: (2.8987, 0.0036932),
        6: (3.2701, 0.0010693),
        7: (3.6075, 3.0862e-4),
        8: (3.9205, 8.8308e-5),
    },
}
CASES = [(g, b) for g in GRIDS for b in BITS]


def same_4_digits(x: float, ref: float) -> bool:
    # The reference is rounded to 4-5 significant digits: agree to within half a unit in the 4th.
    return abs(x - ref) <= 0.5e-3 * abs(ref) * 1.0001


@pytest.mark.parametrize("grid,bits", CASES)
def test_table(grid, bits):
    clip, kap = TABLE[grid][bits]
    assert same_4_digits(optimal_clip(bits, grid), clip)
    assert same_4_digits(kappa(bits, grid), kap)


@pytest.mark.parametrize("grid,bits", CASES)
def test_optimal_clip_is_a_minimum(grid, bits):
    c, k = optimal_clip(bits, grid), kappa(bits, grid)
    assert k == quantizer_mse(c, bits, grid)
    for d in (1e-3, 1e-2, 0.2):
        assert quantizer_mse(c - d, bits, grid) > k
        assert quantizer_mse(c + d, bits, grid) > k


def numpy_quantizer(z: np.ndarray, clip: float, bits: int, grid: str) -> np.ndarray:
    if grid == "integer":
        m = 2 ** (bits - 1) - 1
        step = clip / m
        return np.clip(np.round(z / step), -m, m) * step
    half = 2 ** (bits - 1)
    delta = clip / half
    return (np.clip(np.floor(z / delta), -half, half - 1) + 0.5) * delta


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits,clip", [(2, 0.3), (2, 3.0), (3, 1.5), (4, 4.0), (6, 2.0)])
def test_closed_form_matches_numerical_integration(grid, bits, clip):
    # Thresholds are midpoints, so (z - Q(z))^2 is continuous: the trapezoid rule converges as h^2.
    z = np.linspace(-12.0, 12.0, 480_001)
    f = (z - numpy_quantizer(z, clip, bits, grid)) ** 2 * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    numeric = float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(z)))
    assert quantizer_mse(clip, bits, grid) == pytest.approx(numeric, rel=1e-6)


def test_kappa_decreases_faster_than_it_would_with_constant_clip():
    for grid in GRIDS:
        table = kappa_table(grid)
        assert sorted(table) == list(BITS)
        ratios = [table[b] / table[b + 1] for b in range(2, 8)]
        # Past 2-3 bits each extra bit buys less than 6 dB (the optimal clip grows with b), so kappa(b) * 4^b
        # is not constant. Only integer 2 -> 3 bits gains slightly more (ratio 4.06: ternary wastes a level).
        assert all(3.0 < r < 4.1 for r in ratios), ratios
        assert all(r < 4.0 for r in ratios[1:]) and (grid == "integer" or ratios[0] < 4.0), ratios
        scaled = [table[b] * 4.0**b for b in range(3, 9)]
        assert all(a < b for a, b in zip(scaled, scaled[1:])), scaled
        assert scaled[-1] / scaled[0] > 1.5
    assert kappa_table() == kappa_table("integer")


@pytest.fixture(scope="module")
def gaussian_tokens() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    std = torch.logspace(-1, 1, 2000).unsqueeze(1)  # per-token sigma from 0.1 to 10
    return torch.randn(2000, 1024, generator=gen) * std


def relative_mse(z: torch.Tensor, q: torch.Tensor) -> float:
    return float(((z - q).square().mean(-1) / z.square().mean(-1)).mean())


@pytest.mark.parametrize("bits", BITS)
def test_token_quantizer_monte_carlo_matches_kappa(gaussian_tokens, bits):
    q = fake_quantize_tokens(gaussian_tokens, bits)
    assert q.dtype == gaussian_tokens.dtype and q.shape == gaussian_tokens.shape
    assert relative_mse(gaussian_tokens, q) == pytest.approx(kappa(bits, "integer"), rel=0.015)
    # The result really lies on the per-token integer grid.
    codes = q / token_scales(gaussian_tokens, bits)
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.abs().max() <= qmax(bits) + 1e-3


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_midrise_monte_carlo_matches_kappa(gaussian_tokens, bits):
    q = fake_quantize_midrise(gaussian_tokens, bits)
    assert q.unique().numel() > 2 ** bits  # different per-token scales
    assert relative_mse(gaussian_tokens, q) == pytest.approx(kappa(bits, "midrise"), rel=0.015)


def test_token_scales_shape_dtype_and_zero_tokens():
    z = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    z[1, 2] = 0
    s = token_scales(z, 4)
    assert s.shape == (2, 3, 1) and s.dtype == torch.float32 and bool((s > 0).all())
    expected = z.float().square().mean(-1, keepdim=True).sqrt() * optimal_clip(4) / qmax(4)
    assert torch.allclose(s[0], expected[0])
    q = fake_quantize_tokens(z, 4)
    assert q.dtype == torch.bfloat16 and q.shape == z.shape
    assert not q.isnan().any() and bool((q[1, 2] == 0).all())
    assert token_scales(z.double(), 4).dtype == torch.float64


def test_token_rounding_is_half_to_even(monkeypatch):
    import qdit4sr_export.quant.gaussian as gaussian

    # Pin the scale to 1 so that ties are exact: round-half-to-even, then clamp to +-qmax.
    monkeypatch.setattr(gaussian, "token_scales", lambda z, bits, clip="gaussian": torch.ones(*z.shape[:-1], 1))
    z = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 3.5, 9.0]])
    assert gaussian.fake_quantize_tokens(z, 3).tolist() == [[0.0, 2.0, 2.0, -0.0, -2.0, 3.0, 3.0]]


def gaussian_rows(out: int = 64, inp: int = 4096) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(out, inp, generator=gen) * torch.linspace(0.01, 2.0, out).unsqueeze(1)


@pytest.mark.parametrize("clip", ["gaussian", "minmax"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_weight_codes_and_dequantize(bits, clip):
    w = gaussian_rows(16, 256)
    qw = quantize_weight(w, bits, clip=clip)
    assert qw.bits == bits and qw.codes.dtype == torch.int8 and qw.codes.shape == (16, 256)
    assert qw.scale.dtype == torch.float32 and qw.scale.shape == (16, 1)
    peak = int(qw.codes.abs().max())
    assert peak == qmax(bits) if clip == "minmax" or bits < 8 else 0 < peak <= qmax(bits)
    assert torch.equal(qw.dequantize(), fake_quantize_weight(w, bits, clip=clip))
    assert qw.dequantize(torch.float16).dtype == torch.float16
    assert fake_quantize_weight(w.half(), bits, clip=clip).dtype == torch.float16


def test_gaussian_weight_scale_uses_row_rms():
    w = gaussian_rows(8, 512)
    expected = w.double().square().mean(-1, keepdim=True).sqrt() * optimal_clip(4) / qmax(4)
    assert torch.allclose(quantize_weight(w, 4).scale.double(), expected, rtol=1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_minmax_never_clips(bits):
    w = gaussian_rows(32, 1024)
    qw = quantize_weight(w, bits, clip="minmax")
    assert bool((qw.codes.abs().amax(-1) == qmax(bits)).all())
    deq = qw.dequantize()
    assert torch.allclose(deq.abs().amax(-1), w.abs().amax(-1), rtol=1e-6)
    assert float((deq - w).abs().max()) <= float(qw.scale.max()) * 0.5 * (1 + 1e-5)


def test_gaussian_clip_beats_minmax_on_gaussian_rows():
    w = gaussian_rows()
    mse = {c: float(((fake_quantize_weight(w, 4, clip=c) - w) / w.std(-1, keepdim=True)).square().mean())
           for c in ("gaussian", "minmax")}
    assert mse["gaussian"] < 0.8 * mse["minmax"]
    assert mse["gaussian"] == pytest.approx(kappa(4), rel=0.05)


@pytest.mark.parametrize("clip", ["gaussian", "minmax"])
def test_zero_rows(clip):
    w = gaussian_rows(4, 32)
    w[2] = 0
    qw = quantize_weight(w, 4, clip=clip)
    assert bool((qw.scale > 0).all()) and bool((qw.codes[2] == 0).all())
    deq = qw.dequantize()
    assert not deq.isnan().any() and bool((deq[2] == 0).all())
    assert not quantize_weight(torch.zeros(3, 5), 3, clip=clip).dequantize().isnan().any()


@pytest.mark.parametrize("bad", [1, 9, 0, -4, 4.5, "4", 4.0, True, None])
def test_check_bits_rejects(bad):
    with pytest.raises(UserError, match="bits must be"):
        check_bits(bad)
    with pytest.raises(UserError, match="bits must be"):
        kappa(bad)


def test_check_bits_accepts_and_names_what():
    assert [check_bits(b) for b in BITS] == list(BITS)
    assert check_bits(np.int64(4)) == 4 and type(check_bits(np.int64(4))) is int
    with pytest.raises(UserError, match=r"^weight_bits must be in 2\.\.8, got 9$"):
        check_bits(9, "weight_bits")


def test_bad_grid_clip_and_inputs():
    with pytest.raises(UserError, match="grid must be one of integer, midrise"):
        kappa(4, "uniform")
    with pytest.raises(UserError, match="grid"):
        optimal_clip(4, "nf4")
    with pytest.raises(UserError, match="grid"):
        kappa_table("x")
    with pytest.raises(UserError, match="clip must be one of gaussian, minmax"):
        quantize_weight(torch.ones(2, 2), 4, clip="percentile")
    for clip in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(UserError, match="clip must be a finite positive number"):
            quantizer_mse(clip, 4, "integer")
    with pytest.raises(UserError, match="floating-point"):
        fake_quantize_tokens(torch.ones(2, 4, dtype=torch.int32), 4)
    with pytest.raises(UserError, match="non-empty last dimension"):
        token_scales(torch.ones(3, 0), 4)
    with pytest.raises(UserError, match="2-D"):
        quantize_weight(torch.ones(2, 2, 2), 4)


def test_quantized_weight_validates_fields():
    codes, scale = torch.zeros(3, 4, dtype=torch.int8), torch.ones(3, 1)
    QuantizedWeight(codes, scale, 4)
    with pytest.raises(UserError, match="exceed"):
        QuantizedWeight(torch.full((3, 4), 8, dtype=torch.int8), scale, 4)
    with pytest.raises(UserError, match="exceed"):
        QuantizedWeight(torch.full((3, 4), -128, dtype=torch.int8), scale, 8)
    with pytest.raises(UserError, match="int8"):
        QuantizedWeight(codes.int(), scale, 4)
    with pytest.raises(UserError, match="shape"):
        QuantizedWeight(codes, torch.ones(3), 4)
    with pytest.raises(UserError, match="bits"):
        QuantizedWeight(codes, scale, 9)


def test_minmax_tokens_never_clip():
    from qdit4sr_export.quant.gaussian import fake_quantize_tokens, token_scales

    z = torch.randn(50, 256) * torch.linspace(0.1, 10, 50)[:, None]
    scale = token_scales(z, 4, clip="minmax")
    torch.testing.assert_close(scale * 7, z.abs().amax(dim=-1, keepdim=True))
    q = fake_quantize_tokens(z, 4, clip="minmax")
    assert (q.abs().amax(dim=-1) - z.abs().amax(dim=-1)).abs().max() < 1e-5
    gauss = fake_quantize_tokens(z, 4)
    assert (gauss - z).pow(2).mean() < (q - z).pow(2).mean()  # Gaussian clip wins on Gaussian tokens
    with pytest.raises(UserError, match="clip must be one of"):
        fake_quantize_tokens(z, 4, clip="percentile")


def test_group_wise_quantization_has_one_scale_per_group():
    from qdit4sr_export.quant.gaussian import fake_quantize_tokens, fake_quantize_weight

    torch.manual_seed(0)
    w = torch.randn(6, 128)
    w[:, :64] *= 100  # the first group is much wider than the second
    grouped = fake_quantize_weight(w, 4, clip="minmax", group_size=64)
    per_row = fake_quantize_weight(w, 4, clip="minmax")
    assert (grouped - w)[:, 64:].abs().max() < (per_row - w)[:, 64:].abs().max() / 10
    torch.testing.assert_close(grouped[:, :64], fake_quantize_weight(w[:, :64], 4, clip="minmax"))
    torch.testing.assert_close(grouped[:, 64:], fake_quantize_weight(w[:, 64:].contiguous(), 4, clip="minmax"))
    z = torch.randn(3, 5, 128)
    torch.testing.assert_close(fake_quantize_tokens(z, 4, group_size=32)[..., 32:64],
                               fake_quantize_tokens(z[..., 32:64].contiguous(), 4))
    with pytest.raises(UserError, match="group size 48 must be a positive divisor of the activation width 128"):
        fake_quantize_tokens(z, 4, group_size=48)
