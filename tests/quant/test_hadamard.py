import hashlib
import json
import math

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.hadamard import (
    SUPPORTED_BASE_ORDERS,
    Rotation,
    decompose,
    hadamard_base,
    random_signs,
)

F64 = torch.float64
DIT4SR_DIMS = [64, 192, 1536, 2048, 4096, 6144, 9216, 13824]
POW2 = [2**i for i in range(9)]  # 1 .. 256
PINNED_ORDERS = (
    12, 20, 24, 28, 36, 40, 44, 48, 52, 56, 60, 68, 72, 76, 80, 84, 88, 96, 100, 104, 108, 112, 120, 124, 132,
    136, 140, 144, 148, 152, 160, 164, 168, 176, 180, 192, 196, 200, 204, 208, 212, 216, 220, 224, 228, 240,
    244, 248, 252,
)


def _rows(n: int, count: int = 48) -> torch.Tensor:
    """A spread of row indices (first, last and random ones) for checks that cannot afford all n rows."""
    g = torch.Generator().manual_seed(n)
    idx = torch.cat([torch.tensor([0, n - 1]), torch.randperm(n, generator=g)[: count - 2]])
    return idx.unique()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.to(F64) - b.to(F64)).abs().max() / b.to(F64).abs().max()).item()


# ------------------------------------------------------------------------------------------------ base matrices


def test_required_base_orders_are_supported():
    assert {12, 20, 28, 36, 40, 52, 60} <= set(SUPPORTED_BASE_ORDERS)
    assert list(SUPPORTED_BASE_ORDERS) == sorted(set(SUPPORTED_BASE_ORDERS))
    assert all(k % 4 == 0 and k & (k - 1) for k in SUPPORTED_BASE_ORDERS)


@pytest.mark.parametrize("k", list(SUPPORTED_BASE_ORDERS) + POW2)
def test_base_matrix_is_hadamard(k):
    h = hadamard_base(k)
    assert h.dtype == F64 and h.shape == (k, k)
    assert bool(((h == 1) | (h == -1)).all())
    assert torch.equal(h @ h.T, k * torch.eye(k, dtype=F64))


def test_base_matrices_are_pinned():
    # Saved rotations store only (n, seed, block): the constructions must never change silently.
    digest = hashlib.sha256()
    for k in PINNED_ORDERS:
        digest.update(hadamard_base(k).to(torch.int8).numpy().tobytes())
    assert digest.hexdigest() == "420a7d588b35b5ac2bf3a0363f51e2981a3bfbd0b7a0796e348bd1bef198ec17"


def test_base_matrix_is_a_copy_and_paley_one_is_not_symmetric():
    h = hadamard_base(12)
    assert not torch.equal(h, h.T)  # so the apply-vs-matrix tests below do exercise the transpose convention
    h.zero_()
    assert torch.equal(hadamard_base(12) @ hadamard_base(12).T, 12 * torch.eye(12, dtype=F64))


@pytest.mark.parametrize("k", [3, 7, 92, 260, 0, -12])
def test_base_matrix_unknown_order(k):
    with pytest.raises(UserError, match=f"order {k}"):
        hadamard_base(k)


# ------------------------------------------------------------------------------------------------ decompose


@pytest.mark.parametrize(
    "n, expected",
    [(1, (1, 1)), (12, (12, 1)), (64, (1, 64)), (192, (12, 16)), (320, (20, 16)), (448, (28, 16)),
     (1536, (12, 128)), (2048, (1, 2048)), (6144, (12, 512)), (9216, (36, 256)), (13824, (108, 128))],
)
def test_decompose_known_dims(n, expected):
    assert decompose(n) == expected


def test_decompose_prefers_largest_power_of_two():
    # Brute force over every n up to 3000 and K*2^m for every supported K.
    ns = list(range(1, 3001)) + [k * 2**m for k in SUPPORTED_BASE_ORDERS for m in (0, 3, 7)]
    for n in ns:
        splits = [(k, n // k) for k in (1,) + SUPPORTED_BASE_ORDERS if n % k == 0 and (n // k) & (n // k - 1) == 0]
        if not splits:
            with pytest.raises(UserError, match=f"n={n}:"):
                decompose(n)
            continue
        assert decompose(n) == max(splits, key=lambda kp: kp[1]), n


@pytest.mark.parametrize("n, hint", [(7, None), (6, "block=2"), (1472, "block=64"), (23 * 1024, "block=1024")])
def test_decompose_impossible(n, hint):
    with pytest.raises(UserError, match=f"no Hadamard construction for dimension n={n}:") as err:
        decompose(n)
    message = str(err.value)
    assert "K in {1, 12, 20," in message and "\n" not in message
    if hint is None:
        assert "block" not in message
    else:
        assert message.endswith(f"use a block-diagonal Hadamard ({hint})")


@pytest.mark.parametrize("n", [0, -64, 64.0, True, "64"])
def test_decompose_bad_dimension(n):
    with pytest.raises(UserError, match="positive integer"):
        decompose(n)


# ------------------------------------------------------------------------------------------------ orthonormality


@pytest.mark.parametrize("n, seed", [(64, None), (192, 11), (1536, 11)])
def test_dense_matrix_is_orthonormal(n, seed):
    rot = Rotation(n, seed=seed)
    r = rot.matrix()
    assert r.shape == (n, n) and r.dtype == F64
    assert torch.allclose(r @ r.T, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
    r32 = rot.matrix(torch.float32)
    assert r32.dtype == torch.float32
    assert torch.allclose(r32 @ r32.T, torch.eye(n), rtol=0, atol=1e-5)


def _sylvester_row(i: int, p: int) -> torch.Tensor:
    """Row i of the natural-order Sylvester matrix of order p, from H[i, j] = (-1)^popcount(i & j)."""
    bits = torch.arange(p) & i
    parity = torch.zeros(p, dtype=torch.int64)
    while bool(bits.any()):
        parity ^= bits & 1
        bits >>= 1
    return 1.0 - 2.0 * parity.to(F64)


def _expected_rows(rot: Rotation, idx: torch.Tensor) -> torch.Tensor:
    """Rows i of R = diag(s) H_n straight from the definition, one row at a time (no n x n matrix)."""
    s, rows = rot.signs(), []
    if rot.block is None:
        k, p = decompose(rot.n)
        hk = hadamard_base(k)
        for i in idx.tolist():
            rows.append(s[i] * torch.kron(hk[i // p], _sylvester_row(i % p, p)) / math.sqrt(rot.n))
    else:
        b = rot.block
        for i in idx.tolist():
            row = torch.zeros(rot.n, dtype=F64)
            row[i // b * b : i // b * b + b] = s[i] * _sylvester_row(i % b, b) / math.sqrt(b)
            rows.append(row)
    return torch.stack(rows)


def _check_rows(rot: Rotation, idx: torch.Tensor, dtype: torch.dtype, tol: float) -> None:
    # Rows e_i @ R come from the fast path; R_i @ R^T = e_i says row i is a unit vector orthogonal to all others.
    eye = torch.zeros(len(idx), rot.n, dtype=dtype)
    eye[torch.arange(len(idx)), idx] = 1
    rows = rot.apply(eye)
    assert rows.dtype == dtype
    assert torch.allclose(rows.to(F64), _expected_rows(rot, idx), rtol=0, atol=tol)
    assert torch.allclose(rot.apply_inverse(rows), eye, rtol=0, atol=tol)
    assert torch.allclose(rows @ rows.T, torch.eye(len(idx), dtype=dtype), rtol=0, atol=tol)


@pytest.mark.parametrize("k", SUPPORTED_BASE_ORDERS)
def test_every_base_order_gives_an_orthonormal_rotation(k):
    rot = Rotation(k, seed=k)
    r = rot.matrix()
    assert torch.allclose(r @ r.T, torch.eye(k, dtype=F64), rtol=0, atol=1e-12)
    x = torch.randn(3, k, dtype=F64, generator=torch.Generator().manual_seed(k))
    assert torch.allclose(rot.apply(x), x @ r, rtol=0, atol=1e-12)
    assert torch.allclose(rot.apply_inverse(x), x @ r.T, rtol=0, atol=1e-12)
    assert torch.allclose(rot.apply(torch.eye(k, dtype=F64)), r, rtol=0, atol=1e-12)
    _check_rows(Rotation(8 * k, seed=k), _rows(8 * k, 24), F64, 1e-12)  # m = 3


@pytest.mark.parametrize("n", DIT4SR_DIMS)
@pytest.mark.parametrize("dtype, tol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_dit4sr_dims_are_orthonormal(n, dtype, tol):
    _check_rows(Rotation(n, seed=3), _rows(n), dtype, tol)


@pytest.mark.parametrize("n, block", [(9216, 1024), (13824, 512), (6144, 2048), (1536, 512), (1472, 64)])
def test_block_fallback_is_orthonormal(n, block):
    _check_rows(Rotation(n, seed=5, block=block), _rows(n), F64, 1e-12)


# ------------------------------------------------------------------------------------------------ fast apply


APPLY_CASES = [
    (1, None, None), (12, 4, None), (64, None, None), (64, 7, None), (64, 7, 64), (104, 2, None),
    (192, 1, None), (320, None, None), (432, 9, None), (1536, None, None), (1536, 3, None),
    (1536, None, 64), (1536, 3, 64), (2048, 8, 128), (96, 1, 1),
]


@pytest.mark.parametrize("n, seed, block", APPLY_CASES)
def test_apply_matches_dense_matrix(n, seed, block):
    rot = Rotation(n, seed=seed, block=block)
    r = rot.matrix()
    g = torch.Generator().manual_seed(n)
    for shape in [(n,), (1, n), (2, 3, n)]:
        x = torch.randn(shape, dtype=F64, generator=g)
        assert torch.allclose(rot.apply(x), x @ r, rtol=0, atol=1e-12)
        assert torch.allclose(rot.apply_inverse(x), x @ r.T, rtol=0, atol=1e-12)
        x32 = x.float()
        y32 = rot.apply(x32)
        assert y32.dtype == torch.float32 and y32.shape == shape
        assert _rel_err(y32, x @ r) < 1e-5
        assert _rel_err(rot.apply_inverse(x32), x @ r.T) < 1e-5


@pytest.mark.parametrize("n, seed, block", [(1536, 1, None), (6144, 2, None), (6144, 2, 256), (13824, None, None)])
def test_round_trip_and_norms(n, seed, block):
    rot = Rotation(n, seed=seed, block=block)
    x = torch.randn(8, n, generator=torch.Generator().manual_seed(0)) * 3
    y = rot.apply(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert torch.allclose(rot.apply_inverse(y), x, rtol=0, atol=1e-5)
    assert torch.allclose(rot.apply(rot.apply_inverse(x)), x, rtol=0, atol=1e-5)
    assert not torch.allclose(y, x, atol=1e-2)


def test_signs_change_the_result():
    x = torch.randn(4, 1536, dtype=F64, generator=torch.Generator().manual_seed(2))
    plain, signed = Rotation(1536).apply(x), Rotation(1536, seed=1).apply(x)
    s = random_signs(1536, 1)
    assert not torch.allclose(plain, signed)
    assert torch.allclose(signed, Rotation(1536).apply(x * s), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-3), (torch.bfloat16, 5e-3)])
def test_half_precision_keeps_dtype(dtype, tol):
    rot = Rotation(1536, seed=2)
    # Large but representable float16 inputs: the unscaled +-1 sums inside would overflow if computed in float16.
    x = (torch.randn(4, 1536, generator=torch.Generator().manual_seed(1)) * 1e4).to(dtype)
    y = rot.apply(x)
    assert y.dtype == dtype and bool(torch.isfinite(y).all())
    assert _rel_err(y, rot.apply(x.double())) < tol
    back = rot.apply_inverse(y)
    assert back.dtype == dtype and _rel_err(back, x) < 2 * tol


def test_empty_batch():
    assert Rotation(192, seed=1).apply(torch.zeros(0, 5, 192)).shape == (0, 5, 192)


def test_apply_on_dit4sr_ffn_activation():
    # The FFN down-projection input of dit4sr-medium: (tokens, 6144) in float32. It must not build a dense R.
    x = torch.randn(4096, 6144, generator=torch.Generator().manual_seed(0))
    y = Rotation(6144, seed=0).apply(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.allclose(y[::512].norm(dim=-1), x[::512].norm(dim=-1), rtol=1e-5)


def test_apply_bad_input():
    rot = Rotation(64)
    with pytest.raises(UserError, match="n=64 needs a tensor whose last dim is 64"):
        rot.apply(torch.zeros(3, 32))
    with pytest.raises(UserError, match="last dim is 64"):
        rot.apply_inverse(torch.tensor(1.0))
    with pytest.raises(UserError, match="floating-point"):
        rot.apply(torch.zeros(3, 64, dtype=torch.int32))


def test_export_with_dynamic_batch():
    class Rotate(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rot = Rotation(192, seed=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rot.apply(x)

    module = Rotate()
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.randn(3, 192),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(7, 192)
    assert torch.equal(program.module()(x), module(x))


# ------------------------------------------------------------------------------------------------ signs


def test_random_signs_are_deterministic():
    a = random_signs(4096, 5)
    assert a.dtype == F64 and a.shape == (4096,)
    assert bool(((a == 1) | (a == -1)).all())
    assert torch.equal(a, random_signs(4096, 5))
    assert not torch.equal(a, random_signs(4096, 6))
    assert 1800 < int((a > 0).sum()) < 2300
    # Pinned: saved rotations store only the seed, so the generator stream must not change under us.
    assert random_signs(16, 0).long().tolist() == [-1, 1, 1, -1, 1, 1, 1, 1, 1, 1, 1, -1, -1, 1, -1, -1]
    a.neg_()
    assert torch.equal(random_signs(4096, 5), -a)  # callers get copies


def test_rotation_signs():
    assert torch.equal(Rotation(64).signs(), torch.ones(64, dtype=F64))
    assert torch.equal(Rotation(64, seed=9).signs(), random_signs(64, 9))
    assert torch.equal(Rotation(64, seed=9, block=8).signs(), random_signs(64, 9))


@pytest.mark.parametrize("n, seed", [(0, 1), (-3, 1), (64, -1), (64, 1.5), (64, True), (64, 2**64)])
def test_random_signs_bad_input(n, seed):
    with pytest.raises(UserError, match=f"n={n}" if n <= 0 else f"seed={seed}"):
        random_signs(n, seed)


# ------------------------------------------------------------------------------------------------ validation, JSON


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n=0"),
        ({"n": -1536}, "n=-1536"),
        ({"n": 1536.0}, "n=1536.0"),
        ({"n": 7}, "dimension n=7"),
        ({"n": 1472}, "n=1472: .*block=64"),
        ({"n": 1536, "block": 48}, "n=1536 must be a power of two, got block=48"),
        ({"n": 1536, "block": 0}, "n=1536 must be a power of two, got block=0"),
        ({"n": 1536, "block": True}, "got block=True"),
        ({"n": 192, "block": 128}, "block=128 does not divide dimension n=192 .*64"),
        ({"n": 64, "seed": -2}, "seed=-2"),
    ],
)
def test_rotation_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        Rotation(**kwargs)


def test_block_fallback_where_no_full_construction():
    rot = Rotation(1472, seed=1, block=64)
    r = rot.matrix()
    assert torch.allclose(r @ r.T, torch.eye(1472, dtype=F64), rtol=0, atol=1e-12)
    x = torch.randn(2, 1472, dtype=F64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(rot.apply(x), x @ r, rtol=0, atol=1e-12)


def test_json_round_trip():
    for rot in [Rotation(1536), Rotation(6144, seed=7), Rotation(9216, seed=1, block=1024)]:
        d = json.loads(json.dumps(rot.to_dict()))
        assert d == {"n": rot.n, "seed": rot.seed, "block": rot.block}
        again = Rotation.from_dict(d)
        assert again == rot and hash(again) == hash(rot)
        assert torch.equal(again.signs(), rot.signs())
    assert Rotation.from_dict({"n": 64}) == Rotation(64)


@pytest.mark.parametrize(
    "d, match",
    [({"seed": 1}, "missing the key 'n'"), ({"n": 64, "blocks": 8}, "unknown key.*blocks"), ([64], "mapping"),
     ({"n": 64, "block": 3}, "block=3")],
)
def test_from_dict_bad_input(d, match):
    with pytest.raises(UserError, match=match):
        Rotation.from_dict(d)
