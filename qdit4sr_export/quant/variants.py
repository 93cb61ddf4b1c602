"""Engine variants over the trajectory: one per distinct per-layer bit configuration, optionally capped.

Every timestep of a plan has a configuration: each layer's activation bits (and weight bits, for per-step
weight schedules). Steps with the same configuration share a variant. ``--max-variants K`` caps the count:
the trajectory is cut into at most K contiguous segments with boundaries shared by all layers, each layer
takes the floor of its mean bits over a segment (so no segment exceeds the plan's bit budget), and the cuts
are chosen by a DP minimising the summed VaTMP distortion ``sum_l sum_t v(l, t) kappa(b)``. The report
gives what the cap costs against the uncapped plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import kappa
from qdit4sr_export.quant.plan import QuantPlan


@dataclass(frozen=True)
class Variant:
    """One engine variant: the steps it serves and each layer's bits there (abits None = float)."""

    index: int
    steps: tuple[int, ...]
    abits: Mapping[str, int | None]
    wbits: Mapping[str, int]


@dataclass(frozen=True)
class VariantSchedule:
    """The variants, which variant serves each step, and the distortion with and without the cap."""

    variants: tuple[Variant, ...]
    step_variant: tuple[int, ...]
    distortion: float
    distortion_uncapped: float
    mean_abits: float | None
    mean_abits_uncapped: float | None

    def report(self) -> dict:
        """JSON-ready summary of what the cap costs."""
        ratio = self.distortion / self.distortion_uncapped if self.distortion_uncapped > 0 else 1.0
        return {"variants": len(self.variants), "distortion": self.distortion,
                "distortion_uncapped": self.distortion_uncapped, "distortion_ratio": ratio,
                "mean_abits": self.mean_abits, "mean_abits_uncapped": self.mean_abits_uncapped}


def _kappa(bits: int | None) -> float:
    return 0.0 if bits is None else kappa(bits)


def _step_config(plan: QuantPlan, names: list[str], step: int) -> tuple:
    return tuple((plan.layers[n].abits[step], plan.layers[n].weight_bits_at(step)) for n in names)


def _variances(plan: QuantPlan, names: list[str], steps: int) -> np.ndarray:
    """v(l, t) from the plan (VaTMP statistics), or ones when the plan has none; 0 at steps calibration never
    ran (before the plan's start sigma), whose error costs nothing."""
    v = np.ones((len(names), steps))
    for i, n in enumerate(names):
        av = plan.layers[n].act_variance
        if av is not None and len(av) == steps:
            v[i] = np.asarray([0.0 if x is None else x for x in av], dtype=np.float64)
    return v


def _mean_bits(configs: list[tuple], steps: list[int]) -> float | None:
    values = [a for s in steps for a, _ in configs[s] if a is not None]
    return float(np.mean(values)) if values else None


class _Prefix:
    """Prefix sums of each layer's bits over the steps, so any segment's mean is O(layers)."""

    def __init__(self, configs: list[tuple]) -> None:
        a = np.array([[0 if b is None else b for b, _ in c] for c in configs], dtype=np.int64).T
        none = np.array([[b is None for b, _ in c] for c in configs], dtype=np.int64).T
        w = np.array([[b for _, b in c] for c in configs], dtype=np.int64).T
        pad = lambda x: np.concatenate([np.zeros((x.shape[0], 1), np.int64), np.cumsum(x, axis=1)], axis=1)
        self.a, self.none, self.w = pad(a), pad(none), pad(w)

    def segment(self, start: int, stop: int) -> tuple:
        """Per layer: floor of the mean bits over [start, stop); float if any step is float."""
        n = stop - start
        a = (self.a[:, stop] - self.a[:, start]) // n
        w = (self.w[:, stop] - self.w[:, start]) // n
        floats = (self.none[:, stop] - self.none[:, start]) > 0
        return tuple((None if f else int(x), int(y)) for x, y, f in zip(a, w, floats))


def _distortion(configs: list[tuple], v: np.ndarray) -> float:
    return float(sum(v[l, t] * _kappa(configs[t][l][0]) for t in range(len(configs)) for l in range(v.shape[0])))


def _cut(configs: list[tuple], v: np.ndarray, max_variants: int) -> list[tuple]:
    """Per-step configs after the best cut into at most ``max_variants`` contiguous segments."""
    steps = len(configs)
    seg_cost = np.full((steps + 1, steps + 1), np.inf)
    seg_cfg: dict[tuple[int, int], tuple] = {}
    prefix = _Prefix(configs)
    for i in range(steps):
        for j in range(i + 1, steps + 1):
            cfg = prefix.segment(i, j)
            seg_cfg[i, j] = cfg
            k = np.array([_kappa(a) for a, _ in cfg])
            seg_cost[i, j] = float((v[:, i:j].sum(axis=1) * k).sum())
    best = np.full((max_variants + 1, steps + 1), np.inf)
    back = np.zeros((max_variants + 1, steps + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, max_variants + 1):
        for j in range(1, steps + 1):
            cands = best[k - 1, :j] + seg_cost[:j, j]
            i = int(np.argmin(cands))
            best[k, j], back[k, j] = cands[i], i
    top = best[1:, steps]
    k = 1 + int(np.flatnonzero(top <= top.min() * (1 + 1e-12) + 1e-300)[0])  # fewest segments among the best
    out: list[tuple] = [()] * steps
    j = steps
    while k > 0:
        i = int(back[k, j])
        for t in range(i, j):
            out[t] = seg_cfg[i, j]
        j, k = i, k - 1
    return out


def plan_variants(plan: QuantPlan, max_variants: int | None = None) -> VariantSchedule:
    """Group the plan's timesteps into engine variants (at most ``max_variants`` when given)."""
    if max_variants is not None and (not isinstance(max_variants, int) or max_variants < 1):
        raise UserError(f"--max-variants must be a positive integer, got {max_variants!r}")
    names = sorted(plan.layers)
    steps = len(plan.timesteps)
    if steps == 0:
        raise UserError("plan has an empty timestep grid")
    configs = [_step_config(plan, names, t) for t in range(steps)]
    v = _variances(plan, names, steps)
    uncapped = _distortion(configs, v)
    mean_uncapped = _mean_bits(configs, list(range(steps)))
    if max_variants is not None and len(set(configs)) > max_variants:
        configs = _cut(configs, v, max_variants)
    order: dict[tuple, int] = {}
    for cfg in configs:
        order.setdefault(cfg, len(order))
    variants = []
    for cfg, index in order.items():
        variants.append(Variant(index, tuple(t for t in range(steps) if configs[t] == cfg),
                                {n: a for n, (a, _) in zip(names, cfg)}, {n: w for n, (_, w) in zip(names, cfg)}))
    return VariantSchedule(tuple(variants), tuple(order[c] for c in configs), _distortion(configs, v), uncapped,
                           _mean_bits(configs, list(range(steps))), mean_uncapped)
