"""Orthonormal Hadamard rotations for n = K * 2^m (QuaRot / QuIP# style), with a block-diagonal fallback.

Convention: R = diag(s) @ H_n with H_n = kron(H_K, H_P) / sqrt(n), H_P the natural-order Sylvester matrix and
H_K a Paley / Sylvester-doubled base matrix (not necessarily symmetric). The block-diagonal form is
H_n = kron(I_{n/b}, H_b) / sqrt(b). ``Rotation.apply(x)`` computes x @ R without forming R: x is viewed as a
grid (rows, K, f_1, ..., f_j), H_P = kron(H_f1, ..., H_fj) with Sylvester factors f_i <= 64, and each small
factor is applied along its own axis by one batched matmul: n * (K + sum f_i) flops per row, i.e. O(n log n + nK),
and on CPU about 4x faster than a radix-2 butterfly written in torch ops.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from qdit4sr_export.errors import UserError

__all__ = [
    "SUPPORTED_BASE_ORDERS",
    "Rotation",
    "decompose",
    "hadamard_base",
    "random_signs",
]

_MAX_BASE_ORDER = 256  # larger K would make the O(n*K) base-matrix step dominate the transform
_MAX_CHUNK_BITS = 6  # the power-of-two part is applied as Sylvester factors of order <= 64 (BLAS-friendly)


# ----------------------------------------------------------------------------------------------------------
# Finite fields and base matrices


def _is_pow2(k: int) -> bool:
    return k >= 1 and k & (k - 1) == 0


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def _field_prime(q: int) -> int | None:
    """The prime p when q = p or q = p^2 (the fields implemented here), else None."""
    if _is_prime(q):
        return q
    r = math.isqrt(q)
    return r if r * r == q and _is_prime(r) else None


def _recipe(k: int) -> tuple[str, int] | None:
    """How the non-power-of-two base order k is built: Paley I (q), Paley II (q) or Sylvester doubling (k/2)."""
    if k % 4 or _is_pow2(k) or k > _MAX_BASE_ORDER:
        return None
    if (k - 1) % 4 == 3 and _field_prime(k - 1):
        return ("paley1", k - 1)
    q = k // 2 - 1
    if q % 4 == 1 and _field_prime(q):
        return ("paley2", q)
    if _recipe(k // 2) is not None:
        return ("double", k // 2)
    return None


SUPPORTED_BASE_ORDERS: tuple[int, ...] = tuple(k for k in range(4, _MAX_BASE_ORDER + 1, 4) if _recipe(k))


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = chi(x_i - x_j) over GF(q), q = p or p^2; element i of GF(p^2) is a + b*alpha, i = a + p*b."""
    p = _field_prime(q)
    assert p is not None
    chi = -np.ones(p, dtype=np.int64)  # quadratic character of GF(p), as a table
    chi[(np.arange(1, p) ** 2) % p] = 1
    chi[0] = 0
    idx = np.arange(q)
    if q == p:
        return chi[(idx[:, None] - idx[None, :]) % p]
    # GF(p^2) = GF(p)[alpha], alpha^2 = r a non-residue. chi(z) = chi_p(N(z)) with N(a + b alpha) = a^2 - r b^2.
    r = next(v for v in range(2, p) if chi[v] == -1)
    a, b = idx % p, idx // p
    da = (a[:, None] - a[None, :]) % p
    db = (b[:, None] - b[None, :]) % p
    return chi[(da * da - r * db * db) % p]


def _paley1(q: int) -> np.ndarray:
    """Order q+1 (q = 3 mod 4): H = I + S with S = [[0, 1^T], [-1, Q]] skew-symmetric."""
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return np.eye(q + 1, dtype=np.int64) + s


def _paley2(q: int) -> np.ndarray:
    """Order 2(q+1) (q = 1 mod 4): conference matrix C = [[0, 1^T], [1, Q]]; H = C (x) B + I (x) A."""
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    a = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    b = np.array([[1, 1], [1, -1]], dtype=np.int64)
    return np.kron(c, b) + np.kron(np.eye(q + 1, dtype=np.int64), a)


def _sylvester(k: int) -> torch.Tensor:
    """Natural-order Sylvester matrix of power-of-two order k (float64); small orders come from a cache."""
    if k <= _MAX_BASE_ORDER:
        return _sylvester_cached(k)
    half = _sylvester(k // 2)
    return torch.cat([torch.cat([half, half], 1), torch.cat([half, -half], 1)], 0)


@functools.lru_cache(maxsize=None)
def _sylvester_cached(k: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=None)
def _paley_base(k: int) -> torch.Tensor:
    kind, arg = _recipe(k)  # type: ignore[misc]
    if kind == "double":
        half = _paley_base(arg)
        return torch.cat([torch.cat([half, half], 1), torch.cat([half, -half], 1)], 0)
    mat = _paley1(arg) if kind == "paley1" else _paley2(arg)
    return torch.from_numpy(mat.astype(np.float64))


def _base(k: int) -> torch.Tensor:
    """Shared (not to be mutated) k x k +-1 matrix."""
    return _sylvester(k) if _is_pow2(k) else _paley_base(k)


def hadamard_base(k: int) -> torch.Tensor:
    """The k x k +-1 Hadamard matrix (float64, H H^T = k I) used as a factor; k a power of two or a supported K."""
    if isinstance(k, bool) or not isinstance(k, int) or not (_is_pow2(k) or k in SUPPORTED_BASE_ORDERS):
        raise UserError(
            f"no Hadamard base matrix of order {k!r}: the order must be a power of two or one of {SUPPORTED_BASE_ORDERS}"
        )
    return _base(k).clone()


# ----------------------------------------------------------------------------------------------------------
# Decomposition and signs


def _check_dim(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UserError(f"rotation dimension n must be a positive integer, got n={n!r}")
    return n


def _pow2_part(n: int) -> int:
    return n & -n


def decompose(n: int) -> tuple[int, int]:
    """Split n = K * P with P the largest possible power of two and K = 1 or a supported base order."""
    n = _check_dim(n)
    pmax = _pow2_part(n)
    k = n // pmax
    p = pmax
    while p >= 1:
        if k == 1 or k in SUPPORTED_BASE_ORDERS:
            return k, p
        k, p = k * 2, p // 2
    hint = f"; use a block-diagonal Hadamard (block={pmax})" if pmax > 1 else ""
    orders = ", ".join(str(k) for k in (1,) + SUPPORTED_BASE_ORDERS)
    raise UserError(f"no Hadamard construction for dimension n={n}: n must be K*2^m with K in {{{orders}}}{hint}")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise UserError(f"rotation seed must be an integer in [0, 2^64), got seed={seed!r}")
    return seed


@functools.lru_cache(maxsize=64)
def _signs_cached(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    bits = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64)
    return (bits * 2 - 1).to(torch.float64)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """Deterministic +-1 vector (float64) of length n from a seeded CPU generator (same on every machine)."""
    return _signs_cached(_check_dim(n), _check_seed(seed)).clone()


# ----------------------------------------------------------------------------------------------------------
# Fast Kronecker-product application


def _split_pow2(p: int) -> list[int]:
    """Balanced Sylvester factor orders (each <= 2^_MAX_CHUNK_BITS) whose product is p."""
    bits = p.bit_length() - 1
    if bits == 0:
        return []
    count = -(-bits // _MAX_CHUNK_BITS)
    return [2 ** (bits // count + (i < bits % count)) for i in range(count)]


@functools.lru_cache(maxsize=64)
def _plan(n: int, block: int | None) -> tuple[tuple[int, ...], tuple[torch.Tensor | None, ...]]:
    """Axis sizes and factor matrices (None = identity axis) with H_n = kron(*factors); the scale is folded in."""
    if block is None:
        k, p = decompose(n)
        sizes = ([k] if k > 1 else []) + _split_pow2(p)
        scale = 1.0 / math.sqrt(n)
        mats: list[torch.Tensor | None] = [_base(f) for f in sizes]
    else:
        chunks = _split_pow2(block)
        sizes = ([n // block] if n > block else []) + chunks
        scale = 1.0 / math.sqrt(block)
        mats = ([None] if n > block else []) + [_sylvester(f) for f in chunks]
    if not sizes:  # n == 1, or block == 1: no factor to apply and the scale is 1
        sizes, mats = [n], [None]
    present = [i for i, m in enumerate(mats) if m is not None]
    if present:
        mats[present[-1]] = mats[present[-1]] * scale  # type: ignore[operator]
    return tuple(sizes), tuple(mats)


def _kron_apply(x: torch.Tensor, sizes: Sequence[int], mats: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """x @ kron(*mats) along the last axis (None = identity), one small matmul per axis."""
    n = x.shape[-1]
    y = x.reshape(-1, n)
    rows = y.shape[0]
    left = 1
    for f, m in zip(sizes, mats):
        right = n // (left * f)
        if m is not None:
            if right == 1:
                y = y.reshape(rows * left, f) @ m
            else:  # (.., f, right): contract the middle axis with m (x @ kron(.., m, ..) uses m^T from the left)
                y = torch.matmul(m.transpose(0, 1), y.reshape(rows * left, f, right))
        left *= f
    return y.reshape(x.shape)


# ----------------------------------------------------------------------------------------------------------
# Rotation


@dataclass(frozen=True)
class Rotation:
    """An orthonormal n x n rotation R = diag(signs) @ H_n, full K*2^m Hadamard or block-diagonal (block=b)."""

    n: int
    seed: int | None = None
    block: int | None = None

    def __post_init__(self) -> None:
        _check_dim(self.n)
        if self.seed is not None:
            _check_seed(self.seed)
        if self.block is not None:
            b = self.block
            if isinstance(b, bool) or not isinstance(b, int) or not _is_pow2(b):
                raise UserError(f"Hadamard block for dimension n={self.n} must be a power of two, got block={b!r}")
            if self.n % b:
                hint = _pow2_part(self.n)
                raise UserError(
                    f"Hadamard block={b} does not divide dimension n={self.n} (largest power-of-two block: {hint})"
                )
        # Build the factors and signs now and keep them on the instance: building them while torch.export
        # traces apply() would make fake tensors (and trace the generator). This also validates n.
        object.__setattr__(self, "_plan", _plan(self.n, self.block))
        object.__setattr__(self, "_signs64", None if self.seed is None else _signs_cached(self.n, self.seed))

    def signs(self) -> torch.Tensor:
        """The +-1 diagonal (float64, length n); all ones when seed is None."""
        if self.seed is None:
            return torch.ones(self.n, dtype=torch.float64)
        return random_signs(self.n, self.seed)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The explicit n x n orthonormal matrix R (for checks and small n; apply() never builds it)."""
        if self.block is None:
            k, p = decompose(self.n)
            h, scale = torch.kron(_base(k), _base(p)), 1.0 / math.sqrt(self.n)
        else:
            h = torch.kron(torch.eye(self.n // self.block, dtype=torch.float64), _base(self.block))
            scale = 1.0 / math.sqrt(self.block)
        return h.mul_((self.signs() * scale)[:, None]).to(dtype)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        if not isinstance(x, torch.Tensor):
            raise UserError(f"rotation input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.n:
            raise UserError(
                f"rotation of dimension n={self.n} needs a tensor whose last dim is {self.n}, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise UserError(f"rotation needs a floating-point tensor, got dtype {x.dtype}")
        # Half precisions would overflow / lose the +-1 sums; compute them in float32 and cast back.
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return x.to(work), work

    def _factors(
        self, dtype: torch.dtype, device: torch.device, transpose: bool
    ) -> tuple[tuple[int, ...], list[torch.Tensor | None]]:
        sizes, mats = self._plan  # type: ignore[attr-defined]
        out = [None if m is None else (m.T if transpose else m).to(dtype=dtype, device=device) for m in mats]
        return sizes, out

    def _signs_as(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        s64 = self._signs64  # type: ignore[attr-defined]
        return None if s64 is None else s64.to(dtype=dtype, device=device)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x @ R along the last dim, O(n log n + n K) per row with no n x n matrix; the result keeps x's dtype."""
        y, work = self._prepare(x)
        s = self._signs_as(work, y.device)
        if s is not None:
            y = y * s
        sizes, mats = self._factors(work, y.device, transpose=False)
        return _kron_apply(y, sizes, mats).to(x.dtype)

    def apply_inverse(self, x: torch.Tensor) -> torch.Tensor:
        """x @ R^T (undoes apply), equally fast; result keeps x's dtype."""
        y, work = self._prepare(x)
        sizes, mats = self._factors(work, y.device, transpose=True)
        y = _kron_apply(y, sizes, mats)
        s = self._signs_as(work, y.device)
        if s is not None:
            y = y * s
        return y.to(x.dtype)

    def to_dict(self) -> dict[str, int | None]:
        """JSON-ready description {n, seed, block}; from_dict rebuilds the identical rotation."""
        return {"n": self.n, "seed": self.seed, "block": self.block}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Rotation":
        """Rebuild a Rotation from to_dict() output, naming any missing or unknown key."""
        if not isinstance(d, Mapping):
            raise UserError(f"rotation description must be a mapping with keys n, seed, block; got {type(d).__name__}")
        unknown = sorted(set(d) - {"n", "seed", "block"})
        if unknown:
            raise UserError(f"unknown key(s) in rotation description: {', '.join(map(str, unknown))}")
        if "n" not in d:
            raise UserError("rotation description is missing the key 'n'")
        return cls(n=d["n"], seed=d.get("seed"), block=d.get("block"))
