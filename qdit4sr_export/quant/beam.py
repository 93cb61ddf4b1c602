"""AdaTSQ's beam search over per-timestep bit configurations, scored end to end, with Pareto pruning.

Timesteps run first to last; at each one a path picks a candidate configuration c (an index into
``candidate_bits``, whose entry is c's average bit cost). ``error(prefix)`` scores a prefix end to end against the
FP trajectory (errors need not be additive); calls are cached per prefix and ``evaluations`` counts the distinct
calls. "Average bits" of a prefix is the mean of its candidates' bits.

Each step extends every kept path by every candidate and then prunes the extensions:
1. Budget: with ``budget`` set, a prefix is dropped when even its cheapest completion (every remaining timestep at
   min(candidate_bits)) has whole-path average bits above the budget (BUDGET_TOL relative slack for rounding).
2. Pareto: the survivors are ranked into non-dominated fronts on (error, average bits so far), both minimised; a
   path is dominated when another is <= in both and < in one. Dominated paths are dropped whenever the first front
   fills the beam; spare slots (front smaller than ``beam_width``) go to the next fronts in turn. So with
   ``beam_width`` >= len(candidate_bits) ** (steps - 1) the search is exhaustive even for non-additive errors, and
   for errors monotone in the prefix error (additive, compounding) a beam as wide as the prefix fronts is exact.
3. Within the front that overflows the beam, paths are kept by the scalarised score
   error + tradeoff * average bits so far (``tradeoff`` = 0: by error), ties to fewer bits, then the lower path.

The answer is the full path of least error (ties: fewer bits, then the lower path) among all evaluated full paths
meeting the budget; ``front`` is the Pareto front of those full paths, sorted by ascending average bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.checks import is_int, is_real

#: Relative slack on the average-bit budget (float rounding only).
BUDGET_TOL = 1e-9




@dataclass(frozen=True)
class BeamConfig:
    """Beam width, optional whole-path average-bit budget, and the bits weight of the scalarised score."""

    beam_width: int = 4
    budget: float | None = None
    tradeoff: float = 0.0

    def __post_init__(self) -> None:
        if not is_int(self.beam_width) or self.beam_width < 1:
            raise UserError(f"BeamConfig.beam_width must be an integer >= 1, got {self.beam_width!r}")
        if self.budget is not None and (not is_real(self.budget) or self.budget <= 0):
            raise UserError(f"BeamConfig.budget must be None or a finite number > 0, got {self.budget!r}")
        if not is_real(self.tradeoff) or self.tradeoff < 0:
            raise UserError(f"BeamConfig.tradeoff must be a finite number >= 0, got {self.tradeoff!r}")


@dataclass
class BeamResult:
    """Best full path (candidate indices), its error and average bits, the final Pareto front, error calls made."""

    best: tuple[int, ...]
    best_error: float
    best_avg_bits: float
    front: list[tuple[tuple[int, ...], float, float]]
    evaluations: int


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Ascending indices of the non-dominated points, minimising both coordinates (equal points all stay)."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("points must be (x, y) pairs of numbers") from None
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise UserError(f"points must be a sequence of (x, y) pairs, got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise UserError("points must not contain NaN")
    order = np.lexsort((arr[:, 1], arr[:, 0]))  # by x, then y
    keep: list[int] = []
    best_y: float | None = None  # least y among points of strictly smaller x (None: no such point)
    i = 0
    while i < len(order):
        j = i
        x = arr[order[i], 0]
        while j < len(order) and arr[order[j], 0] == x:
            j += 1
        group_min = arr[order[i], 1]  # sorted by y within equal x
        for k in order[i:j]:
            y = arr[k, 1]
            if y == group_min and (best_y is None or best_y > y):
                keep.append(int(k))
        best_y = group_min if best_y is None else min(best_y, group_min)
        i = j
    return sorted(keep)


def _fronts(points: list[tuple[float, float]]) -> list[list[int]]:
    """Non-dominated sorting: the indices of front 1, then of front 2 among the rest, and so on."""
    rest = list(range(len(points)))
    out = []
    while rest:
        front = [rest[i] for i in pareto_front([points[i] for i in rest])]
        out.append(front)
        chosen = set(front)
        rest = [i for i in rest if i not in chosen]
    return out


def beam_search(
    steps: int,
    candidate_bits: Sequence[float],
    error: Callable[[tuple[int, ...]], float],
    config: BeamConfig = BeamConfig(),
) -> BeamResult:
    """Per-timestep candidate choices minimising the end-to-end ``error`` under ``config.budget`` (average bits
    over the whole path) by Pareto-pruned beam search (see the module docstring for the exact rules)."""
    if not is_int(steps) or steps < 1:
        raise UserError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(config, BeamConfig):
        raise UserError(f"config must be a BeamConfig, got {type(config).__name__}")
    if not callable(error):
        raise UserError("error must be callable")
    bits = list(candidate_bits) if isinstance(candidate_bits, Sequence) and not isinstance(candidate_bits, str) \
        else None
    if not bits or not all(is_real(b) and b > 0 for b in bits):
        raise UserError(f"candidate_bits must be a nonempty sequence of finite numbers > 0, got {candidate_bits!r}")
    bits = [float(b) for b in bits]
    steps = int(steps)
    low = min(bits)
    limit = math.inf
    if config.budget is not None:
        limit = float(config.budget) * steps * (1 + BUDGET_TOL)  # on the sum of bits over the whole path
        if low * steps > limit:
            raise UserError(f"budget {config.budget} is below the cheapest candidate's {low} bits: no path meets it")

    cache: dict[tuple[int, ...], float] = {}

    def score(path: tuple[int, ...]) -> float:
        if path not in cache:
            value = error(path)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise UserError(f"error returned {value!r} for path {path}, not a number") from None
            if math.isnan(value):
                raise UserError(f"error returned NaN for path {path}")
            cache[path] = value
        return cache[path]

    beam: list[tuple[tuple[int, ...], float]] = [((), 0.0)]  # (path, sum of bits)
    final: list[tuple[tuple[int, ...], float, float]] = []
    for t in range(1, steps + 1):
        ext = [(path + (c,), used + b) for path, used in beam for c, b in enumerate(bits)
               if used + b + (steps - t) * low <= limit]
        rows = [(path, score(path), used / t) for path, used in ext]
        if t == steps:
            final = rows
            break
        kept: list[int] = []
        for front in _fronts([(err, avg) for _, err, avg in rows]):
            room = config.beam_width - len(kept)
            if room <= 0:
                break
            front.sort(key=lambda i: (rows[i][1] + config.tradeoff * rows[i][2], rows[i][2], rows[i][0]))
            kept.extend(front[:room])
        beam = [ext[i] for i in kept]

    front = [final[i] for i in pareto_front([(err, avg) for _, err, avg in final])]
    front.sort(key=lambda row: (row[2], row[1], row[0]))
    best = min(final, key=lambda row: (row[1], row[2], row[0]))
    return BeamResult(best=best[0], best_error=best[1], best_avg_bits=best[2], front=front,
                      evaluations=len(cache))
