"""Twin-Log Quantization (TLQ) of weights, after LRQ-DiT: a per-row log grid for each sign part.

Each output row is split by sign. For a sign part u = log2(|w| + eta) is quantized uniformly with
L = 2^(b-1) levels on [lo, hi]: lo is the part's row minimum of u, hi its row p-quantile (p_pos for the
positive part, p_neg for the negative one; linear interpolation between order statistics, as torch.quantile);
u above hi clips to the top level. Level k decodes to sign * (2^q - eta), q = lo + k * (hi - lo) / (L - 1).
b bits thus hold L positive and L negative levels, so b >= 2 (2 levels per sign) is the smallest width.

Zero weights have no sign and join the positive part. With eta > 0 their log value log2(eta) is the smallest
possible u, so it is the part's lo, and any q <= log2(eta) (rounded to float32) decodes to exactly 0. With
eta = 0, log2(0) = -inf: zeros are left out of lo / hi and take positive level 0 (the row's smallest positive
magnitude). A sign part with no such entries gets lo = hi = log2(eta) and decodes to 0, so an all-zero row
stays zero for every eta.

Codes are b-bit two's-complement integers c in [-L, L-1] held in int8: c = k for positive level k and
c = -(k + 1) for negative level k (sign = c < 0, level = c if c >= 0 else -1 - c). lo / hi are float32
(out, 2), column 0 the positive part and column 1 the negative part. Encoding and decoding both run in
float32 from those stored bounds, so TLQCodes.dequantize() reproduces tlq_fake_quantize() bit for bit.

The eta grid is absolute: it presumes weights at the scale of trained DiT layers (std about 0.01 to 0.05).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import check_bits

__all__ = [
    "ETA_GRID",
    "PERCENTILE_GRID",
    "TLQCodes",
    "TLQParams",
    "search_tlq",
    "tlq_fake_quantize",
    "tlq_quantize",
]

ETA_GRID: tuple[float, ...] = (0.0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
PERCENTILE_GRID: tuple[float, ...] = (0.98, 0.99, 0.999, 0.9999, 0.99999)

_F32 = torch.float32
_KEYS = ("eta", "p_pos", "p_neg", "bits")


def _real(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(float(x)):
        raise UserError(f"TLQ {name} must be a finite number, got {x!r}")
    return float(x)


def _check_eta(eta: Any) -> float:
    value = _real(eta, "eta")
    if value < 0:
        raise UserError(f"TLQ eta must be >= 0, got {value}")
    return value


def _check_percentile(p: Any, name: str) -> float:
    value = _real(p, name)
    if not 0.0 < value <= 1.0:
        raise UserError(f"TLQ {name} must lie in (0, 1], got {value}")
    return value


@dataclass(frozen=True)
class TLQParams:
    """One TLQ setting: offset eta, upper percentiles of the positive / negative log parts, and bit-width."""

    eta: float
    p_pos: float
    p_neg: float
    bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta", _check_eta(self.eta))
        object.__setattr__(self, "p_pos", _check_percentile(self.p_pos, "p_pos"))
        object.__setattr__(self, "p_neg", _check_percentile(self.p_neg, "p_neg"))
        object.__setattr__(self, "bits", check_bits(self.bits, "TLQ bits"))

    @property
    def levels(self) -> int:
        """Levels per sign part, L = 2^(bits-1)."""
        return 1 << (self.bits - 1)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready {eta, p_pos, p_neg, bits}."""
        return {"eta": self.eta, "p_pos": self.p_pos, "p_neg": self.p_neg, "bits": self.bits}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TLQParams":
        """Rebuild from to_dict() output, naming any missing or unknown key."""
        if not isinstance(d, Mapping):
            raise UserError(f"TLQ parameters must be a mapping with keys {', '.join(_KEYS)}; got {type(d).__name__}")
        unknown = sorted(map(str, set(d) - set(_KEYS)))
        if unknown:
            raise UserError(f"unknown key(s) in TLQ parameters: {', '.join(unknown)}")
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise UserError(f"TLQ parameters are missing the key(s): {', '.join(missing)}")
        return cls(eta=d["eta"], p_pos=d["p_pos"], p_neg=d["p_neg"], bits=d["bits"])


# ---------------------------------------------------------------------------------------------------------
# Shared numerics: quantize and the grid search use the same bounds, steps and level decode


class _Parts(NamedTuple):
    """|w| in float32 plus, per row, the ascending magnitudes of each sign part (+inf padded) and counts."""

    a: torch.Tensor
    neg: torch.Tensor
    pos_sorted: torch.Tensor
    neg_sorted: torch.Tensor
    n_pos: torch.Tensor  # entries with w >= 0 (zeros included)
    n_zero: torch.Tensor
    n_neg: torch.Tensor


def _check_weight(w: Any) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise UserError(f"TLQ weight must be a floating-point tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim != 2 or w.numel() == 0:
        raise UserError(f"TLQ weight must be a non-empty 2-D (out, in) tensor, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise UserError("TLQ weight contains NaN or infinite values")


def _parts(w: torch.Tensor) -> _Parts:
    wf = w.detach().to(_F32)
    a, neg, zero = wf.abs(), wf < 0, wf == 0
    inf = torch.tensor(math.inf, dtype=_F32, device=wf.device)
    pos_sorted = torch.where(neg, inf, a).sort(dim=1).values
    neg_sorted = torch.where(neg, a, inf).sort(dim=1).values
    n_neg = neg.sum(dim=1)
    return _Parts(a, neg, pos_sorted, neg_sorted, w.shape[1] - n_neg, zero.sum(dim=1), n_neg)


def _floor(eta: float) -> float:
    """log2(eta) rounded to float32 (-inf for eta = 0): the log value that decodes to 0."""
    return float(torch.tensor(math.log2(eta) if eta > 0 else -math.inf, dtype=_F32))


def _bounds(
    s: torch.Tensor, start: torch.Tensor, count: torch.Tensor, eta: float, ps: Sequence[float], zero_lo: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row lo (out,) and hi (out, len(ps)) of u = log2(|w| + eta) over s[start : start + count], float32."""
    n = s.shape[1]
    floor = _floor(eta)
    last = (count - 1).clamp_min(0)
    pos = torch.tensor(list(ps), dtype=torch.float64, device=s.device)[None, :] * last[:, None].double()
    i0 = pos.floor()
    frac = (pos - i0).to(_F32)
    i0 = i0.long()
    i1 = torch.minimum(i0 + 1, last[:, None])

    def u_at(idx: torch.Tensor) -> torch.Tensor:
        return torch.log2(s.gather(1, (start[:, None] + idx).clamp(max=n - 1)) + eta)

    lo = u_at(torch.zeros_like(start)[:, None])[:, 0]
    v0, v1 = u_at(i0), u_at(i1)
    hi = v0 + frac * (v1 - v0)
    empty = count == 0
    lo = torch.where(empty | zero_lo, floor, lo)
    hi = torch.where(empty[:, None], floor, hi)
    return lo, torch.maximum(hi, lo[:, None])


def _part_bounds(p: _Parts, eta: float, ps_pos: Sequence[float], ps_neg: Sequence[float]):
    """(lo_pos, hi_pos, lo_neg, hi_neg) for one eta; zeros count in the positive part only when eta > 0."""
    if eta > 0:
        start, count, zero_lo = torch.zeros_like(p.n_pos), p.n_pos, p.n_zero > 0
    else:
        start, count, zero_lo = p.n_zero, p.n_pos - p.n_zero, torch.zeros_like(p.n_zero, dtype=torch.bool)
    lo_p, hi_p = _bounds(p.pos_sorted, start, count, eta, ps_pos, zero_lo)
    lo_n, hi_n = _bounds(p.neg_sorted, torch.zeros_like(p.n_neg), p.n_neg, eta, ps_neg, torch.zeros_like(zero_lo))
    return lo_p, hi_p, lo_n, hi_n


def _steps(lo: torch.Tensor, hi: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.where(hi > lo, (hi - lo) / (levels - 1), torch.zeros((), dtype=_F32, device=lo.device))


def _encode(d: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    """Level index (float32) from d = u - lo; a zero step (single-valued part) gives level 0."""
    k = torch.round(d / step).clamp_(0, levels - 1)
    return torch.where(step > 0, k, torch.zeros((), dtype=_F32, device=d.device))


def _magnitude(lo: torch.Tensor, step: torch.Tensor, k: torch.Tensor, eta: float) -> torch.Tensor:
    """|decoded| = 2^q - eta with q = lo + k * step; q at or below log2(eta) decodes to exactly 0."""
    q = lo + k * step
    mag = (torch.exp2(q) - eta).clamp_min_(0)
    return torch.where(q <= _floor(eta), torch.zeros((), dtype=_F32, device=q.device), mag)


def _prefix_sums(s: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row prefix sums (out, n + 1) of a and a^2 in float64 over the sorted part (padding counts as 0)."""
    valid = torch.arange(s.shape[1], device=s.device)[None, :] < count[:, None]
    a = torch.where(valid, s, 0.0).double()
    zero = torch.zeros(s.shape[0], 1, dtype=torch.float64, device=s.device)
    return torch.cat([zero, a.cumsum(1)], 1), torch.cat([zero, a.square().cumsum(1)], 1)


def _binned_error(
    s: torch.Tensor, count: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
    lo: torch.Tensor, hi: torch.Tensor, levels: int, eta: float,
) -> torch.Tensor:
    """Squared error of one sign part for each percentile column of hi (out, P), summed over rows: (P,) float64.

    Rounding u to the nearest level is a threshold test on |w| (thresholds 2^(lo + (k + 1/2) step) - eta), so
    each level's members form a run of the sorted part and their error follows from prefix sums of a and a^2.
    """
    out, npct = hi.shape
    lo = lo[:, None].expand(out, npct)
    step = _steps(lo, hi, levels)
    k = torch.arange(levels, dtype=_F32, device=s.device)
    mag = _magnitude(lo[..., None], step[..., None], k, eta).double()  # (out, P, L)
    cut = torch.exp2(lo[..., None] + (k[:-1] + 0.5) * step[..., None]) - eta
    cut = torch.where(step[..., None] > 0, cut, torch.full((), math.inf, dtype=_F32, device=s.device))
    idx = torch.searchsorted(s, cut.reshape(out, -1)).reshape(out, npct, levels - 1)
    idx = torch.minimum(idx, count[:, None, None])
    bounds = torch.cat([torch.zeros_like(idx[..., :1]), idx, count[:, None, None].expand(out, npct, 1)], 2)
    flat = bounds.reshape(out, -1)
    c1, c2 = s1.gather(1, flat).reshape(bounds.shape), s2.gather(1, flat).reshape(bounds.shape)
    n = (bounds[..., 1:] - bounds[..., :-1]).double()
    d1, d2 = c1[..., 1:] - c1[..., :-1], c2[..., 1:] - c2[..., :-1]
    return (d2 - 2 * mag * d1 + n * mag.square()).clamp_min(0).sum(dim=(0, 2))


# ---------------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class TLQCodes:
    """A TLQ weight: int8 codes (two's complement: k or -(k+1)), float32 lo / hi (out, 2) per sign, params."""

    codes: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    params: TLQParams

    def __post_init__(self) -> None:
        if not isinstance(self.params, TLQParams):
            raise UserError(f"TLQ codes need TLQParams, got {type(self.params).__name__}")
        c = self.codes
        if not isinstance(c, torch.Tensor) or c.dtype != torch.int8 or c.ndim != 2:
            raise UserError(f"TLQ codes must be a 2-D int8 tensor, got {getattr(c, 'dtype', type(c).__name__)}")
        for name in ("lo", "hi"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != _F32 or tuple(t.shape) != (c.shape[0], 2):
                raise UserError(
                    f"TLQ {name} must be a float32 tensor of shape ({c.shape[0]}, 2), got "
                    f"{getattr(t, 'dtype', None)} {tuple(getattr(t, 'shape', ()))}"
                )
        m = self.params.levels
        if c.numel() and (int(c.max()) > m - 1 or int(c.min()) < -m):
            raise UserError(f"TLQ codes exceed [-{m}, {m - 1}] for {self.params.bits} bits")

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decoded weight sign * (2^q - eta), computed in float32 and returned as `dtype`."""
        levels, eta = self.params.levels, self.params.eta
        c = self.codes.to(torch.int32)
        neg = c < 0
        k = torch.where(neg, -1 - c, c).to(_F32)
        lo = torch.where(neg, self.lo[:, 1:2], self.lo[:, 0:1])
        step = torch.where(neg, _steps(self.lo[:, 1:2], self.hi[:, 1:2], levels),
                           _steps(self.lo[:, 0:1], self.hi[:, 0:1], levels))
        mag = _magnitude(lo, step, k, eta)
        return torch.where(neg, -mag, mag).to(dtype)


def tlq_quantize(w: torch.Tensor, params: TLQParams) -> TLQCodes:
    """Encode a 2-D (out, in) weight with TLQ; see the module docstring for the code layout."""
    if not isinstance(params, TLQParams):
        raise UserError(f"TLQ needs TLQParams, got {type(params).__name__}")
    _check_weight(w)
    p = _parts(w)
    levels, eta = params.levels, params.eta
    lo_p, hi_p, lo_n, hi_n = _part_bounds(p, eta, (params.p_pos,), (params.p_neg,))
    lo_p, hi_p, lo_n, hi_n = lo_p[:, None], hi_p[:, :1], lo_n[:, None], hi_n[:, :1]
    lo = torch.where(p.neg, lo_n, lo_p)
    step = torch.where(p.neg, _steps(lo_n, hi_n, levels), _steps(lo_p, hi_p, levels))
    k = _encode(torch.log2(p.a + eta) - lo, step, levels)
    codes = torch.where(p.neg, -1 - k, k).to(torch.int8)
    return TLQCodes(codes=codes, lo=torch.cat([lo_p, lo_n], 1), hi=torch.cat([hi_p, hi_n], 1), params=params)


def tlq_fake_quantize(w: torch.Tensor, params: TLQParams) -> torch.Tensor:
    """The TLQ-dequantized weight, same shape and dtype as w (= tlq_quantize(w, params).dequantize(w.dtype))."""
    return tlq_quantize(w, params).dequantize(w.dtype)


def _check_grid(values: Any, name: str, check) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise UserError(f"TLQ search needs a non-empty sequence of {name}, got {values!r}")
    return tuple(check(v) for v in values)


def search_tlq(
    w: torch.Tensor,
    bits: int,
    *,
    etas: Sequence[float] = ETA_GRID,
    percentiles: Sequence[float] = PERCENTILE_GRID,
) -> tuple[TLQParams, float]:
    """Grid-search (eta, p_pos, p_neg) for the least weight MSE mean((W - Q(W))^2); ties go to the first in grid order.

    The sign parts' errors are separable and each is computed from per-level prefix sums over sorted rows, so a
    candidate costs O(out * L log in) after one sort; the returned MSE is recomputed from the winner's
    float32 decode, tlq_quantize(w, best).dequantize().
    """
    bits = check_bits(bits, "TLQ bits")
    eta_grid = _check_grid(etas, "etas", _check_eta)
    p_grid = _check_grid(percentiles, "percentiles", lambda v: _check_percentile(v, "percentile"))
    _check_weight(w)
    p = _parts(w)
    levels = 1 << (bits - 1)
    prefix = [_prefix_sums(p.pos_sorted, p.n_pos), _prefix_sums(p.neg_sorted, p.n_neg)]
    err = torch.empty(len(eta_grid), len(p_grid), 2, dtype=torch.float64)
    for i, eta in enumerate(eta_grid):
        lo_p, hi_p, lo_n, hi_n = _part_bounds(p, eta, p_grid, p_grid)
        err[i, :, 0] = _binned_error(p.pos_sorted, p.n_pos, *prefix[0], lo_p, hi_p, levels, eta)
        err[i, :, 1] = _binned_error(p.neg_sorted, p.n_neg, *prefix[1], lo_n, hi_n, levels, eta)
    grid = err[:, :, None, 0] + err[:, None, :, 1]  # (eta, p_pos, p_neg)
    flat = int(torch.argmin(grid.flatten()))
    i, rest = divmod(flat, len(p_grid) ** 2)
    j, k = divmod(rest, len(p_grid))
    best = TLQParams(eta=eta_grid[i], p_pos=p_grid[j], p_neg=p_grid[k], bits=bits)
    # Report the winner's error as tlq_fake_quantize realises it (the binned sums agree to rounding).
    diff = tlq_quantize(w, best).dequantize(torch.float64) - w.detach().double()
    return best, float(diff.square().mean())
