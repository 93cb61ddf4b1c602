"""H-SVD (Q-DiT4SR Sec. 3.2): a global truncated SVD plus block-wise rank-1 SVDs of its residual, kept in FP.

Numerics: the compute dtype is float64 for a float64 weight and float32 otherwise (half and bfloat16 are upcast);
the singular vectors are computed in float64 from Gram matrices (symmetric eigendecompositions: only the leading
vectors are needed, at a fraction of a full SVD's cost), and all returned factors and the residual are in the
compute dtype, on the weight's device, so ``residual + fp_dense()`` reproduces the weight to compute-dtype
rounding. Quantizing the residual (Eq. 10-11) is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from qdit4sr_export.errors import UserError

__all__ = ["HSVD", "LocalRank1", "LowRank", "hsvd", "local_params", "select_block", "svd_global", "svd_local"]


def _check_dims(out: int, in_: int) -> None:
    if out < 1 or in_ < 1:
        raise UserError(f"weight shape must be positive, got ({out}, {in_})")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def local_params(out: int, in_: int, s_o: int, s_i: int) -> int:
    """FP parameter count of SVD-L with s_o x s_i blocks (Eq. 7): one u, v and sigma per block."""
    _check_dims(out, in_)
    if s_o < 1 or s_i < 1 or out % s_o or in_ % s_i:
        raise UserError(f"block ({s_o}, {s_i}) does not divide weight shape ({out}, {in_})")
    return (out // s_o) * (in_ // s_i) * (s_o + s_i + 1)


def select_block(out: int, in_: int, local_rank: int) -> tuple[int, int]:
    """Block size whose SVD-L cost is closest to the rank-``local_rank`` SVD-G cost (Eq. 8-9).

    Ties: smaller cost, then squarer block, then larger s_o. Enumerates divisor pairs only.
    """
    _check_dims(out, in_)
    if local_rank < 1:
        raise UserError(f"local_rank must be >= 1 to select an SVD-L block, got {local_rank}")
    budget = local_rank * (out + in_)
    best_key, best = None, (out, in_)
    for s_o in _divisors(out):
        for s_i in _divisors(in_):
            p = (out // s_o) * (in_ // s_i) * (s_o + s_i + 1)
            # Fraction(max/min) is monotone in |log(s_o/s_i)| and compares exactly.
            key = (abs(p - budget), p, Fraction(max(s_o, s_i), min(s_o, s_i)), -s_o)
            if best_key is None or key < best_key:
                best_key, best = key, (s_o, s_i)
    return best


def _as_weight(w: Tensor, what: str) -> Tensor:
    if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
        desc = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
        raise UserError(f"{what} must be a 2-D floating-point tensor, got {desc}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise UserError(f"{what} must be non-empty, got shape {tuple(w.shape)}")
    return w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)


@dataclass
class LowRank:
    """SVD-G branch: ``a @ b`` with a (out x r) = U_r * S_r and b (r x in) = V_r^T."""

    a: Tensor
    b: Tensor

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    @property
    def num_params(self) -> int:
        """FP parameters r*(out+in)."""
        return self.a.shape[1] * (self.a.shape[0] + self.b.shape[1])

    def dense(self) -> Tensor:
        """The (out x in) rank-r matrix."""
        return self.a @ self.b


def svd_global(w_h: Tensor, rank: int) -> LowRank:
    """Best rank-``rank`` approximation of ``w_h`` (Eckart-Young), sigma folded into a.

    The top singular vectors come from a symmetric eigendecomposition of the Gram matrix on the smaller side,
    formed and solved in float64 (2-4x less work than a full SVD of a 1536-wide layer, with float64 accuracy for
    the leading vectors), then the result is cast back to the compute dtype.
    """
    w = _as_weight(w_h, "w_h")
    out, in_ = w.shape
    if rank < 0 or rank > min(out, in_):
        raise UserError(f"SVD-G rank {rank} out of range [0, {min(out, in_)}] for weight shape ({out}, {in_})")
    if rank == 0:
        return LowRank(w.new_zeros(out, 0), w.new_zeros(0, in_))
    w64 = w.to(torch.float64)
    if out >= in_:  # right singular vectors: a = W V (= U S), b = V^T
        v = torch.linalg.eigh(w64.T @ w64)[1][:, -rank:].flip(-1)
        a, b = w64 @ v, v.T
    else:  # left singular vectors: a = U S, b = S^-1 U^T W (= V^T)
        evals, evecs = torch.linalg.eigh(w64 @ w64.T)
        u = evecs[:, -rank:].flip(-1)
        sv = evals[-rank:].flip(-1).clamp_min(0).sqrt()
        a = u * sv
        b = torch.where(sv[:, None] > 0, (u.T @ w64) / sv.clamp_min(1e-300)[:, None], 0.0)
    return LowRank(a.to(w.dtype).contiguous(), b.to(w.dtype).contiguous())


@dataclass
class LocalRank1:
    """SVD-L branch (Eq. 5-6): block (p, q) of the (out x in) matrix is ``s[p,q] * outer(u[p,q], v[p,q])``."""

    u: Tensor  # (P, Q, s_o), unit norm
    s: Tensor  # (P, Q), >= 0
    v: Tensor  # (P, Q, s_i), unit norm

    @property
    def block(self) -> tuple[int, int]:
        return self.u.shape[2], self.v.shape[2]

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape[0] * self.u.shape[2], self.v.shape[1] * self.v.shape[2]

    @property
    def num_params(self) -> int:
        """FP parameters P*Q*(s_o+s_i+1) (Eq. 7)."""
        p, q, s_o = self.u.shape
        return p * q * (s_o + self.v.shape[2] + 1)

    def dense(self) -> Tensor:
        """The (out x in) block-rank-1 matrix, assembled by broadcasting (no loop over blocks)."""
        p, q, s_o = self.u.shape
        s_i = self.v.shape[2]
        blocks = (self.u * self.s[..., None]).unsqueeze(3) * self.v.unsqueeze(2)  # (P, Q, s_o, s_i)
        return blocks.permute(0, 2, 1, 3).reshape(p * s_o, q * s_i)


def svd_local(residual: Tensor, block: tuple[int, int]) -> LocalRank1:
    """Rank-1 SVD of every s_o x s_i block of ``residual``, all blocks at once: the leading eigenvector of each
    block's Gram matrix on its smaller side (one batched float64 ``eigh``), the other vector by projection.

    Signs are made canonical: the largest-magnitude entry of each u is non-negative.
    """
    w = _as_weight(residual, "residual")
    out, in_ = w.shape
    s_o, s_i = block
    local_params(out, in_, s_o, s_i)  # validates that the block tiles the shape
    p, q = out // s_o, in_ // s_i
    blocks = w.to(torch.float64).reshape(p, s_o, q, s_i).permute(0, 2, 1, 3)  # (P, Q, s_o, s_i)
    if s_o >= s_i:
        evals, evecs = torch.linalg.eigh(blocks.transpose(-1, -2) @ blocks)
        v1 = evecs[..., :, -1]
        sv = evals[..., -1].clamp_min(0).sqrt()
        u1 = _unit_or_first((blocks @ v1[..., None])[..., 0], sv)
    else:
        evals, evecs = torch.linalg.eigh(blocks @ blocks.transpose(-1, -2))
        u1 = evecs[..., :, -1]
        sv = evals[..., -1].clamp_min(0).sqrt()
        v1 = _unit_or_first((u1[..., None, :] @ blocks)[..., 0, :], sv)
    peak = u1.gather(-1, u1.abs().argmax(-1, keepdim=True))
    sign = torch.where(peak < 0, -1.0, 1.0).to(u1.dtype)
    dtype = w.dtype
    return LocalRank1((u1 * sign).to(dtype).contiguous(), sv.to(dtype).contiguous(), (v1 * sign).to(dtype).contiguous())


def _unit_or_first(x: Tensor, norm: Tensor) -> Tensor:
    """``x / norm`` (unit vectors), or the first basis vector where the block is zero (norm 0)."""
    first = torch.zeros_like(x)
    first[..., 0] = 1.0
    return torch.where(norm[..., None] > 0, x / norm.clamp_min(1e-300)[..., None], first)


@dataclass
class HSVD:
    """H-SVD split of a Hadamard-domain weight: ``w_h = global_.dense() + local.dense() + residual``."""

    global_: LowRank
    local: LocalRank1 | None
    residual: Tensor  # the part to quantize (Eq. 10)

    @property
    def num_params(self) -> int:
        """FP-branch parameters: SVD-G plus SVD-L."""
        return self.global_.num_params + (self.local.num_params if self.local is not None else 0)

    def fp_dense(self) -> Tensor:
        """The full-precision branch as one (out x in) matrix."""
        dense = self.global_.dense()
        return dense + self.local.dense() if self.local is not None else dense


def hsvd(w_h: Tensor, rank: int = 32, local_rank: int = 8, block: tuple[int, int] | None = None) -> HSVD:
    """SVD-G at ``rank``, then SVD-L of its residual with ``block`` (default: select_block at ``local_rank``).

    local_rank 0 disables the SVD-L branch (an explicit block is then contradictory and rejected).
    """
    if local_rank < 0:
        raise UserError(f"local_rank must be >= 0, got {local_rank}")
    if local_rank == 0 and block is not None:
        raise UserError(f"block {tuple(block)} given but local_rank is 0 (SVD-L disabled)")
    w = _as_weight(w_h, "w_h")
    glob = svd_global(w, rank)
    res = w - glob.dense() if rank else w.clone()
    local = None
    if local_rank > 0:
        local = svd_local(res, block if block is not None else select_block(*w.shape, local_rank))
        res = res - local.dense()
    return HSVD(glob, local, res)
