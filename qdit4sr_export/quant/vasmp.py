"""VaSMP (Sec. 3.3.2): data-free per-layer weight bit-widths from layer variances and parameter counts.

The continuous optimum (Eq. 15-16) seeds a greedy integer allocation whose gains come from the Gaussian
distortion table ``kappa`` (bits -> normalised MSE), not from the high-rate model 2^(-2b): kappa(b) * 4^b is
not constant, so the table is the better estimate of what one more bit buys.
"""

from __future__ import annotations

import heapq
import math
from typing import Mapping, Sequence

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.budget import budget_total, check_budget


def _float_array(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a flat float64 array, or a UserError naming ``name``."""
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a sequence of numbers") from None


def _check_layers(
    variances: Sequence[float], sizes: Sequence[int], name: str = "variances", nonnegative: bool = True
) -> tuple[np.ndarray, list[int]]:
    """Validate per-layer variances (or bits: ``name``) and parameter counts; return a float array and ints."""
    var = _float_array(variances, name)
    raw = list(np.asarray(sizes).reshape(-1).tolist())
    if var.size == 0:
        raise UserError(f"{name} is empty: need at least one layer")
    if var.size != len(raw):
        raise UserError(f"{name} and sizes differ in length ({var.size} vs {len(raw)})")
    bad_values = ~np.isfinite(var) | ((var < 0) if nonnegative else False)
    if np.any(bad_values):
        bad = int(np.flatnonzero(bad_values)[0])
        want = "finite and >= 0" if nonnegative else "finite"
        raise UserError(f"{name} must be {want} (layer {bad} has {float(var[bad])})")
    sizes_int: list[int] = []
    for i, n in enumerate(raw):
        ok = not isinstance(n, bool) and isinstance(n, (int, float)) and math.isfinite(n) and n == int(n) and n > 0
        if not ok:
            raise UserError(f"sizes must be positive integers (layer {i} has {n!r})")
        sizes_int.append(int(n))
    return var, sizes_int


def continuous_bits(variances: Sequence[float], sizes: Sequence[int], budget: float, eps: float = 1e-12) -> np.ndarray:
    """Real-valued optimum of Eq. 14 (Eq. 15-16, w_l = N_l): budget plus half the log2 variance above the
    parameter-weighted geometric mean, so the weighted average of the result is exactly ``budget``."""
    var, n = _check_layers(variances, sizes)
    budget = check_budget(budget)
    if not (eps > 0 and math.isfinite(eps)):
        raise UserError(f"eps must be a positive number, got {eps!r}")
    w = np.asarray(n, dtype=np.float64)
    log_var = np.log2(np.maximum(var, eps))
    log_sigma_bar = float(np.sum(w * log_var) / np.sum(w))
    return budget + 0.5 * (log_var - log_sigma_bar)


def weighted_average_bits(bits: Sequence[int], sizes: Sequence[int]) -> float:
    """Parameter-weighted average bit-width sum(N_l b_l) / sum(N_l): the quantity the VaSMP budget constrains."""
    b, n = _check_layers(bits, sizes, "bits", nonnegative=False)
    w = np.asarray(n, dtype=np.float64)
    return float(np.dot(b, w) / w.sum())


def _bit_range(budget: float, kappa: Mapping[int, float], b_min: int | None, b_max: int | None) -> tuple[int, int]:
    """Resolve and validate [b_min, b_max]: defaults floor(budget)-1 .. ceil(budget)+1 clipped to the table."""
    if not kappa:
        raise UserError("kappa table is empty")
    table = sorted(int(b) for b in kappa)
    lo_t, hi_t = table[0], table[-1]
    lo = max(math.floor(budget) - 1, lo_t) if b_min is None else b_min
    hi = min(math.ceil(budget) + 1, hi_t) if b_max is None else b_max
    for name, b in (("b_min", lo), ("b_max", hi)):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise UserError(f"{name} must be an integer, got {b!r}")
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise UserError(f"b_min ({lo}) is greater than b_max ({hi})")
    missing = [b for b in range(lo, hi + 1) if b not in kappa]
    if missing:
        raise UserError(f"bits {missing} in [b_min, b_max] = [{lo}, {hi}] are not in the kappa table ({lo_t}..{hi_t})")
    values = [float(kappa[b]) for b in range(lo, hi + 1)]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise UserError(f"kappa values must be finite and >= 0, got {values}")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise UserError(f"kappa must decrease strictly with bits over [{lo}, {hi}], got {values}")
    if not lo <= budget <= hi:
        raise UserError(f"budget {budget} is outside [b_min, b_max] = [{lo}, {hi}]")
    return lo, hi


def allocate_weight_bits(
    variances: Sequence[float],
    sizes: Sequence[int],
    *,
    budget: float,
    kappa: Mapping[int, float],
    b_min: int | None = None,
    b_max: int | None = None,
) -> list[int]:
    """Integer bits per layer (Sec. 3.3.2 greedy discretisation): start from clip(floor(b*)), trim over-budget
    layers where a bit costs least distortion, then hand out bits by largest gain while they fit the budget."""
    var, n = _check_layers(variances, sizes)
    budget = check_budget(budget)
    lo, hi = _bit_range(budget, kappa, b_min, b_max)
    k = {b: float(kappa[b]) for b in range(lo, hi + 1)}
    total_budget = budget_total(budget, sum(n))
    start = np.clip(np.floor(continuous_bits(var, n, budget)), lo, hi).astype(int)
    bits = [int(b) for b in start]
    v = var.tolist()
    used = sum(b * m for b, m in zip(bits, n))

    # Over budget (clipping up to b_min can cause this): remove bits where the distortion per freed bit is least.
    # Ties go to the lower-variance layer, then the lower index, so same-size layers stay ordered by variance.
    heap = [(v[i] * (k[bits[i] - 1] - k[bits[i]]), v[i], i) for i in range(len(bits)) if bits[i] > lo]
    heapq.heapify(heap)
    while used > total_budget and heap:
        _, _, i = heapq.heappop(heap)
        bits[i] -= 1
        used -= n[i]
        if bits[i] > lo:
            heapq.heappush(heap, (v[i] * (k[bits[i] - 1] - k[bits[i]]), v[i], i))

    # Under budget: add bits by largest gain per parameter among layers that still fit. The remaining budget only
    # shrinks, so a layer that does not fit now never will and is dropped from the heap.
    heap = [(-v[i] * (k[bits[i]] - k[bits[i] + 1]), -v[i], i) for i in range(len(bits)) if bits[i] < hi]
    heapq.heapify(heap)
    while heap:
        _, _, i = heapq.heappop(heap)
        if used + n[i] > total_budget:
            continue
        bits[i] += 1
        used += n[i]
        if bits[i] < hi:
            heapq.heappush(heap, (-v[i] * (k[bits[i]] - k[bits[i] + 1]), -v[i], i))
    return bits
