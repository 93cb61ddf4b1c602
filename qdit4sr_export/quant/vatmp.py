"""VaTMP (Sec. 3.4.2): per-layer, per-timestep activation bit-widths by dynamic programming (Eq. 21-23).

For one layer with timestep variances v_t, pick b_t from a bit set to minimise sum_t kappa(b_t) v_t subject to
sum_t b_t <= floor(budget * T), over schedules made of at most ``max_segments`` constant runs of timesteps.

The DP walks the timesteps once with state (segments used, current bits, extra bits used). "Extra bits" counts
bits above min(bits) per timestep, so its axis has floor(budget*T) - min(bits)*T + 1 entries rather than
floor(budget*T) + 1. A step either extends the current run (same bits) or opens a new run with other bits; the
best predecessor over "other bits" comes from a top-2 over the bit axis, so one step costs O(segments * bits *
budget) per layer, vectorised over layers. The unlimited-segment DP runs first (it needs no segment axis); only
layers whose optimum has more than ``max_segments`` runs are solved again with the segment axis. Ties (costs
within RTOL) go to fewer bits, then fewer segments, then lower bits.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.budget import budget_total, check_budget

DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
#: Costs within this relative distance are ties (float sums of the same terms in another order differ by ulps).
RTOL = 1e-9
#: Rough cap on the DP's back-pointer memory; larger inputs are solved in chunks of layers.
CHUNK_BYTES = 64 * 2**20


def _check_variances(variances: object, ndim: int) -> np.ndarray:
    """Variances as a float64 array of ``ndim`` dims, nonempty, finite and >= 0; otherwise a UserError."""
    try:
        v = np.asarray(variances, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("variances must be numbers") from None
    if v.ndim != ndim:
        raise UserError(f"variances must be {'a 1-D sequence' if ndim == 1 else 'a 2-D (layers, timesteps) array'}, "
                        f"got shape {v.shape}")
    if v.shape[-1] == 0 or (ndim == 1 and v.size == 0):
        raise UserError(f"variances is empty (shape {v.shape}): need at least one timestep")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise UserError("variances must be finite and >= 0")
    return v


def _check_bits(bits: Sequence[int], kappa: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """The bit set sorted ascending with its kappa values; UserError if empty, repeated or missing from kappa."""
    values = list(bits)
    if not values:
        raise UserError("bits is empty: need at least one bit-width")
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise UserError(f"bits must be positive integers, got {b!r}")
    if len(values) > 64:
        raise UserError(f"bits has {len(values)} entries; at most 64 bit-widths are supported")
    if len(set(int(b) for b in values)) != len(values):
        raise UserError(f"bits has repeated entries: {values}")
    ordered = sorted(int(b) for b in values)
    missing = [b for b in ordered if b not in kappa]
    if missing:
        raise UserError(f"bits {missing} are not in the kappa table (has {sorted(kappa)})")
    k = np.array([float(kappa[b]) for b in ordered])
    if not np.all(np.isfinite(k)) or np.any(k < 0):
        raise UserError(f"kappa values must be finite and >= 0, got {k.tolist()}")
    return np.array(ordered, dtype=np.int64), k


def _extra_budget(budget: float, steps: int, bits: np.ndarray) -> int:
    """Bits above min(bits)*T that Eq. 21 allows, capped at what max(bits) could use; UserError if negative."""
    value = check_budget(budget)
    total = budget_total(value, steps)
    extra = total - int(bits[0]) * steps
    if extra < 0:
        raise UserError(f"budget {value} allows {total} bits over {steps} timesteps, below the minimum "
                        f"{int(bits[0])} bits per timestep ({int(bits[0]) * steps})")
    return min(extra, int(bits[-1] - bits[0]) * steps)


def _check_max_segments(max_segments: int | None) -> int | None:
    """None (unlimited) or a positive integer; UserError otherwise."""
    if max_segments is None:
        return None
    if isinstance(max_segments, bool) or not isinstance(max_segments, (int, np.integer)) or max_segments < 1:
        raise UserError(f"max_segments must be None or an integer >= 1, got {max_segments!r}")
    return int(max_segments)


def _pick(cost: np.ndarray, runs: np.ndarray | None, exclude: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Best entry over the leading bit axis of ``cost`` (nb, ...), skipping index ``exclude``: least cost; when runs
    are tracked, costs within RTOL tie and go to fewer runs; then the lower bit index. Returns cost, index, runs."""
    nb = cost.shape[0]
    slab = [cost[j] if exclude is None else np.where(exclude == j, np.inf, cost[j]) for j in range(nb)]
    least = np.minimum.reduce(slab)
    limit = least if runs is None else least * (1 + RTOL)
    idx = np.zeros(least.shape, dtype=np.int8)
    best_runs = np.full(least.shape, np.iinfo(np.int32).max, dtype=np.int32) if runs is not None else None
    chosen = np.zeros(least.shape, dtype=bool)
    for j in range(nb):
        if runs is None:
            take = ~chosen & (slab[j] <= limit)
            chosen |= take
        else:
            take = (slab[j] <= limit) & (runs[j] < best_runs)
            best_runs = np.where(take, runs[j], best_runs)
        idx[take] = j
    out_cost = np.take_along_axis(cost, idx[None].astype(np.intp), axis=0)[0]
    return out_cost, idx, best_runs


def _dp(v: np.ndarray, bits: np.ndarray, kap: np.ndarray, extra: int, max_segments: int | None) -> np.ndarray:
    """The DP for all rows of ``v`` (L, T) at once; returns the (L, T) bit schedule.

    State arrays are (bits, layers, segment slots, extra bits). Unbounded: one slot, runs kept as a tie-break."""
    n_layers, steps = v.shape
    nb = bits.size
    d = (bits - bits[0]).tolist()  # extra bits each choice uses
    bounded = max_segments is not None
    slots = min(max_segments, steps) if bounded else 1
    width = extra + 1
    cost = np.full((nb, n_layers, slots, width), np.inf)
    runs = None if bounded else np.ones((nb, n_layers, 1, width), dtype=np.int32)
    for j in range(nb):
        if d[j] < width:
            cost[j, :, 0, d[j]] = kap[j] * v[:, 0]
    back = np.zeros((steps, nb, n_layers, slots, width), dtype=np.int8)  # previous step's bit index
    no_slot = np.full((n_layers, 1, width), np.inf)

    for t in range(1, steps):
        c1, i1, r1 = _pick(cost, runs, None)
        c2, i2, r2 = _pick(cost, runs, i1)
        if bounded:  # a new run in slot s comes from slot s - 1; slot 0 has no predecessor run
            c1, c2 = np.concatenate([no_slot, c1[:, :-1]], 1), np.concatenate([no_slot, c2[:, :-1]], 1)
            i1, i2 = np.concatenate([i1[:, :1], i1[:, :-1]], 1), np.concatenate([i2[:, :1], i2[:, :-1]], 1)
        new_cost = np.full(cost.shape, np.inf)
        new_runs = None if bounded else np.ones_like(runs)
        step_cost = v[:, t, None, None]
        for j in range(nb):
            if d[j] >= width:
                continue
            hi = width - d[j]  # source extra bits [0, hi) land on [d_j, width)
            first = i1[:, :, :hi] != j
            sw_cost = np.where(first, c1[:, :, :hi], c2[:, :, :hi])
            keep_cost = cost[j, :, :, :hi]
            if bounded:
                use_keep = keep_cost <= sw_cost
            else:
                sw_runs = np.where(first, r1[:, :, :hi], r2[:, :, :hi]) + 1
                keep_runs = runs[j, :, :, :hi]
                tie = (keep_cost <= sw_cost * (1 + RTOL)) & (sw_cost <= keep_cost * (1 + RTOL))
                use_keep = np.where(tie, keep_runs <= sw_runs, keep_cost < sw_cost)
                new_runs[j, :, :, d[j]:] = np.where(use_keep, keep_runs, sw_runs)
            new_cost[j, :, :, d[j]:] = np.where(use_keep, keep_cost, sw_cost) + kap[j] * step_cost
            back[t, j, :, :, d[j]:] = np.where(use_keep, j, np.where(first, i1[:, :, :hi], i2[:, :, :hi]))
        cost, runs = new_cost, new_runs

    # Final state per layer: least cost (within RTOL), then fewest extra bits, then fewest runs, then lowest bits.
    flat = cost.transpose(1, 2, 0, 3).reshape(n_layers, -1)  # per layer in (slot, bit, extra) order
    s_ax, j_ax, e_ax = (a.reshape(-1) for a in np.indices((slots, nb, width)))
    run_key = s_ax + 1 if bounded else runs.transpose(1, 2, 0, 3).reshape(n_layers, -1)
    not_best = ~(flat <= flat.min(axis=1, keepdims=True) * (1 + RTOL))
    key = ((not_best * (width + 1) + e_ax) * (steps + 1) + run_key) * nb + j_ax
    s, j, e = np.unravel_index(np.argmin(key, axis=1), (slots, nb, width))
    rows = np.arange(n_layers)
    d_arr = np.asarray(d)
    out = np.empty((n_layers, steps), dtype=np.int64)
    for t in range(steps - 1, 0, -1):
        out[:, t] = bits[j]
        prev = back[t, j, rows, s, e].astype(np.int64)
        e = e - d_arr[j]
        if bounded:
            s = s - (prev != j)
        j = prev
    out[:, 0] = bits[j]
    return out


def _solve(v: np.ndarray, bits: np.ndarray, kap: np.ndarray, extra: int, max_segments: int | None) -> np.ndarray:
    """Schedules for all rows: the unbounded DP first; rows whose optimum has more than ``max_segments`` runs are
    re-solved with the segment-limited DP (an unbounded optimum within the limit is also the limited optimum).
    Rows go in chunks so the int8 back-pointer array stays near CHUNK_BYTES."""
    def chunked(rows: np.ndarray, k: int | None) -> np.ndarray:
        per_row = v.shape[1] * bits.size * (extra + 1) * (1 if k is None else min(k, v.shape[1]))
        step = max(1, CHUNK_BYTES // per_row)
        return np.concatenate([_dp(rows[i:i + step], bits, kap, extra, k) for i in range(0, len(rows), step)])

    peak = v.max(axis=1, keepdims=True)
    v = v / np.where(peak > 0, peak, 1.0)  # per-row scale changes no argmin and keeps sums far from overflow
    out = chunked(v, None)
    if max_segments is not None:
        over = 1 + np.count_nonzero(out[:, 1:] != out[:, :-1], axis=1) > max_segments
        if np.any(over):
            out[over] = chunked(v[over], max_segments)
    return out


def schedule_activation_bits(
    variances: Sequence[float],
    *,
    budget: float,
    kappa: Mapping[int, float],
    bits: Sequence[int] = DEFAULT_BITS,
    max_segments: int | None = None,
) -> list[int]:
    """Per-timestep activation bits for one layer minimising sum kappa(b_t) v_t (Eq. 22) under the Eq. 21 budget,
    as at most ``max_segments`` constant runs (None: any schedule); exact DP, ties to fewer bits then segments."""
    v = _check_variances(variances, 1)
    bit_arr, kap = _check_bits(bits, kappa)
    extra = _extra_budget(budget, v.size, bit_arr)
    return _solve(v[None, :], bit_arr, kap, extra, _check_max_segments(max_segments))[0].tolist()


def schedule_layers(
    variances: np.ndarray,
    *,
    budget: float,
    kappa: Mapping[int, float],
    bits: Sequence[int] = DEFAULT_BITS,
    max_segments: int | None = None,
) -> np.ndarray:
    """``schedule_activation_bits`` for every row of an (L, T) variance array at once, vectorised over layers,
    so a whole model's schedules take one DP pass; returns an (L, T) int array (L = 0 gives an empty one)."""
    v = _check_variances(variances, 2)
    bit_arr, kap = _check_bits(bits, kappa)
    extra = _extra_budget(budget, v.shape[1], bit_arr)
    limit = _check_max_segments(max_segments)
    if v.shape[0] == 0:
        return np.zeros(v.shape, dtype=np.int64)
    return _solve(v, bit_arr, kap, extra, limit)


def schedule_cost(variances: Sequence[float], schedule: Sequence[int], kappa: Mapping[int, float]) -> float:
    """Modelled activation distortion sum_t kappa(b_t) v_t of a schedule (Eq. 20 summed over timesteps)."""
    v = _check_variances(variances, 1)
    sched = list(np.asarray(schedule).reshape(-1).tolist())
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b == int(b)
               for b in sched):
        raise UserError("schedule must hold integer bit-widths")
    if len(sched) != v.size:
        raise UserError(f"schedule has {len(sched)} entries but there are {v.size} variances")
    missing = sorted({int(b) for b in sched if int(b) not in kappa})
    if missing:
        raise UserError(f"schedule bits {missing} are not in the kappa table (has {sorted(kappa)})")
    return float(sum(float(kappa[int(b)]) * x for b, x in zip(sched, v.tolist())))


def segments(schedule: Sequence[int]) -> list[tuple[int, int, int]]:
    """The maximal constant runs of a schedule as (start, end_exclusive, bits), for reports and plan files."""
    out: list[tuple[int, int, int]] = []
    for t, b in enumerate(int(x) for x in schedule):
        if out and out[-1][2] == b:
            out[-1] = (out[-1][0], t + 1, b)
        else:
            out.append((t, t + 1, b))
    return out
