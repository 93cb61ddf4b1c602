import itertools
import math

import numpy as np
import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.beam import BeamConfig, BeamResult, beam_search, pareto_front

BITS = (4.0, 6.0, 8.0)  # "low", "mid", "high" layer configurations
KAPPA = (1.0, 0.25, 0.0625)  # distortion per candidate, ~4^-(b/2) as for a uniform quantizer
T = 5


def dominates(a, b):
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def brute_front(points):
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, prefix):
        assert isinstance(prefix, tuple)
        self.calls.append(prefix)
        return self.fn(prefix)


def additive(rng):
    w = rng.uniform(0.1, 2.0, size=T)
    return lambda p: float(sum(w[t] * KAPPA[c] for t, c in enumerate(p)))


def compounding(rng):
    """Non-additive: error carried forward grows by a choice-dependent factor (monotone in the carried error)."""
    w, grow = rng.uniform(0.1, 2.0, size=T), rng.uniform(0.0, 0.5, size=T)

    def err(p):
        e = 0.0
        for t, c in enumerate(p):
            e = e * (1.0 + grow[t] * KAPPA[c]) + w[t] * KAPPA[c]
        return e
    return err


def interacting(rng):
    """Non-additive with an interaction between consecutive timesteps (not monotone in the prefix error)."""
    w, gamma = rng.uniform(0.1, 2.0, size=T), rng.uniform(0.5, 3.0)
    return lambda p: float(sum(w[t] * KAPPA[c] for t, c in enumerate(p))
                           + gamma * sum(w[t] * KAPPA[p[t]] * KAPPA[p[t - 1]] for t in range(1, len(p))))


def all_paths(err):
    return [(p, err(p), float(np.mean([BITS[c] for c in p]))) for p in itertools.product(range(3), repeat=T)]


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    pts = rng.integers(0, 8, size=(n, 2)).astype(float)  # small grid: many ties and duplicates
    if seed % 2:
        pts = rng.normal(size=(n, 2))
    pts = [tuple(p) for p in pts.tolist()]
    assert pareto_front(pts) == brute_front(pts)


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    assert pareto_front([(1.0, 2.0), (1.0, 1.0), (2.0, 1.0)]) == [1]
    assert pareto_front([(0.0, math.inf), (1.0, 5.0)]) == [0, 1]
    for bad in ([(1.0, float("nan"))], [(1.0, 2.0, 3.0)], [("a", "b")]):
        with pytest.raises(UserError, match="points"):
            pareto_front(bad)


@pytest.mark.parametrize("make", [additive, compounding])
@pytest.mark.parametrize("seed", range(8))
def test_front_sized_beam_is_pareto_optimal_among_all_paths(make, seed):
    """For errors monotone in the prefix error (additive, compounding), dominated prefixes never lead to better
    full paths, so a beam as wide as the prefix fronts (<= 2T - 1 bit levels before the last step) is exact."""
    rng = np.random.default_rng(seed)
    err, budget = make(rng), float(rng.uniform(4.4, 7.6))
    res = beam_search(T, BITS, err, BeamConfig(beam_width=2 * T - 1, budget=budget))
    paths = all_paths(err)
    feasible = [(e, b) for _, e, b in paths if b <= budget + 1e-12]
    assert res.best_avg_bits <= budget + 1e-12
    assert not any(dominates(q, (res.best_error, res.best_avg_bits)) for q in feasible)
    assert res.best_error == pytest.approx(min(e for e, _ in feasible), rel=1e-12, abs=1e-15)
    assert res.evaluations < 3 ** T


@pytest.mark.parametrize("make", [additive, compounding, interacting])
@pytest.mark.parametrize("width", [3 ** (T - 1), 3 ** T])
@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_equals_brute_force(make, width, seed):
    rng = np.random.default_rng(50 + seed)
    err, budget = make(rng), float(rng.uniform(4.4, 7.6))
    res = beam_search(T, BITS, err, BeamConfig(beam_width=width, budget=budget))
    feasible = [row for row in all_paths(err) if row[2] <= budget + 1e-12]
    opt = min(feasible, key=lambda row: (row[1], row[2], row[0]))
    assert res.best == opt[0] and res.best_error == opt[1] and res.best_avg_bits == pytest.approx(opt[2])
    front = [feasible[i] for i in brute_front([(e, b) for _, e, b in feasible])]
    assert sorted(p for p, _, _ in res.front) == sorted(p for p, _, _ in front)


@pytest.mark.parametrize("make", [additive, compounding, interacting])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_budget_respected_front_non_dominated_and_best_on_front(make, width):
    rng = np.random.default_rng(7)
    err = make(rng)
    for budget in (4.0, 5.0, 6.3, 8.0, None):
        rec = Recorder(err)
        res = beam_search(T, BITS, rec, BeamConfig(beam_width=width, budget=budget))
        assert isinstance(res, BeamResult) and len(res.best) == T
        assert res.evaluations == len(rec.calls) == len(set(rec.calls))
        assert res.best_error == err(res.best)
        assert res.best_avg_bits == pytest.approx(np.mean([BITS[c] for c in res.best]))
        if budget is not None:
            assert res.best_avg_bits <= budget + 1e-12
            assert all(b <= budget + 1e-12 for _, _, b in res.front)
        pts = [(e, b) for _, e, b in res.front]
        assert brute_front(pts) == list(range(len(pts)))
        assert [b for _, b in pts] == sorted(b for _, b in pts)
        assert (res.best, res.best_error, res.best_avg_bits) in res.front
        assert all(p == err(path) for path, p, _ in res.front)
        assert max(len({c[:t] for c in rec.calls if len(c) == t}) for t in range(1, T + 1)) <= 3 * width
    # budget == min bits forces the all-low path.
    res = beam_search(T, BITS, err, BeamConfig(beam_width=width, budget=4.0))
    assert res.best == (0,) * T


def test_default_width_on_additive_toy_is_non_dominated():
    """Empirical (not a guarantee): the default beam of 4 on random additive instances."""
    misses = 0
    for seed in range(30):
        rng = np.random.default_rng(300 + seed)
        err, budget = additive(rng), float(rng.uniform(4.4, 7.6))
        res = beam_search(T, BITS, err, BeamConfig(budget=budget))
        feasible = [(e, b) for _, e, b in all_paths(err) if b <= budget + 1e-12]
        misses += any(dominates(q, (res.best_error, res.best_avg_bits)) for q in feasible)
    assert misses <= 1


def test_tradeoff_prefers_fewer_bits():
    err = additive(np.random.default_rng(9))
    plain = beam_search(T, BITS, err, BeamConfig(beam_width=1))
    assert plain.best == (2,) * T  # no budget, no tradeoff: highest bits everywhere
    thrifty = beam_search(T, BITS, err, BeamConfig(beam_width=1, tradeoff=100.0))
    assert thrifty.best_avg_bits < plain.best_avg_bits


def test_deterministic_and_cached():
    err = interacting(np.random.default_rng(11))
    runs = []
    for _ in range(2):
        rec = Recorder(err)
        res = beam_search(T, BITS, rec, BeamConfig(beam_width=3, budget=6.0, tradeoff=0.1))
        runs.append((res, rec.calls))
    assert runs[0] == runs[1]


def test_equal_bit_candidates_and_single_step():
    res = beam_search(1, [4, 4, 8], lambda p: (3.0, 1.0, 0.5)[p[0]], BeamConfig(budget=4))
    assert res.best == (1,) and res.best_error == 1.0 and res.best_avg_bits == 4.0
    assert res.front == [((1,), 1.0, 4.0)]


@pytest.mark.parametrize("kwargs", [
    dict(beam_width=0), dict(beam_width=2.0), dict(beam_width=True), dict(budget=0), dict(budget=-1.0),
    dict(budget=float("inf")), dict(budget="6"), dict(tradeoff=-1.0), dict(tradeoff=float("nan")),
])
def test_bad_config_raises(kwargs):
    with pytest.raises(UserError):
        BeamConfig(**kwargs)


def test_bad_inputs_raise():
    err = lambda p: 0.0  # noqa: E731
    with pytest.raises(UserError, match="steps"):
        beam_search(0, BITS, err)
    for bits in ([], [4, 0], [4, float("nan")], "468", [4, "x"]):
        with pytest.raises(UserError, match="candidate_bits"):
            beam_search(3, bits, err)
    with pytest.raises(UserError, match="budget"):
        beam_search(3, BITS, err, BeamConfig(budget=3.9))
    with pytest.raises(UserError, match="NaN"):
        beam_search(3, BITS, lambda p: float("nan"))
    with pytest.raises(UserError, match="not a number"):
        beam_search(3, BITS, lambda p: "x")
    with pytest.raises(UserError, match="config"):
        beam_search(3, BITS, err, {"beam_width": 2})
