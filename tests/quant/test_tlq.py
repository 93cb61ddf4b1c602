import itertools
import math

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.tlq import (
    ETA_GRID,
    PERCENTILE_GRID,
    TLQCodes,
    TLQParams,
    search_tlq,
    tlq_fake_quantize,
    tlq_quantize,
)


def _student_t(rows: int, cols: int, seed: int, scale: float = 0.02, df: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    chi2 = torch.randn(rows, cols, int(df), generator=g, dtype=torch.float64).square().sum(-1)
    return (scale * z / (chi2 / df).sqrt()).float()


def _laplace(rows: int, cols: int, seed: int, scale: float = 0.015) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(rows, cols, generator=g, dtype=torch.float64) - 0.5
    return (-scale * u.sign() * torch.log1p(-2 * u.abs())).float()


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean())


def _rtn_minmax(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric per-row min-max round-to-nearest with 2^bits levels (never clips)."""
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
    return torch.round((w - lo) / scale).clamp(0, 2**bits - 1) * scale + lo


# ------------------------------------------------------------------------------------------------ grid search


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_search_picks_brute_force_minimum(bits):
    w = _student_t(12, 97, seed=bits)
    w[w.abs() < 0.002] = 0.0  # exact zeros exercise the zero rules
    w[2] = w[2].abs()  # a row without negatives
    w[5] = 0.0  # an all-zero row
    etas, pcts = (0.0, 0.005, 0.03, 0.2), (0.5, 0.9, 0.99, 1.0)
    best, mse = search_tlq(w, bits, etas=etas, percentiles=pcts)
    brute = {
        c: _mse(tlq_fake_quantize(w, TLQParams(*c, bits=bits)), w) for c in itertools.product(etas, pcts, pcts)
    }
    low = min(brute.values())
    first = next(c for c, v in brute.items() if v <= low * (1 + 1e-9))
    assert (best.eta, best.p_pos, best.p_neg) == first
    assert mse == pytest.approx(brute[first], rel=1e-12, abs=0.0)


def test_search_full_grid_and_ties():
    w = _student_t(16, 200, seed=7)
    best, mse = search_tlq(w, 4)
    assert best.eta in ETA_GRID and best.p_pos in PERCENTILE_GRID and best.p_neg in PERCENTILE_GRID
    assert mse == pytest.approx(_mse(tlq_fake_quantize(w, best), w), rel=1e-12)
    # a row of 8 entries per sign: every percentile in the grid clips nothing, so p ties go to the first one
    small = torch.tensor([[0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08]] * 2)
    best, _ = search_tlq(small, 2, etas=(0.1, 0.1), percentiles=(1.0, 1.0))
    assert best == TLQParams(eta=0.1, p_pos=1.0, p_neg=1.0, bits=2)


# ------------------------------------------------------------------------------------------------ levels and codes


def _log_uniform_row(count: int, sign: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sign * torch.exp2(-8 + 6 * torch.rand(count, generator=g))


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_levels_per_sign_part(bits):
    levels = 2 ** (bits - 1)
    rows = [torch.cat([_log_uniform_row(400, 1.0, i), _log_uniform_row(300, -1.0, 50 + i)])
            for i in range(4)]
    w = torch.stack(rows)
    for eta, p in [(0.0, 1.0), (0.01, 0.999), (0.1, 0.98)]:
        q = tlq_fake_quantize(w, TLQParams(eta, p, p, bits))
        for row, wrow in zip(q, w):
            assert row[wrow > 0].unique().numel() == levels
            assert row[wrow < 0].unique().numel() == levels
            assert torch.equal(row.sign(), wrow.sign())  # decode keeps the sign (no zeros here)
    # Gaussian rows never use more than L levels per sign
    g = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(6, 512, generator=g)
    q = tlq_fake_quantize(w, TLQParams(0.02, 0.99, 0.99, bits))
    for row, wrow in zip(q, w):
        assert row[wrow > 0].unique().numel() <= levels and row[wrow < 0].unique().numel() <= levels


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.3])
def test_values_on_levels_decode_exactly(eta):
    bits, lo, hi = 4, math.log2(eta + 0.004), math.log2(eta + 0.25)
    levels = 2 ** (bits - 1)
    q = torch.tensor([lo + k * (hi - lo) / (levels - 1) for k in range(levels)], dtype=torch.float64)
    on = torch.exp2(q) - eta
    w = torch.cat([on, -on.flip(0)]).float()[None, :].repeat(3, 1)
    codes = tlq_quantize(w, TLQParams(eta, 1.0, 1.0, bits))
    assert codes.codes[0].tolist() == list(range(levels)) + [-(k + 1) for k in reversed(range(levels))]
    torch.testing.assert_close(codes.dequantize(), w, rtol=2e-6, atol=0.0)


def test_codes_roundtrip_and_dtypes():
    w = _student_t(32, 96, seed=3)
    params = TLQParams(0.02, 0.999, 0.99, 3)
    c = tlq_quantize(w, params)
    assert c.codes.dtype == torch.int8 and c.lo.shape == (32, 2) and c.hi.dtype == torch.float32
    assert int(c.codes.min()) >= -4 and int(c.codes.max()) <= 3
    assert torch.equal(c.codes < 0, w < 0)
    assert torch.equal(c.dequantize(), tlq_fake_quantize(w, params))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        out = tlq_fake_quantize(w.to(dtype), params)
        assert out.dtype == dtype and out.shape == w.shape
        assert torch.equal(out, tlq_quantize(w.to(dtype), params).dequantize(dtype))


def test_zero_weights():
    w = _student_t(4, 64, seed=5)
    w[0] = 0.0
    w[1, ::3] = 0.0
    for eta in ETA_GRID:
        q = tlq_fake_quantize(w, TLQParams(eta, 0.99, 0.99, 2))
        assert torch.isfinite(q).all()
        assert torch.equal(q[0], torch.zeros(64))  # an all-zero row stays zero
        if eta > 0:
            assert (q[1, ::3] == 0).all()  # zeros sit on the lowest positive level, which decodes to 0
        else:
            smallest = w[1][w[1] > 0].min()
            torch.testing.assert_close(q[1, ::3], smallest.expand(22), rtol=1e-6, atol=0.0)
    best, mse = search_tlq(torch.zeros(3, 5), 4)
    assert mse == 0.0 and best == TLQParams(ETA_GRID[0], PERCENTILE_GRID[0], PERCENTILE_GRID[0], 4)


# ------------------------------------------------------------------------------------------------ vs uniform RTN


@pytest.mark.parametrize("kind", ["student_t", "laplace"])
def test_tlq_beats_uniform_rtn_on_heavy_tails(kind):
    w = _student_t(128, 768, seed=11) if kind == "student_t" else _laplace(128, 768, seed=11)
    _, tlq = search_tlq(w, 4)
    rtn = _mse(_rtn_minmax(w, 4), w)
    print(f"{kind}: TLQ-4 MSE {tlq:.3e}, min-max RTN-4 MSE {rtn:.3e}, ratio {rtn / tlq:.2f}")
    assert tlq < rtn


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("bits", [0, 1, 9, 2.5, "4", True])
def test_bad_bits(bits):
    w = torch.randn(4, 8)
    with pytest.raises(UserError, match="bits"):
        search_tlq(w, bits)
    with pytest.raises(UserError, match="bits"):
        TLQParams(0.01, 0.99, 0.99, bits)


@pytest.mark.parametrize("w", [torch.randn(8), torch.randn(2, 3, 4), torch.zeros(0, 4),
                               torch.ones(2, 2, dtype=torch.int32), torch.tensor([[1.0, math.nan]]), [[1.0]]])
def test_bad_weight(w):
    with pytest.raises(UserError, match="weight"):
        tlq_fake_quantize(w, TLQParams(0.01, 0.99, 0.99, 4))
    with pytest.raises(UserError, match="weight"):
        search_tlq(w, 4)


def test_bad_grids_and_params():
    w = torch.randn(4, 8)
    for kwargs, word in [({"etas": ()}, "etas"), ({"percentiles": []}, "percentiles"), ({"etas": 0.1}, "etas"),
                         ({"etas": (-0.1,)}, "eta"), ({"percentiles": (0.0,)}, "percentile"),
                         ({"percentiles": (1.5,)}, "percentile"), ({"etas": (math.nan,)}, "eta")]:
        with pytest.raises(UserError, match=word):
            search_tlq(w, 4, **kwargs)
    with pytest.raises(UserError, match="p_neg"):
        TLQParams(0.01, 0.99, 0.0, 4)
    with pytest.raises(UserError, match="TLQParams"):
        tlq_quantize(w, {"eta": 0.1})


def test_params_dict_roundtrip_and_errors():
    p = TLQParams(0.05, 0.999, 0.9999, 3)
    assert TLQParams.from_dict(p.to_dict()) == p and p.levels == 4
    with pytest.raises(UserError, match="unknown.*scale"):
        TLQParams.from_dict({**p.to_dict(), "scale": 1})
    with pytest.raises(UserError, match="missing.*p_neg"):
        TLQParams.from_dict({"eta": 0.1, "p_pos": 0.99, "bits": 4})
    with pytest.raises(UserError, match="mapping"):
        TLQParams.from_dict([("eta", 0.1)])


def test_codes_validation():
    c = tlq_quantize(torch.randn(3, 8), TLQParams(0.01, 0.99, 0.99, 2))
    with pytest.raises(UserError, match="int8"):
        TLQCodes(c.codes.to(torch.int16), c.lo, c.hi, c.params)
    with pytest.raises(UserError, match="lo"):
        TLQCodes(c.codes, c.lo[:, :1], c.hi, c.params)
    with pytest.raises(UserError, match="exceed"):
        TLQCodes(torch.full((3, 8), 2, dtype=torch.int8), c.lo, c.hi, c.params)
