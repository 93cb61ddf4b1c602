"""Channel smoothing baselines: SVDQuant's alpha-searched smoothing and PTQ4DiT's salience balancing.

Both rescale input channel j of a linear layer: x' = x / s, W' = W * s (W is (out, in), s is (in,)), so
x' W'^T == x W^T exactly in real arithmetic. SVDQuant: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), alpha
picked from ALPHA_GRID by minimising the quantized layer's output error on calibration activations.
PTQ4DiT: B_j = sqrt(s(X_j) / s(W_j)), s(X_j) a timestep average weighted by softmax(-Spearman rho).

Numerics: work runs in float64 when an input is float64, else float32 (half / bfloat16 are upcast);
returned scales are in that dtype on the input's device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import check_bits, fake_quantize_tokens

__all__ = [
    "ALPHA_GRID",
    "SmoothingSearchResult",
    "channel_absmax",
    "group_fake_quantize",
    "salience_balance",
    "search_smoothing",
    "smooth",
    "smoothing_error",
    "smoothing_scales",
    "spearman",
    "weight_absmax",
]

# 20 evenly spaced alphas 0.05, 0.10, ..., 1.00 (SVDQuant searches ~20 points in [0, 1]). alpha = 0 is not
# "no smoothing" (s = 1 / max|W_j| flattens the weight columns) and is left out; pass `alphas=` to add it.
ALPHA_GRID: tuple[float, ...] = tuple(i / 20 for i in range(1, 21))


Quantizer = Callable[[Tensor], Tensor]


def _check_float(x: Tensor, name: str, ndim: int | None = None, min_ndim: int = 1) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if (ndim is not None and x.ndim != ndim) or x.ndim < min_ndim:
        want = f"{ndim}-D" if ndim is not None else f"at least {min_ndim}-D"
        raise UserError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise UserError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def _work_dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise UserError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 < float(eps) < 1.0:
        raise UserError(f"eps must be a number in (0, 1), got {eps!r}")
    return float(eps)


def _check_salience(t: Tensor, name: str, ndim: int) -> None:
    _check_float(t, name, ndim=ndim)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise UserError(f"{name} must be finite and non-negative")


# ---------------------------------------------------------------------------------------------
# Statistics and scales
# ---------------------------------------------------------------------------------------------


def channel_absmax(x: Tensor) -> Tensor:
    """max |x| per channel (last dim) over all other dims: activations (..., C) -> (C,)."""
    _check_float(x, "activation")
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)


def weight_absmax(w: Tensor) -> Tensor:
    """max |W[:, j]| per input channel over the output rows: (out, in) -> (in,)."""
    _check_float(w, "weight", ndim=2)
    return w.detach().abs().amax(dim=0)


def smoothing_scales(act_max: Tensor, w_max: Tensor, alpha: float, eps: float = 1e-8) -> Tensor:
    """s = max|X|^alpha / max|W|^(1 - alpha); both maxima floored at eps, s clamped to [eps, 1/eps]."""
    alpha, eps = _check_alpha(alpha), _check_eps(eps)
    _check_salience(act_max, "act_max", 1)
    _check_salience(w_max, "w_max", 1)
    if act_max.shape != w_max.shape:
        raise UserError(f"act_max shape {tuple(act_max.shape)} does not match w_max shape {tuple(w_max.shape)}")
    dt = _work_dtype(act_max, w_max)
    a = act_max.to(dt).clamp_min(eps)
    w = w_max.to(device=act_max.device, dtype=dt).clamp_min(eps)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(eps, 1.0 / eps)


def smooth(x: Tensor, w: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """(x / s, W * s) with s broadcast over the last (input-channel) dim; x' W'^T equals x W^T."""
    _check_float(x, "activation")
    _check_float(w, "weight", ndim=2)
    _check_float(scales, "scales", ndim=1)
    if not (x.shape[-1] == w.shape[1] == scales.shape[0]):
        raise UserError(
            f"channel counts differ: activation {x.shape[-1]}, weight {w.shape[1]}, scales {scales.shape[0]}"
        )
    return x / scales, w * scales


# ---------------------------------------------------------------------------------------------
# Group-wise symmetric min-max fake quantizer
# ---------------------------------------------------------------------------------------------


def _check_group(c: int, group_size: int | None) -> int:
    if group_size is None:
        return c
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
        raise UserError(f"group_size must be a positive integer or None, got {group_size!r}")
    if c % int(group_size):
        raise UserError(f"group_size {int(group_size)} does not divide the channel count {c}")
    return int(group_size)


def group_fake_quantize(x: Tensor, bits: int, group_size: int | None) -> Tensor:
    """Symmetric min-max fake quantization per row and per group of `group_size` last-dim channels (None: row):
    the same quantizer the simulation uses (``gaussian.fake_quantize_tokens`` with clip "minmax")."""
    bits = check_bits(bits)
    _check_float(x, "tensor")
    g = _check_group(x.shape[-1], group_size)
    return fake_quantize_tokens(x, bits, clip="minmax", group_size=g)


# ---------------------------------------------------------------------------------------------
# SVDQuant: alpha grid search
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothingSearchResult:
    """Best alpha, its scales (apply as x / s, W * s), its output error, and the error at every grid point."""

    alpha: float
    scales: Tensor
    error: float
    errors: tuple[float, ...]


def _check_low_rank(low_rank: int, out: int, c: int) -> int:
    if isinstance(low_rank, bool) or not isinstance(low_rank, numbers.Integral) or not 0 <= low_rank <= min(out, c):
        raise UserError(f"low_rank must be an integer in [0, {min(out, c)}] for weight ({out}, {c}), got {low_rank!r}")
    return int(low_rank)


def _prepare(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    _check_float(x, "activation", min_ndim=2)
    _check_float(w, "weight", ndim=2)
    if x.shape[-1] != w.shape[1]:
        raise UserError(f"activation channels {x.shape[-1]} do not match weight input channels {w.shape[1]}")
    if x.device != w.device:
        raise UserError(f"activation on {x.device} but weight on {w.device}")
    dt = _work_dtype(x, w)
    return x.detach().reshape(-1, x.shape[-1]).to(dt), w.detach().to(dt)


def _layer_error(
    x: Tensor, w: Tensor, ref: Tensor, scales: Tensor, low_rank: int, qa: Quantizer, qw: Quantizer
) -> float:
    """|| x W^T - [Q_a(x/s) Q_w(R)^T + (x/s) L^T] ||_F with L the rank-r SVD part of W*s, R = W*s - L."""
    xs, ws = x / scales, w * scales
    if low_rank == 0:
        y = qa(xs) @ qw(ws).T
    else:
        u, sv, vh = torch.linalg.svd(ws, full_matrices=False)
        u, sv, vh = u[:, :low_rank], sv[:low_rank], vh[:low_rank]
        residual = ws - (u * sv) @ vh
        y = qa(xs) @ qw(residual).T + ((xs @ vh.T) * sv) @ u.T  # the low-rank branch runs in FP on x/s
    return float(torch.linalg.vector_norm(ref - y).item())


def _quantizers(
    bits_w: int, bits_a: int, group_size: int | None, c: int, act_quantizer: Quantizer | None,
    weight_quantizer: Quantizer | None,
) -> tuple[Quantizer, Quantizer]:
    g = _check_group(c, group_size) if act_quantizer is None or weight_quantizer is None else None
    if act_quantizer is None:
        bits_a = check_bits(bits_a, "bits_a")
        act_quantizer = lambda t: group_fake_quantize(t, bits_a, g)  # noqa: E731
    if weight_quantizer is None:
        bits_w = check_bits(bits_w, "bits_w")
        weight_quantizer = lambda t: group_fake_quantize(t, bits_w, g)  # noqa: E731
    return act_quantizer, weight_quantizer


def smoothing_error(
    x: Tensor, w: Tensor, scales: Tensor, *, bits_w: int = 4, bits_a: int = 4, group_size: int | None = 64,
    low_rank: int = 0, act_quantizer: Quantizer | None = None, weight_quantizer: Quantizer | None = None,
) -> float:
    """The objective search_smoothing minimises, for given scales (all ones = no smoothing)."""
    xf, wf = _prepare(x, w)
    _check_salience(scales, "scales", 1)
    if scales.shape[0] != wf.shape[1] or bool((scales == 0).any()):
        raise UserError(f"scales must be {wf.shape[1]} positive values, got shape {tuple(scales.shape)}")
    qa, qw = _quantizers(bits_w, bits_a, group_size, wf.shape[1], act_quantizer, weight_quantizer)
    r = _check_low_rank(low_rank, *wf.shape)
    return _layer_error(xf, wf, xf @ wf.T, scales.to(device=wf.device, dtype=wf.dtype), r, qa, qw)


def search_smoothing(
    x: Tensor, w: Tensor, *, bits_w: int = 4, bits_a: int = 4, group_size: int | None = 64, low_rank: int = 0,
    alphas: Sequence[float] = ALPHA_GRID, act_quantizer: Quantizer | None = None,
    weight_quantizer: Quantizer | None = None,
) -> SmoothingSearchResult:
    """SVDQuant smoothing: the alpha in `alphas` minimising the quantized output error on x (ties: the first).

    Default quantizers: dynamic per-token and per-row group-wise symmetric min-max INT`bits` (group_size
    channels); `act_quantizer` / `weight_quantizer` (tensor -> fake-quantized tensor) replace them.
    """
    xf, wf = _prepare(x, w)
    alphas = tuple(_check_alpha(a) for a in alphas)
    if not alphas:
        raise UserError("alphas must be non-empty")
    qa, qw = _quantizers(bits_w, bits_a, group_size, wf.shape[1], act_quantizer, weight_quantizer)
    r = _check_low_rank(low_rank, *wf.shape)
    act_max, w_max, ref = xf.abs().amax(dim=0), wf.abs().amax(dim=0), xf @ wf.T
    best: tuple[float, float, Tensor] | None = None
    errors = []
    for a in alphas:
        s = smoothing_scales(act_max, w_max, a)
        err = _layer_error(xf, wf, ref, s, r, qa, qw)
        if not math.isfinite(err):
            raise UserError(f"smoothing error is not finite at alpha {a} (non-finite activations or weights?)")
        errors.append(err)
        if best is None or err < best[1]:
            best = (a, err, s)
    return SmoothingSearchResult(alpha=best[0], scales=best[2], error=best[1], errors=tuple(errors))


# ---------------------------------------------------------------------------------------------
# PTQ4DiT: Spearman-guided channel-wise salience balancing
# ---------------------------------------------------------------------------------------------


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D float64 tensor, tied values sharing their average rank."""
    order = torch.argsort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(v[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # 1-based rank of each tie group's last member
    group_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = torch.empty_like(v)
    ranks[order] = group_rank[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rho of two equal-length 1-D tensors (average ranks for ties); 0.0 if either is constant."""
    _check_float(a, "a", ndim=1)
    _check_float(b, "b", ndim=1)
    if a.shape != b.shape or a.shape[0] < 2:
        raise UserError(f"spearman needs two 1-D tensors of equal length >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise UserError("spearman inputs must be finite")
    ra = _average_ranks(a.detach().double().cpu())
    rb = _average_ranks(b.detach().double().cpu())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return 0.0 if den == 0.0 else max(-1.0, min(1.0, float((ra * rb).sum()) / den))


def salience_balance(act_max_per_step: Tensor, w_max: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """PTQ4DiT balancing: (B (C,), timestep weights (T,)) with weights = softmax(-rho_k) and
    B = sqrt(sum_k weight_k s_k(X) / s(W)) (saliences floored at eps); apply as x / B, W * B."""
    eps = _check_eps(eps)
    _check_salience(act_max_per_step, "act_max_per_step", 2)
    _check_salience(w_max, "w_max", 1)
    if act_max_per_step.shape[1] != w_max.shape[0]:
        raise UserError(
            f"act_max_per_step has {act_max_per_step.shape[1]} channels but w_max has {w_max.shape[0]}"
        )
    dt = _work_dtype(act_max_per_step, w_max)
    rho = torch.tensor([spearman(step, w_max) for step in act_max_per_step], dtype=torch.float64)
    weights = torch.softmax(-rho, dim=0).to(device=act_max_per_step.device, dtype=dt)
    s_x = (weights[:, None] * act_max_per_step.to(dt)).sum(dim=0)
    s_w = w_max.to(device=act_max_per_step.device, dtype=dt)
    b = (s_x.clamp_min(eps) / s_w.clamp_min(eps)).sqrt()
    return b, weights
