import itertools

import numpy as np
import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.evolution import GROUP_CHOICES, EvolutionConfig, EvolutionResult, evolve_group_sizes


class Recorder:
    """A cost that records every genome it is asked about."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, genome):
        assert isinstance(genome, tuple) and all(isinstance(g, int) for g in genome)
        self.calls.append(genome)
        return self.fn(genome)


def feasible_targets(rng, n, choices=GROUP_CHOICES, min_mean=128):
    while True:
        tgt = rng.choice(choices, size=n)
        if tgt.mean() >= min_mean:
            return tgt


def quadratic(tgt, scale=None):
    scale = np.ones(len(tgt)) if scale is None else scale
    return lambda g: float(np.sum(scale * (np.asarray(g, dtype=float) - tgt) ** 2))


def test_defaults_match_q_dit():
    c = EvolutionConfig()
    assert (c.population, c.top_k, c.mutations, c.crossovers, c.mutation_prob, c.generations, c.min_mean) == \
        (50, 10, 25, 25, 0.1, 20, 128)
    assert c.choices == GROUP_CHOICES == (32, 64, 128, 192, 288)


def test_every_evaluated_genome_is_feasible_and_seed_first():
    rec = Recorder(quadratic(np.full(12, 32.0)))  # pulls every gene down: the constraint binds throughout
    res = evolve_group_sizes(12, rec, EvolutionConfig(generations=8, seed=3))
    assert rec.calls[0] == (128,) * 12
    assert len(rec.calls) == len(set(rec.calls)) == res.evaluations  # cached: each genome costed once
    for g in rec.calls:
        assert len(g) == 12 and set(g) <= set(GROUP_CHOICES) and np.mean(g) >= 128
    assert np.mean(res.best) >= 128 and res.best_cost == rec.fn(res.best)


def test_weighted_constraint_is_honoured():
    rng = np.random.default_rng(2)
    w = rng.integers(1, 10, size=8).astype(float)
    rec = Recorder(quadratic(np.full(8, 32.0)))
    res = evolve_group_sizes(8, rec, EvolutionConfig(generations=5), weights=w)
    for g in rec.calls:
        assert np.dot(w, g) / w.sum() >= 128 - 1e-9
    assert np.dot(w, res.best) / w.sum() >= 128 - 1e-9
    # The weighted mean, not the plain one, is constrained: genomes below a plain mean of 128 are admitted.
    assert any(np.mean(g) < 128 for g in rec.calls)
    assert EvolutionConfig(choices=[64, 32], min_mean=48).choices == (64, 32)


def test_history_non_increasing_and_progress_reported():
    rng = np.random.default_rng(3)
    seen = []
    res = evolve_group_sizes(10, quadratic(feasible_targets(rng, 10)), EvolutionConfig(generations=12),
                             progress=lambda gen, best: seen.append((gen, best)))
    assert isinstance(res, EvolutionResult)
    assert len(res.history) == 13
    assert all(b <= a for a, b in zip(res.history, res.history[1:]))
    assert seen == list(enumerate(res.history))
    assert res.history[-1] == res.best_cost


def test_deterministic_for_a_seed():
    cost = quadratic(feasible_targets(np.random.default_rng(4), 10))
    runs = []
    for seed in (7, 7, 8):
        rec = Recorder(cost)
        res = evolve_group_sizes(10, rec, EvolutionConfig(generations=5, seed=seed))
        runs.append((res.best, res.best_cost, res.history, res.evaluations, rec.calls))
    assert runs[0] == runs[1]
    assert runs[0][4] != runs[2][4]


@pytest.mark.parametrize("seed", range(4))
def test_finds_known_optimum_with_default_budget(seed):
    # 12 layers (5^12 genomes): 40/40 random instances reach the optimum; at 16 layers about 3 in 4 do.
    tgt = feasible_targets(np.random.default_rng(100 + seed), 12)
    res = evolve_group_sizes(12, quadratic(tgt), EvolutionConfig(seed=seed))
    assert res.best == tuple(int(t) for t in tgt) and res.best_cost == 0.0
    assert res.evaluations <= 50 + 20 * 50


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_when_constraint_binds(seed):
    rng = np.random.default_rng(200 + seed)
    n = 5
    w = rng.integers(1, 5, size=n).astype(float)
    pull, tgt = rng.uniform(0.5, 2.0, size=n), rng.choice(GROUP_CHOICES, size=n)

    def cost(g):
        g = np.asarray(g, dtype=float)
        return float(np.sum(pull * (g - 32) ** 2 + 0.3 * (g - tgt) ** 2))

    feas = [g for g in itertools.product(GROUP_CHOICES, repeat=n) if np.dot(w, g) / w.sum() >= 128 - 1e-9]
    opt = min(cost(g) for g in feas)
    res = evolve_group_sizes(n, cost, EvolutionConfig(seed=seed), weights=w)
    assert res.best_cost == pytest.approx(opt, rel=1e-12)


def test_allowed_lists_are_honoured():
    allowed = [(32, 64, 128), (64, 192), (288,), (32, 64), (128, 192, 288), (64, 128)]
    rec = Recorder(quadratic(np.full(6, 32.0)))
    res = evolve_group_sizes(6, rec, EvolutionConfig(generations=6), allowed=allowed)
    # 128 where allowed, else the nearest to 128 (64 vs 192 tie: the larger); the mean is 154.7, no repair.
    assert rec.calls[0] == (128, 192, 288, 64, 128, 128)
    for g in rec.calls:
        assert all(x in a for x, a in zip(g, allowed)) and np.mean(g) >= 128
    brute = min((g for g in itertools.product(*allowed) if np.mean(g) >= 128), key=rec.fn)
    assert res.best_cost == rec.fn(brute)


def test_seed_genome_is_repaired_when_infeasible():
    allowed = [(32, 64)] * 3 + [(64, 128, 192, 288)]
    rec = Recorder(lambda g: float(sum(g)))
    res = evolve_group_sizes(4, rec, EvolutionConfig(population=5, top_k=2, generations=2, min_mean=100),
                             allowed=allowed)
    first = rec.calls[0]
    assert np.mean(first) >= 100 and all(x in a for x, a in zip(first, allowed))
    assert np.mean(res.best) >= 100


@pytest.mark.parametrize("kwargs", [
    dict(population=0), dict(top_k=0), dict(top_k=60), dict(mutations=-1), dict(mutations=0, crossovers=0),
    dict(mutation_prob=1.5), dict(mutation_prob=-0.1), dict(generations=-1), dict(min_mean=-1),
    dict(min_mean=float("nan")), dict(min_mean=300), dict(choices=()), dict(choices=(32, 32)),
    dict(choices=(0, 64)), dict(seed=-1), dict(population=2.5),
])
def test_bad_config_raises(kwargs):
    with pytest.raises(UserError):
        EvolutionConfig(**kwargs)


def test_bad_inputs_and_impossible_constraints_raise():
    cost = lambda g: 0.0  # noqa: E731
    with pytest.raises(UserError, match="n_layers"):
        evolve_group_sizes(0, cost)
    with pytest.raises(UserError, match="no feasible genome"):
        evolve_group_sizes(3, cost, allowed=[(32, 64)] * 3)
    with pytest.raises(UserError, match="no feasible genome"):
        evolve_group_sizes(2, cost, weights=[1.0, 3.0], allowed=[(288,), (32, 64)])
    with pytest.raises(UserError, match="allowed"):
        evolve_group_sizes(2, cost, allowed=[(128,)])
    with pytest.raises(UserError, match="allowed"):
        evolve_group_sizes(2, cost, allowed=[(128,), ()])
    with pytest.raises(UserError, match="allowed"):
        evolve_group_sizes(2, cost, allowed=[(128,), (100,)])
    for w in ([1.0], [0.0, 0.0], [1.0, -1.0], [1.0, float("inf")]):
        with pytest.raises(UserError, match="weights"):
            evolve_group_sizes(2, cost, weights=w)
    with pytest.raises(UserError, match="NaN"):
        evolve_group_sizes(2, lambda g: float("nan"))
    with pytest.raises(UserError, match="config"):
        evolve_group_sizes(2, cost, {"population": 3})
