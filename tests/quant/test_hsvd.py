"""H-SVD: block selection rule, SVD-G optimality, batched SVD-L, the split identity, and the paper's claim."""

from __future__ import annotations

import math

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.hsvd import (
    HSVD,
    LocalRank1,
    LowRank,
    hsvd,
    local_params,
    select_block,
    svd_global,
    svd_local,
)

DIT4SR_SHAPES = [(1536, 1536), (6144, 1536), (1536, 6144), (9216, 1536)]


def brute_force_block(out: int, in_: int, local_rank: int) -> tuple[int, int]:
    """Test-only reference: scan every (s_o, s_i) in range, rank by the decided rule."""
    budget = local_rank * (out + in_)
    cands = []
    for s_o in range(1, out + 1):
        if out % s_o:
            continue
        for s_i in range(1, in_ + 1):
            if in_ % s_i:
                continue
            p = (out // s_o) * (in_ // s_i) * (s_o + s_i + 1)
            cands.append((abs(p - budget), p, round(abs(math.log(s_o / s_i)), 12), -s_o, (s_o, s_i)))
    return min(cands)[-1]


# ---------------------------------------------------------------- local_params / select_block


def test_local_params_formula():
    assert local_params(8, 8, 2, 4) == 4 * 2 * 7
    assert local_params(1536, 1536, 192, 192) == 64 * 385
    assert local_params(6, 10, 6, 10) == 17  # one block: u, v, sigma
    assert local_params(6, 10, 1, 1) == 60 * 3  # every entry its own block
    with pytest.raises(UserError, match="does not divide"):
        local_params(8, 8, 3, 4)


@pytest.mark.parametrize("shape", DIT4SR_SHAPES)
def test_select_block_dit4sr_shapes_match_brute_force(shape):
    for rl in (4, 8, 16, 32):
        block = select_block(*shape, rl)
        assert block == brute_force_block(*shape, rl), (shape, rl)
        p = local_params(*shape, *block)
        print(f"{shape} r_L={rl}: block {block}, P_SVD-L {p} vs budget {rl * sum(shape)}")


@pytest.mark.parametrize("shape", [(8, 12), (30, 42), (64, 48), (96, 384), (7, 13), (1, 5)])
@pytest.mark.parametrize("rl", [1, 2, 3, 8])
def test_select_block_small_shapes_match_brute_force(shape, rl):
    assert select_block(*shape, rl) == brute_force_block(*shape, rl)


def test_select_block_tie_breaks():
    # (1) equal distance: (2,3) r_L=3, budget 15: (2,1) costs 12, (1,1) costs 18 -> smaller cost wins.
    assert select_block(2, 3, 3) == (2, 1)
    # (2) equal cost: (8,2) r_L=2, budget 20: (2,2) and (8,1) both cost 20 -> squarer wins despite smaller s_o.
    assert select_block(8, 2, 2) == (2, 2)
    # (3) equal cost and squareness: (2,2) r_L=2, budget 8: (2,1) and (1,2) cost 8 -> larger s_o wins.
    assert select_block(2, 2, 2) == (2, 1)
    assert select_block(1536, 1536, 8) == (384, 128)  # mirror (128, 384) costs the same


def test_select_block_large_shapes_and_errors():
    assert select_block(13824, 13824, 8) == brute_force_block(13824, 13824, 8)
    assert select_block(13824, 3072, 8) == brute_force_block(13824, 3072, 8)
    with pytest.raises(UserError, match="local_rank"):
        select_block(64, 64, 0)
    with pytest.raises(UserError, match="local_rank"):
        select_block(64, 64, -1)


# ---------------------------------------------------------------- SVD-G


@pytest.mark.parametrize("shape", [(48, 20), (20, 48)])  # tall and wide (transposed) paths
def test_svd_global_is_best_rank_r(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sv = torch.linalg.svdvals(w)
    for r in (0, 1, 5, 20):
        lr = svd_global(w, r)
        assert isinstance(lr, LowRank) and lr.a.shape == (shape[0], r) and lr.b.shape == (r, shape[1])
        assert lr.num_params == r * sum(shape)
        err = torch.linalg.norm(w - lr.dense())
        assert err.item() == pytest.approx(sv[r:].pow(2).sum().sqrt().item(), rel=1e-9, abs=1e-9)
        # sigma folded into a, b orthonormal rows
        torch.testing.assert_close(lr.a.norm(dim=0), sv[:r])
        torch.testing.assert_close(lr.b @ lr.b.T, torch.eye(r, dtype=torch.float64))


def test_svd_global_dtypes():
    w = torch.randn(16, 12, generator=torch.Generator().manual_seed(2))
    assert svd_global(w, 3).a.dtype == torch.float32
    assert svd_global(w.double(), 3).a.dtype == torch.float64
    assert svd_global(w.half(), 3).b.dtype == torch.float32
    empty = svd_global(w, 0)
    assert empty.a.shape == (16, 0) and empty.num_params == 0
    assert torch.count_nonzero(empty.dense()) == 0


def test_svd_global_errors():
    w = torch.randn(16, 12)
    with pytest.raises(UserError, match=r"rank 13.*\(16, 12\)"):
        svd_global(w, 13)
    with pytest.raises(UserError, match="rank -1"):
        svd_global(w, -1)
    with pytest.raises(UserError, match="2-D"):
        svd_global(torch.randn(4, 4, 4), 1)
    with pytest.raises(UserError, match="2-D"):
        svd_global(torch.ones(4, 4, dtype=torch.int64), 1)


# ---------------------------------------------------------------- SVD-L


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block", [(16, 8), (8, 16), (96, 64), (1, 1)])
def test_svd_local_matches_per_block_loop(block, dtype):
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(3), dtype=dtype)
    loc = svd_local(w, block)
    s_o, s_i = block
    p, q = 96 // s_o, 64 // s_i
    assert isinstance(loc, LocalRank1) and loc.block == block
    assert loc.u.shape == (p, q, s_o) and loc.s.shape == (p, q) and loc.v.shape == (p, q, s_i)
    assert loc.num_params == local_params(96, 64, s_o, s_i)
    for i in range(p):  # test-only reference loop
        for j in range(q):
            blk = w[i * s_o : (i + 1) * s_o, j * s_i : (j + 1) * s_i]
            u, s, vt = torch.linalg.svd(blk, full_matrices=False)
            # 1e-5 relative to the block's spectral norm (float32 vectors carry eps * sigma_1 / gap error)
            tol = 1e-5 * s[0].item()
            assert loc.s[i, j].item() == pytest.approx(s[0].item(), abs=tol)
            # singular vectors agree up to one shared sign
            assert abs(torch.dot(loc.u[i, j], u[:, 0]).item()) == pytest.approx(1.0, abs=1e-5)
            ref = s[0] * torch.outer(u[:, 0], vt[0])
            got = loc.s[i, j] * torch.outer(loc.u[i, j], loc.v[i, j])
            torch.testing.assert_close(got, ref, atol=tol, rtol=0)
    # canonical sign: the largest-magnitude entry of each u is non-negative
    peak = loc.u.gather(-1, loc.u.abs().argmax(-1, keepdim=True))
    assert bool((peak >= 0).all())
    torch.testing.assert_close(loc.u.norm(dim=-1), torch.ones(p, q, dtype=dtype))


def _block_rank1(p: int, q: int, s_o: int, s_i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct unit u, v and sigma for every block, so misplaced blocks cannot cancel out."""
    u = torch.nn.functional.normalize(1.0 + torch.arange(p * q * s_o, dtype=torch.float64).reshape(p, q, s_o) ** 1.3, dim=-1)
    v = torch.nn.functional.normalize(torch.cos(torch.arange(p * q * s_i, dtype=torch.float64)).reshape(p, q, s_i) + 2.0, dim=-1)
    s = 1.0 + torch.arange(p * q, dtype=torch.float64).reshape(p, q)
    return u, s, v


def test_local_dense_places_blocks():
    p, q, s_o, s_i = 3, 4, 5, 2
    u, s, v = _block_rank1(p, q, s_o, s_i)
    ref = torch.zeros(p * s_o, q * s_i, dtype=torch.float64)
    for i in range(p):
        for j in range(q):
            ref[i * s_o : (i + 1) * s_o, j * s_i : (j + 1) * s_i] = torch.outer(u[i, j] * s[i, j], v[i, j])
    loc = LocalRank1(u, s, v)
    assert loc.block == (s_o, s_i) and loc.num_params == p * q * (s_o + s_i + 1)
    torch.testing.assert_close(loc.dense(), ref, rtol=0, atol=0)
    # exactly block-rank-1 input is reconstructed exactly by svd_local, with the same factors
    back = svd_local(ref, (s_o, s_i))
    torch.testing.assert_close(back.dense(), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back.s, s)
    torch.testing.assert_close(back.u, u)
    torch.testing.assert_close(back.v, v)


def test_svd_local_errors():
    w = torch.randn(12, 10)
    with pytest.raises(UserError, match="does not divide"):
        svd_local(w, (5, 5))
    with pytest.raises(UserError, match="does not divide"):
        svd_local(w, (0, 5))


# ---------------------------------------------------------------- hsvd


def test_hsvd_split_identity_and_defaults():
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(4))
    h = hsvd(w, rank=8, local_rank=2)
    assert isinstance(h, HSVD) and h.local is not None
    assert h.local.block == select_block(96, 64, 2)
    assert h.global_.rank == 8
    torch.testing.assert_close(h.residual + h.fp_dense(), w, atol=1e-5, rtol=0)
    torch.testing.assert_close(h.fp_dense(), h.global_.dense() + h.local.dense())
    assert h.num_params == 8 * 160 + h.local.num_params
    # SVD-L is fitted to the SVD-G residual
    torch.testing.assert_close(h.local.dense(), svd_local(w - h.global_.dense(), h.local.block).dense(), atol=1e-5, rtol=0)

    given = hsvd(w, rank=4, local_rank=8, block=(12, 16))
    assert given.local.block == (12, 16)
    torch.testing.assert_close(given.residual + given.fp_dense(), w, atol=1e-5, rtol=0)
    assert hsvd(w.double(), 4, 2).residual.dtype == torch.float64


def test_hsvd_without_local_branch():
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(5))
    h = hsvd(w, rank=6, local_rank=0)
    assert h.local is None and h.num_params == 6 * 64
    torch.testing.assert_close(h.residual, w - svd_global(w, 6).dense())
    h0 = hsvd(w, rank=0, local_rank=0)
    torch.testing.assert_close(h0.residual, w, rtol=0, atol=0)
    assert h0.residual.data_ptr() != w.data_ptr()  # never aliases the caller's weight
    assert h0.num_params == 0


def test_hsvd_errors():
    w = torch.randn(16, 12)
    with pytest.raises(UserError, match="rank 13"):
        hsvd(w, rank=13)
    with pytest.raises(UserError, match="rank -2"):
        hsvd(w, rank=-2)
    with pytest.raises(UserError, match="local_rank"):
        hsvd(w, rank=2, local_rank=-1)
    with pytest.raises(UserError, match="does not divide"):
        hsvd(w, rank=2, block=(5, 4))
    with pytest.raises(UserError, match="local_rank is 0"):
        hsvd(w, rank=2, local_rank=0, block=(4, 4))


# ---------------------------------------------------------------- the paper's claim


def _q4_rows(x: torch.Tensor) -> torch.Tensor:
    """Test-only 4-bit per-row symmetric RTN, Gaussian-optimal clip: scale = rms * 2.4739 / 7, levels -7..7."""
    scale = (x.pow(2).mean(1, keepdim=True).sqrt() * 2.4739 / 7).clamp_min(1e-12)
    return (x / scale).round().clamp(-7, 7) * scale


def _synthetic_weight(out: int, in_: int, seed: int, *, df: int | None, n_outliers: int) -> torch.Tensor:
    """Rank-16 part (spectrum decaying 10x in energy, ~4x the noise rms) + unit noise + sparse +-25 outliers.

    Noise is Student-t(df) built as z / sqrt(chi2_df / df) from seeded normals, or Gaussian when df is None.
    """
    g = torch.Generator().manual_seed(seed)
    k = 16
    u = torch.linalg.qr(torch.randn(out, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(in_, k, generator=g, dtype=torch.float64))[0]
    sv = 4.0 * math.sqrt(out * in_ / k) * torch.logspace(0, -1, k, dtype=torch.float64).sqrt()
    w = (u * sv) @ v.T + _noise(out, in_, df, g)
    idx = torch.randperm(out * in_, generator=g)[:n_outliers]
    sign = torch.where(torch.rand(n_outliers, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    w.view(-1)[idx] += 25.0 * sign
    return w.float()


def _noise(out: int, in_: int, df: int | None, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(out, in_, generator=g, dtype=torch.float64)
    if df is None:
        return z
    chi2 = torch.randn(out, in_, df, generator=g, dtype=torch.float64).pow(2).sum(-1)
    return z / torch.sqrt(chi2 / df)


def _compare(w: torch.Tensor, rank: int = 32, local_rank: int = 8) -> dict[str, float]:
    """Errors of H-SVD(rank, local_rank) vs SVD-G(rank + local_rank), with and without Q4 of the remainder."""
    h = hsvd(w, rank, local_rank)
    g = svd_global(w, rank + local_rank)
    g_res = w - g.dense()
    # matched budget: SVD-L costs within 1% of r_L*(out+in)
    assert abs(h.num_params - g.num_params) <= 0.01 * g.num_params
    return {
        "hsvd_q4": torch.linalg.norm(w - h.fp_dense() - _q4_rows(h.residual)).item(),
        "svdg_q4": torch.linalg.norm(w - g.dense() - _q4_rows(g_res)).item(),
        "hsvd_fp": torch.linalg.norm(h.residual).item(),
        "svdg_fp": torch.linalg.norm(g_res).item(),
        "q4_only": torch.linalg.norm(w - _q4_rows(w)).item(),
    }


@pytest.mark.parametrize("shape", [(512, 512), (768, 384)])
@pytest.mark.parametrize("seed", [0, 1])
def test_hsvd_beats_svdg_on_heavy_tailed_weights(shape, seed):
    e = _compare(_synthetic_weight(*shape, seed, df=3, n_outliers=16))
    print(f"{shape} seed {seed} heavy-tailed: " + ", ".join(f"{k} {v:.2f}" for k, v in e.items()))
    assert e["hsvd_q4"] < 0.95 * e["svdg_q4"]
    assert e["hsvd_fp"] < e["svdg_fp"]  # unquantized: also better, but only by ~1%


def test_hsvd_gain_comes_from_tails_and_outliers():
    """Control: with Gaussian noise and no outliers both reach the same error; outliers alone restore the gain."""
    e = _compare(_synthetic_weight(512, 512, 0, df=None, n_outliers=0))
    print("gaussian, no outliers: " + ", ".join(f"{k} {v:.2f}" for k, v in e.items()))
    assert e["hsvd_q4"] == pytest.approx(e["svdg_q4"], rel=0.02)
    e = _compare(_synthetic_weight(512, 512, 0, df=None, n_outliers=16))
    print("gaussian, 16 outliers: " + ", ".join(f"{k} {v:.2f}" for k, v in e.items()))
    assert e["hsvd_q4"] < 0.95 * e["svdg_q4"]
