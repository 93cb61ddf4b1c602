"""The Gaussian quantizer of Q-DiT4SR (Sec. 3.1, 3.4): uniform grids pre-optimised for N(0, 1), scaled per token / row.

After the Hadamard rotation (done by the caller) an activation token z is ~ N(0, sigma_t^2 I) with
sigma_t = rms(z) (Eq. 1), so Q_G(z) = sigma_t * Q_uni(z / sigma_t) (Eq. 2) needs one clip per bit-width,
chosen once to minimise E[(Z - Q(Z))^2] for Z ~ N(0, 1); that minimum is kappa(b) (Eq. 19). Weights use
the same quantizer per output channel with sigma_o = rms(row) (Eq. 3).

Two grids are supported:
  * "integer": levels k * c / qmax, |k| <= qmax = 2^(b-1) - 1, thresholds at midpoints (the signed,
    zero-point-free grid integer kernels use; the clip c is the largest level). All tensor code uses it.
  * "midrise": 2^b levels (k + 1/2) * Delta, Delta = 2A / 2^b, thresholds at multiples of Delta, clip A.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.checks import BITS, check_bits

GRIDS = ("integer", "midrise")
CLIPS = ("gaussian", "minmax")

# Scale floor for all-zero tokens / rows: dividing zero by it gives zero, never NaN.
_TINY = torch.finfo(torch.float32).tiny
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _check_grid(grid: str) -> str:
    if not isinstance(grid, str) or grid not in GRIDS:
        raise UserError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    return grid


def qmax(bits: int) -> int:
    """Largest integer code 2^(b-1) - 1 of the signed integer grid (codes lie in [-qmax, qmax])."""
    return 2 ** (check_bits(bits) - 1) - 1


# ---------------------------------------------------------------------------------------------
# Exact MSE of a grid on N(0, 1)
# ---------------------------------------------------------------------------------------------


def _half_grid(clip: float, bits: int, grid: str) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds t_0 = 0 < ... < t_K (cell j is [t_j, t_{j+1}), t_{K+1} = inf) and levels of the positive half."""
    if grid == "midrise":
        half = 2 ** (bits - 1)
        delta = clip / half
        thresholds = np.arange(half, dtype=np.float64) * delta
        levels = (np.arange(half, dtype=np.float64) + 0.5) * delta
    else:
        m = 2 ** (bits - 1) - 1
        step = clip / m
        # Zero cell [0, step/2) -> 0, then [(k - 1/2) step, (k + 1/2) step) -> k step; the last one is open.
        thresholds = np.concatenate(([0.0], (np.arange(1, m + 1, dtype=np.float64) - 0.5) * step))
        levels = np.arange(m + 1, dtype=np.float64) * step
    return thresholds, levels


def _cell_moments(thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell [a, b): P = Phi(b) - Phi(a), M1 = int z phi, M2 = int z^2 phi (last cell runs to +inf)."""
    upper = np.array([0.5 * math.erfc(t * _INV_SQRT2) for t in thresholds])  # 1 - Phi(t), accurate in the tail
    pdf = _INV_SQRT2PI * np.exp(-0.5 * thresholds * thresholds)
    upper_b = np.append(upper[1:], 0.0)
    pdf_b = np.append(pdf[1:], 0.0)
    tpdf = thresholds * pdf
    tpdf_b = np.append(tpdf[1:], 0.0)
    prob = upper - upper_b
    m1 = pdf - pdf_b  # int_a^b z phi(z) dz = phi(a) - phi(b)
    m2 = prob - (tpdf_b - tpdf)  # int_a^b z^2 phi(z) dz = Phi(b) - Phi(a) - (b phi(b) - a phi(a))
    return prob, m1, m2


def _check_clip(clip: float) -> float:
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not math.isfinite(clip) or clip <= 0:
        raise UserError(f"clip must be a finite positive number, got {clip!r}")
    return float(clip)


def quantizer_mse(clip: float, bits: int, grid: str) -> float:
    """Exact E[(Z - Q(Z))^2], Z ~ N(0, 1), for the grid with this clip: closed-form per-cell integrals, float64.

    int_a^b (z - l)^2 phi = (Phi(b) - Phi(a))(1 + l^2) - (b phi(b) - a phi(a)) + 2 l (phi(b) - phi(a)).
    """
    bits, grid, clip = check_bits(bits), _check_grid(grid), _check_clip(clip)
    thresholds, levels = _half_grid(clip, bits, grid)
    prob, m1, m2 = _cell_moments(thresholds)
    return float(2.0 * np.sum(m2 - 2.0 * levels * m1 + levels * levels * prob))  # x2: the grid is symmetric


def _clip_gradient_sign(clip: float, bits: int, grid: str) -> float:
    """Sum_k l_k (int z phi - l_k P_k) over cells: d MSE / d clip = -(4 / clip) times this.

    Thresholds are midpoints between levels, so their motion adds nothing (Leibniz terms cancel); only the
    levels move, each proportionally to the clip. Its root is where the MSE is flat, without the sqrt(eps)
    precision floor a comparison of nearly equal MSE values would have.
    """
    thresholds, levels = _half_grid(clip, bits, grid)
    prob, m1, _ = _cell_moments(thresholds)
    return float(np.sum(levels * m1 - levels * levels * prob))


@functools.lru_cache(maxsize=None)
def _optimal_clip(bits: int, grid: str) -> float:
    # Coarse scan of the (smooth, unimodal) MSE, then bisection on the sign of its derivative in the bracket.
    scan = np.arange(0.2, 8.0 + 1e-9, 0.02)
    mses = [quantizer_mse(float(c), bits, grid) for c in scan]
    i = int(np.argmin(mses))
    if i == 0 or i == len(scan) - 1:
        raise RuntimeError(f"optimal clip for bits={bits} grid={grid} is outside the scanned range")
    lo, hi = float(scan[i - 1]), float(scan[i + 1])
    # MSE falls at lo (gradient sign > 0) and rises at hi (< 0).
    if not (_clip_gradient_sign(lo, bits, grid) > 0 > _clip_gradient_sign(hi, bits, grid)):
        raise RuntimeError(f"optimal clip for bits={bits} grid={grid} is not bracketed by the scan")
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _clip_gradient_sign(mid, bits, grid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def optimal_clip(bits: int, grid: str = "integer") -> float:
    """Clip minimising the grid's MSE on N(0, 1) (largest level c* for "integer", A* for "midrise"); cached."""
    return _optimal_clip(check_bits(bits), _check_grid(grid))


def kappa(bits: int, grid: str = "integer") -> float:
    """kappa(b) (Eq. 19): the minimum over the clip of E[(Z - Q(Z))^2], Z ~ N(0, 1), i.e. the relative MSE of Q_G."""
    bits, grid = check_bits(bits), _check_grid(grid)
    return quantizer_mse(_optimal_clip(bits, grid), bits, grid)


def kappa_table(grid: str = "integer") -> dict[int, float]:
    """kappa(b) for every supported bit-width b = 2..8, for reports and error budgets."""
    _check_grid(grid)
    return {b: kappa(b, grid) for b in BITS}


# ---------------------------------------------------------------------------------------------
# Tensor quantizers (integer grid)
# ---------------------------------------------------------------------------------------------


def _check_tensor(x: torch.Tensor, name: str, ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 0 or x.shape[-1] == 0 or (ndim is not None and x.ndim != ndim):
        want = f"{ndim}-D" if ndim is not None else "at least 1-D"
        raise UserError(f"{name} must be {want} with a non-empty last dimension, got shape {tuple(x.shape)}")


def _work(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it already is (never lower precision than float32)."""
    return x if x.dtype == torch.float64 else x.float()


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean(dim=-1, keepdim=True).sqrt()


def _check_clip_name(clip: str) -> None:
    if clip not in CLIPS:
        raise UserError(f"clip must be one of {', '.join(CLIPS)}, got {clip!r}")


def token_scales(z: torch.Tensor, bits: int, *, clip: str = "gaussian") -> torch.Tensor:
    """Per-token integer-grid step (last dim reduced, keepdim), float32 (float64 for float64 z).

    clip "gaussian": rms(z) * c*(b) / qmax (Eq. 1-2); "minmax": max|z| / qmax (RTN, never clips).
    All-zero tokens get a tiny positive scale so they quantize to 0, never NaN.
    """
    bits = check_bits(bits)
    _check_clip_name(clip)
    _check_tensor(z, "activation")
    zf = _work(z)
    if clip == "gaussian":
        scale = _rms(zf) * (optimal_clip(bits, "integer") / qmax(bits))
    else:
        scale = zf.abs().amax(dim=-1, keepdim=True) / qmax(bits)
    return scale.clamp_min(_TINY)


def _groups(x: torch.Tensor, group_size: int | None, what: str) -> torch.Tensor:
    """View the last dim as (n_groups, group_size) so per-row quantizers act per group."""
    if group_size is None:
        return x
    c = x.shape[-1]
    if not isinstance(group_size, int) or group_size < 1 or c % group_size:
        raise UserError(f"group size {group_size!r} must be a positive divisor of the {what} width {c}")
    return x.reshape(*x.shape[:-1], c // group_size, group_size)


def fake_quantize_tokens(z: torch.Tensor, bits: int, *, clip: str = "gaussian", group_size: int | None = None
                         ) -> torch.Tensor:
    """Q_G (Eq. 2) on the integer grid: clamp(round(z / s), -qmax, qmax) * s per token (or per token and
    group of ``group_size`` channels); same dtype and shape as z.

    Rounding is torch.round, i.e. round-half-to-even (ties are measure-zero for real data).
    """
    zg = _groups(z, group_size, "activation")
    scale = token_scales(zg, bits, clip=clip)
    m = qmax(bits)
    q = torch.clamp(torch.round(_work(zg) / scale), -m, m) * scale
    return q.reshape(z.shape).to(z.dtype)


def fake_quantize_midrise(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_G on the midrise grid (2^b levels, clip A* = rms * optimal_clip(b, "midrise")); for checking kappa only."""
    bits = check_bits(bits)
    _check_tensor(z, "activation")
    zf = _work(z)
    half = 2 ** (bits - 1)
    delta = (_rms(zf) * (optimal_clip(bits, "midrise") / half)).clamp_min(_TINY)
    k = torch.clamp(torch.floor(zf / delta), -half, half - 1)
    return ((k + 0.5) * delta).to(z.dtype)


@dataclass(frozen=True)
class QuantizedWeight:
    """Per-output-channel integer weight: W ~ codes * scale, codes int8 in [-qmax, qmax] (out x in), scale (out, 1)."""

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int

    def __post_init__(self) -> None:
        bits = check_bits(self.bits)
        if not isinstance(self.codes, torch.Tensor) or self.codes.dtype != torch.int8 or self.codes.ndim != 2:
            raise UserError(f"weight codes must be a 2-D int8 tensor, got {getattr(self.codes, 'dtype', None)}")
        out = self.codes.shape[0]
        if (
            not isinstance(self.scale, torch.Tensor)
            or self.scale.dtype != torch.float32
            or tuple(self.scale.shape) != (out, 1)
        ):
            raise UserError(
                f"weight scale must be a float32 tensor of shape ({out}, 1), got "
                f"{getattr(self.scale, 'dtype', None)} {tuple(getattr(self.scale, 'shape', ()))}"
            )
        m = 2 ** (bits - 1) - 1
        if self.codes.numel() and (int(self.codes.max()) > m or int(self.codes.min()) < -m):  # no int8 abs(-128)
            raise UserError(f"weight codes exceed +-{m} for {bits} bits")

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes * scale computed in float32, returned as `dtype` (the fake-quantized weight)."""
        return (self.codes.to(torch.float32) * self.scale).to(dtype)


def quantize_weight(w: torch.Tensor, bits: int, *, clip: str = "gaussian") -> QuantizedWeight:
    """Quantize a (rotated, residual) weight per output row on the integer grid (Eq. 3).

    clip "gaussian": scale = rms(row) * c*(b) / qmax; "minmax": scale = max|row| / qmax (never clips).
    All-zero rows get a tiny positive scale and codes 0.
    """
    bits = check_bits(bits)
    _check_clip_name(clip)
    _check_tensor(w, "weight", ndim=2)
    m = qmax(bits)
    wd = w.detach().to(torch.float64)  # weights are small: accumulate the statistic in float64
    if clip == "gaussian":
        scale = _rms(wd) * (optimal_clip(bits, "integer") / m)
    else:
        scale = wd.abs().amax(dim=-1, keepdim=True) / m
    scale = scale.to(torch.float32).clamp_min(_TINY)
    codes = torch.clamp(torch.round(w.detach().float() / scale), -m, m).to(torch.int8)
    return QuantizedWeight(codes=codes, scale=scale, bits=bits)


def fake_quantize_weight(w: torch.Tensor, bits: int, *, clip: str = "gaussian", group_size: int | None = None
                         ) -> torch.Tensor:
    """The weight as the quantized model sees it: per output row, or per row and group of ``group_size``
    input channels (each group its own scale)."""
    if group_size is None:
        return quantize_weight(w, bits, clip=clip).dequantize(w.dtype)
    _check_tensor(w, "weight", ndim=2)
    rows = _groups(w, group_size, "weight input").reshape(-1, group_size)
    return quantize_weight(rows, bits, clip=clip).dequantize(w.dtype).reshape(w.shape)
