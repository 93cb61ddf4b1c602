import math

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.outlier_rotation import (
    BlockRotation,
    activation_fluctuation,
    choose_rotation,
    outlier_rotation,
    zigzag_permutation,
)

F64 = torch.float64


def _activations(channels, *, tokens: int = 256, n: int = 512, mag: float = 50.0, seed: int = 0) -> torch.Tensor:
    """Gaussian tokens plus a few massive channels (about +-mag on every token, as in DiT activations)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=g, dtype=F64)
    for i, c in enumerate(channels):
        x[:, c] = (-1) ** i * mag * (1 + 0.1 * torch.randn(tokens, generator=g, dtype=F64))
    return x


def _block_max(y: torch.Tensor, block: int) -> torch.Tensor:
    return y.abs().amax(0).reshape(-1, block).amax(1)


def _stats(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(0)


# ------------------------------------------------------------------------------------------------ algebra


@pytest.mark.parametrize("kwargs", [{}, {"presort": True}, {"zigzag": False}, {"block": 32, "greedy_steps": 3}])
def test_rotation_is_orthogonal_and_apply_matches_matrix(kwargs):
    x = _activations([5, 17, 300])
    rot = outlier_rotation(_stats(x), **kwargs)
    m = rot.matrix()
    assert m.dtype == F64 and m.shape == (512, 512)
    assert float((m.T @ m - torch.eye(512, dtype=F64)).abs().max()) < 1e-10
    torch.testing.assert_close(rot.apply(x), x @ m, rtol=0, atol=1e-10)
    torch.testing.assert_close(rot.apply_inverse(rot.apply(x)), x, rtol=0, atol=1e-10)
    torch.testing.assert_close(rot.apply_inverse(x), x @ m.T, rtol=0, atol=1e-10)
    assert all(float(torch.linalg.det(q)) == pytest.approx(1.0) for q in rot.blocks_1)  # proper rotations
    # (x R)(W R)^T == x W^T
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(rot.apply(x) @ rot.apply(w).T, x @ w.T, rtol=1e-10, atol=1e-8)


def test_apply_dtypes_and_shapes():
    rot = outlier_rotation(torch.rand(256) + 0.1, block=64)
    x = torch.randn(2, 3, 256)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        y = rot.apply(x.to(dtype))
        assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(rot.apply(x), (x.double() @ rot.matrix()).float(), rtol=1e-5, atol=1e-5)


def test_deterministic():
    s = _stats(_activations([1, 2, 3]))
    a, b = outlier_rotation(s), outlier_rotation(s)
    assert torch.equal(a.matrix(), b.matrix())


# ------------------------------------------------------------------------------------------------ outliers


@pytest.mark.parametrize("channels", [[5, 200, 400], [3, 17, 40]])
def test_rotation_flattens_massive_outliers(channels):
    x = _activations(channels)
    before = activation_fluctuation(x)
    after = activation_fluctuation(outlier_rotation(_stats(x)).apply(x))
    print(f"channels {channels}: max|x|/rms per token {before:.2f} -> {after:.2f} ({before / after:.1f}x)")
    assert before / after >= 3.0


def test_zigzag_balances_block_maxima():
    x = _activations([3, 17, 40])  # all three massive channels in block 0
    with_zz = _block_max(outlier_rotation(_stats(x)).apply(x), 128)
    without = _block_max(outlier_rotation(_stats(x), zigzag=False).apply(x), 128)
    ratio_with, ratio_without = float(with_zz.max() / with_zz.min()), float(without.max() / without.min())
    print(f"block max/min: with zigzag {ratio_with:.2f}, without {ratio_without:.2f}")
    assert ratio_with < 0.5 * ratio_without
    assert float(with_zz.max()) < float(without.max())


def test_presort_separates_outliers_before_rotating():
    x = _activations([3, 17, 40])
    rot = outlier_rotation(_stats(x), presort=True)
    first_blocks = {int(torch.nonzero(rot.perm_before == c)) // 128 for c in (3, 17, 40)}
    assert len(first_blocks) == 3
    assert activation_fluctuation(x) / activation_fluctuation(rot.apply(x)) >= 5.0


def test_fluctuation_and_choice():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(128, 512, generator=g)
    f = activation_fluctuation(gauss)
    assert math.sqrt(2 * math.log(512)) * 0.8 < f < math.sqrt(2 * math.log(512)) * 1.2
    spiky = _activations([7])
    assert activation_fluctuation(spiky) > 15
    assert choose_rotation(gauss, 6.0) == "hadamard" and choose_rotation(spiky, 6.0) == "outlier"
    assert activation_fluctuation(torch.zeros(4, 8)) == 0.0
    assert activation_fluctuation(torch.ones(2, 3, 8)) == pytest.approx(1.0)
    with pytest.raises(UserError, match="threshold"):
        choose_rotation(gauss, 0.0)
    with pytest.raises(UserError, match="activations"):
        activation_fluctuation(torch.tensor([[math.inf, 1.0]]))


# ------------------------------------------------------------------------------------------------ zigzag


def test_zigzag_permutation():
    g = torch.Generator().manual_seed(3)
    mags = torch.rand(48, generator=g)
    perm = zigzag_permutation(mags, 4)
    assert perm.dtype == torch.long and torch.equal(perm.sort().values, torch.arange(48))
    order = torch.argsort(mags, descending=True)
    blocks = perm.reshape(4, 12)
    assert [int(blocks[b, 0]) for b in range(4)] == order[:4].tolist()  # largest 4 in distinct blocks
    assert [int(blocks[b, 1]) for b in range(4)] == order[4:8].flip(0).tolist()  # then dealt back
    assert all(bool((mags[row][:-1] >= mags[row][1:]).all()) for row in blocks)
    assert torch.equal(zigzag_permutation(torch.ones(6), 2), torch.tensor([0, 3, 4, 1, 2, 5]))


# ------------------------------------------------------------------------------------------------ validation


def test_bad_inputs():
    with pytest.raises(UserError, match="does not divide"):
        outlier_rotation(torch.rand(200))
    with pytest.raises(UserError, match="1-D"):
        outlier_rotation(torch.rand(4, 128))
    with pytest.raises(UserError, match="non-negative"):
        outlier_rotation(-torch.rand(128))
    with pytest.raises(UserError, match="floating"):
        outlier_rotation(torch.ones(128, dtype=torch.long))
    with pytest.raises(UserError, match="block"):
        outlier_rotation(torch.rand(128), block=1)
    with pytest.raises(UserError, match="greedy_steps"):
        outlier_rotation(torch.rand(128), greedy_steps=-1)
    with pytest.raises(UserError, match="n_blocks"):
        zigzag_permutation(torch.rand(10), 3)
    rot = outlier_rotation(torch.rand(64), block=16)
    with pytest.raises(UserError, match="last dim"):
        rot.apply(torch.randn(3, 32))
    with pytest.raises(UserError, match="orthogonal"):
        BlockRotation(64, 16, None, torch.ones(4, 16, 16), None, None)
    with pytest.raises(UserError, match="permutation"):
        BlockRotation(64, 16, torch.zeros(64, dtype=torch.long), rot.blocks_1, None, None)
    with pytest.raises(UserError, match="does not divide"):
        BlockRotation(64, 24, None, rot.blocks_1, None, None)
