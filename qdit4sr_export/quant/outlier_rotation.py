"""Outlier-aware block rotations for LRQ-DiT's Adaptive Rotation Scheme, built the DuQuant way.

DuQuant (Lin et al., NeurIPS 2024) rotates activations x -> x R with R = R1 P R2: R1 and R2 block-diagonal
orthogonal (blocks of size b), P a zigzag channel permutation. Each block rotation is built greedily: find the
channel d with the largest magnitude, apply G_d = E_d M E_d (E_d swaps channels 0 and d; M is orthogonal with
a uniform first row, so channel d is spread evenly, with weight 1/sqrt(b), over the whole block), recompute the
magnitudes of the rotated channels and repeat; of the partial products the one with the smallest peak is kept
(DuQuant's argmin over its rotation steps). The zigzag permutation then sorts the rotated channels by magnitude
and deals them to blocks in boustrophedon order, and R2 is built the same way on the permuted channels.

Where this follows the paper and where it is filled in:
  * Statistics. Only the per-channel max |x| (m) is given, so rotated magnitudes come from a covariance proxy:
    channels are taken as uncorrelated with scale m_i, i.e. C = diag(m^2), and after a rotation Q the channel
    magnitude is sqrt(diag(Q^T C Q)). The proxy is exact for a single dominant (massive) channel, keeps the
    scale of unrotated Gaussian channels, and tracks coherence: a channel spread by one step and re-mixed by a
    later one is accounted for through the off-diagonal terms (DuQuant recomputes max |x R| on data instead).
  * M = diag(1, Q') H: H the Householder reflection taking e_0 to the all-ones direction u (so row 0 of M is
    u^T, i.e. E_d M E_d maps channel d to u), Q' a fixed seeded random orthogonal matrix on the other b - 1
    coordinates (the paper's Q' that decorrelates successive greedy steps; without it a second step would map
    u straight back onto one channel). det Q' is chosen so every block is a proper rotation (det +1).
    DuQuant's code uses a fixed Givens-chain matrix for M instead; any orthogonal M with a uniform first row
    realises the same step.
  * Each block gets its own greedy rotation from its own statistics (the paper's block-diagonal R-hat; the
    public code shares one rotation across blocks). Stage-2 statistics are the rotated, permuted proxy
    covariance restricted to the new blocks.
  * Optional presort (not in DuQuant): a zigzag permutation of the raw channels before R1, so the n/b largest
    channels start in distinct blocks.
Smoothing (alpha = 0.5) is applied by the caller before the statistics are taken.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from qdit4sr_export.errors import UserError

__all__ = [
    "ROTATION_KINDS",
    "BlockRotation",
    "activation_fluctuation",
    "choose_rotation",
    "outlier_rotation",
    "zigzag_permutation",
]

ROTATION_KINDS = ("hadamard", "outlier")
_F64 = torch.float64
_ORTHO_TOL = 1e-6


def _check_int(x: Any, name: str, low: int) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or int(x) < low:
        raise UserError(f"{name} must be an integer >= {low}, got {x!r}")
    return int(x)


def _check_perm(perm: Any, n: int, name: str) -> None:
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.long or tuple(perm.shape) != (n,):
        raise UserError(f"{name} must be a 1-D long tensor of length {n}, got "
                        f"{getattr(perm, 'dtype', type(perm).__name__)} {tuple(getattr(perm, 'shape', ()))}")
    if not torch.equal(perm.sort().values, torch.arange(n, device=perm.device)):
        raise UserError(f"{name} is not a permutation of 0..{n - 1}")


def _check_blocks(q: Any, nb: int, b: int, name: str) -> None:
    if not isinstance(q, torch.Tensor) or not q.is_floating_point() or tuple(q.shape) != (nb, b, b):
        raise UserError(f"{name} must be a floating-point tensor of shape ({nb}, {b}, {b}), got "
                        f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}")
    q64 = q.detach().to(_F64)
    eye = torch.eye(b, dtype=_F64, device=q.device)
    if float((q64.transpose(1, 2) @ q64 - eye).abs().max()) > _ORTHO_TOL:
        raise UserError(f"{name} are not orthogonal (tolerance {_ORTHO_TOL})")


@dataclass(frozen=True)
class BlockRotation:
    """R = P_before diag(blocks_1) P diag(blocks_2) on n channels (x -> x R); None parts are identities."""

    n: int
    block: int
    perm_before: torch.Tensor | None
    blocks_1: torch.Tensor
    perm: torch.Tensor | None
    blocks_2: torch.Tensor | None

    def __post_init__(self) -> None:
        n, b = _check_int(self.n, "rotation size n", 1), _check_int(self.block, "rotation block", 1)
        if n % b:
            raise UserError(f"rotation block={b} does not divide n={n}")
        for name in ("perm_before", "perm"):
            if getattr(self, name) is not None:
                _check_perm(getattr(self, name), n, name)
        _check_blocks(self.blocks_1, n // b, b, "blocks_1")
        if self.blocks_2 is not None:
            _check_blocks(self.blocks_2, n // b, b, "blocks_2")

    @property
    def n_blocks(self) -> int:
        """Number of diagonal blocks, n / block."""
        return self.n // self.block

    def matrix(self) -> torch.Tensor:
        """The explicit n x n orthogonal R in float64 (for checks; apply() never forms it)."""
        return self.apply(torch.eye(self.n, dtype=_F64, device=self.blocks_1.device))

    def _prepare(self, x: Any) -> tuple[torch.Tensor, torch.dtype]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = getattr(x, "dtype", type(x).__name__)
            raise UserError(f"rotation input must be a floating-point tensor, got {got}")
        if x.dim() == 0 or x.shape[-1] != self.n:
            raise UserError(f"rotation of size n={self.n} needs a last dim of {self.n}, got shape {tuple(x.shape)}")
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return x.to(work), work

    def _blocks(self, x: torch.Tensor, q: torch.Tensor, transpose: bool) -> torch.Tensor:
        q = q.to(dtype=x.dtype, device=x.device)
        y = x.reshape(*x.shape[:-1], self.n_blocks, self.block)
        eq = "...kc,kbc->...kb" if transpose else "...kb,kbc->...kc"
        return torch.einsum(eq, y, q).reshape(x.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x @ R along the last dim, blockwise (no n x n product); keeps x's dtype."""
        y, _ = self._prepare(x)
        if self.perm_before is not None:
            y = y[..., self.perm_before.to(y.device)]
        y = self._blocks(y, self.blocks_1, transpose=False)
        if self.perm is not None:
            y = y[..., self.perm.to(y.device)]
        if self.blocks_2 is not None:
            y = self._blocks(y, self.blocks_2, transpose=False)
        return y.to(x.dtype)

    def apply_inverse(self, x: torch.Tensor) -> torch.Tensor:
        """x @ R^T (undoes apply); keeps x's dtype."""
        y, _ = self._prepare(x)
        if self.blocks_2 is not None:
            y = self._blocks(y, self.blocks_2, transpose=True)
        if self.perm is not None:
            y = y[..., torch.argsort(self.perm).to(y.device)]
        y = self._blocks(y, self.blocks_1, transpose=True)
        if self.perm_before is not None:
            y = y[..., torch.argsort(self.perm_before).to(y.device)]
        return y.to(x.dtype)


def zigzag_permutation(magnitudes: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """DuQuant's zigzag: channels by descending magnitude dealt to blocks 0..k-1, k-1..0, 0..k-1, ...

    Returns perm (long) with x[..., perm] the permuted channels: block i is perm[i*b:(i+1)*b], its channels in
    descending magnitude, so the n_blocks largest channels land in distinct blocks. Ties keep index order.
    """
    _check_stats(magnitudes, "zigzag magnitudes")
    n = magnitudes.shape[0]
    nb = _check_int(n_blocks, "n_blocks", 1)
    if n % nb:
        raise UserError(f"n_blocks={nb} does not divide the {n} channels")
    b = n // nb
    order = torch.sort(magnitudes.detach().to(_F64), descending=True, stable=True).indices
    rnd = torch.arange(b, device=order.device)[None, :]
    blk = torch.arange(nb, device=order.device)[:, None]
    rank = rnd * nb + torch.where(rnd % 2 == 0, blk, nb - 1 - blk)  # sorted rank in block blk, slot rnd
    return order[rank.reshape(-1)]


def _check_stats(stats: Any, name: str) -> None:
    if not isinstance(stats, torch.Tensor) or not stats.is_floating_point():
        raise UserError(f"{name} must be a floating-point tensor, got {getattr(stats, 'dtype', type(stats).__name__)}")
    if stats.ndim != 1 or stats.numel() == 0:
        raise UserError(f"{name} must be a non-empty 1-D per-channel tensor, got shape {tuple(stats.shape)}")
    if not bool(torch.isfinite(stats).all()) or bool((stats < 0).any()):
        raise UserError(f"{name} must be finite and non-negative")


def _spread_matrix(b: int, seed: int) -> torch.Tensor:
    """M = diag(1, Q') H (float64, det +1): row 0 is the uniform vector, the other rows are randomly mixed."""
    u = torch.full((b,), 1.0 / math.sqrt(b), dtype=_F64)
    v = -u
    v[0] += 1.0
    h = torch.eye(b, dtype=_F64) - (2.0 / float(v @ v)) * torch.outer(v, v)  # Householder: e_0 <-> u, det -1
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(b - 1, b - 1, generator=g, dtype=_F64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if float(torch.linalg.det(q)) > 0:  # make det(diag(1, Q') H) = +1
        q[:, 0] = -q[:, 0]
    d = torch.eye(b, dtype=_F64)
    d[1:, 1:] = q
    return d @ h


def _greedy(cov: torch.Tensor, m: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy block rotations from proxy covariances cov (k, b, b); returns the best prefix Q and Q^T cov Q."""
    k, b, _ = cov.shape
    q = torch.eye(b, dtype=_F64).expand(k, b, b).clone()
    best_q, best_cov = q.clone(), cov.clone()
    best_peak = torch.diagonal(cov, dim1=1, dim2=2).amax(1)
    base = torch.arange(b).expand(k, b).clone()
    rows = torch.arange(k)
    for _ in range(steps):
        d = torch.diagonal(cov, dim1=1, dim2=2).argmax(1)
        swap = base.clone()
        swap[rows, 0], swap[rows, d] = d, 0
        g = m[swap[:, :, None], swap[:, None, :]]  # E_d M E_d
        q = q @ g
        cov = g.transpose(1, 2) @ cov @ g
        peak = torch.diagonal(cov, dim1=1, dim2=2).amax(1)
        better = peak < best_peak
        best_q = torch.where(better[:, None, None], q, best_q)
        best_cov = torch.where(better[:, None, None], cov, best_cov)
        best_peak = torch.minimum(peak, best_peak)
    return best_q, best_cov


def outlier_rotation(
    act_absmax: torch.Tensor,
    *,
    block: int = 128,
    greedy_steps: int = 8,
    zigzag: bool = True,
    presort: bool = False,
    seed: int = 0,
) -> BlockRotation:
    """DuQuant-style R = R1 P R2 from per-channel max |x| (see the module docstring); zigzag=False gives R1 only.

    block must divide n and be >= 2 (callers pass a smaller power-of-two divisor where 128 does not divide n).
    """
    _check_stats(act_absmax, "activation statistics")
    n = act_absmax.shape[0]
    b = _check_int(block, "rotation block", 2)
    if n % b:
        raise UserError(f"rotation block={b} does not divide the {n} input channels")
    steps = _check_int(greedy_steps, "greedy_steps", 0)
    seed = _check_int(seed, "seed", 0)
    nb = n // b
    m2 = act_absmax.detach().to(device="cpu", dtype=_F64).square()
    perm_before = zigzag_permutation(m2, nb) if presort else None
    if perm_before is not None:
        m2 = m2[perm_before]
    spread = _spread_matrix(b, seed)
    q1, cov1 = _greedy(torch.diag_embed(m2.reshape(nb, b)), spread, steps)
    if not zigzag:
        return BlockRotation(n=n, block=b, perm_before=perm_before, blocks_1=q1, perm=None, blocks_2=None)
    perm = zigzag_permutation(torch.diagonal(cov1, dim1=1, dim2=2).reshape(-1), nb)
    src = perm.reshape(nb, b)
    blk, off = src // b, src % b  # stage-1 block and offset of each stage-2 channel
    same = blk[:, :, None] == blk[:, None, :]
    cov2 = torch.where(same, cov1[blk[:, :, None], off[:, :, None], off[:, None, :]], 0.0)
    q2, _ = _greedy(cov2, spread, steps)
    return BlockRotation(n=n, block=b, perm_before=perm_before, blocks_1=q1, perm=perm, blocks_2=q2)


def activation_fluctuation(x: torch.Tensor) -> float:
    """Outlier severity of a layer's inputs: the mean over tokens of max|x_t| / rms(x_t) (all-zero tokens skipped).

    About sqrt(2 ln n) for Gaussian tokens, approaching sqrt(n) when one channel dominates; 0.0 if all tokens are 0.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError(f"activations must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 0 or x.numel() == 0:
        raise UserError(f"activations must be a non-empty (..., channels) tensor, got shape {tuple(x.shape)}")
    t = x.detach().reshape(-1, x.shape[-1]).to(_F64)
    if not bool(torch.isfinite(t).all()):
        raise UserError("activations contain NaN or infinite values")
    rms = t.square().mean(1).sqrt()
    live = rms > 0
    if not bool(live.any()):
        return 0.0
    return float((t[live].abs().amax(1) / rms[live]).mean())


def choose_rotation(x: torch.Tensor, threshold: float) -> str:
    """"outlier" when activation_fluctuation(x) exceeds threshold, else "hadamard" (LRQ-DiT's adaptive choice)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold) \
            or threshold <= 0:
        raise UserError(f"rotation threshold must be a finite positive number, got {threshold!r}")
    return "outlier" if activation_fluctuation(x) > float(threshold) else "hadamard"
