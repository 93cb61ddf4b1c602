"""Q-DiT's evolutionary search of per-layer quantization group sizes, generic over a cost callable (lower is better).

A genome gives every layer a group size from ``choices`` (or from the layer's own ``allowed`` list). It is
feasible when its mean group size is >= ``min_mean``: the plain mean over layers when ``weights`` is None, else
the weighted mean sum(w_l g_l) / sum(w_l) (e.g. weights = parameters per layer constrain the model-wide average;
a zero weight leaves a layer out of the constraint). Means within FEAS_TOL (relative) of the bound count as
feasible so float sums of the same terms in another order agree.

The search (SPOS-style evolution with Q-DiT's settings):
1. The initial population holds the seed genome (128 per layer, or the allowed choice nearest to 128, ties to the
   larger one) and then random genomes (uniform per gene), ``population`` in all; the seed is evaluated first.
2. Each generation takes the parents from the ``top_k`` best distinct genomes evaluated so far (elitist, so the
   best cost never gets worse) and makes ``mutations`` children (one parent drawn uniformly; each gene resampled
   uniformly from its allowed choices with probability ``mutation_prob``) and then ``crossovers`` children
   (two distinct parents where possible; each gene taken from either with probability 1/2).
3. Infeasible genomes are *repaired*, never admitted: while the mean is below the bound, a gene drawn uniformly
   among those of nonzero weight below their layer's largest choice is raised to the layer's next larger choice
   (this terminates because the all-largest genome is feasible; otherwise UserError). The seed genome is repaired
   deterministically: each time the gene whose next step adds least to the weighted sum (ties: lowest layer).
4. A child already evaluated is redrawn up to NOVELTY_TRIES times so the budget goes to new genomes; after that
   the repeat is kept (its cost is cached, so it is free).

Costs are cached per genome (a dict keyed by the tuple); ``evaluations`` counts the distinct calls of ``cost``.
All randomness comes from one ``numpy.random.Generator`` seeded with ``config.seed``, so runs are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.checks import is_int

GROUP_CHOICES: tuple[int, ...] = (32, 64, 128, 192, 288)
#: Relative slack on the mean constraint (float rounding only).
FEAS_TOL = 1e-9
#: Redraws of a child that repeats an already evaluated genome before the repeat is accepted.
NOVELTY_TRIES = 10
SEED_GROUP = 128



@dataclass(frozen=True)
class EvolutionConfig:
    """Search settings; defaults are Q-DiT's (population 50, top 10, 25 mutations + 25 crossovers, p = 0.1)."""

    population: int = 50
    top_k: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    generations: int = 20
    min_mean: float = 128
    choices: tuple[int, ...] = GROUP_CHOICES
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("population", "top_k", "mutations", "crossovers", "generations", "seed"):
            value = getattr(self, name)
            low = 1 if name in ("population", "top_k") else 0
            if not is_int(value) or value < low:
                raise UserError(f"EvolutionConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.top_k > self.population:
            raise UserError(f"EvolutionConfig.top_k ({self.top_k}) exceeds population ({self.population})")
        if self.generations > 0 and self.mutations + self.crossovers < 1:
            raise UserError("EvolutionConfig needs mutations + crossovers >= 1 when generations > 0")
        p = self.mutation_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise UserError(f"EvolutionConfig.mutation_prob must be in [0, 1], got {p!r}")
        choices = tuple(self.choices) if isinstance(self.choices, (tuple, list)) else None
        if not choices or not all(is_int(c) and c > 0 for c in choices):
            raise UserError(f"EvolutionConfig.choices must be a nonempty tuple of positive integers, got "
                            f"{self.choices!r}")
        if len(set(choices)) != len(choices):
            raise UserError(f"EvolutionConfig.choices has repeated entries: {choices}")
        object.__setattr__(self, "choices", tuple(int(c) for c in choices))
        m = self.min_mean
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise UserError(f"EvolutionConfig.min_mean must be a finite number >= 0, got {m!r}")
        if m > max(choices) * (1 + FEAS_TOL):
            raise UserError(f"EvolutionConfig.min_mean {m} exceeds the largest choice {max(choices)}: no genome "
                            "is feasible")


@dataclass
class EvolutionResult:
    """Best genome and its cost, the best cost after each generation (0 = initial population), cost calls made."""

    best: tuple[int, ...]
    best_cost: float
    history: list[float]
    evaluations: int


def _check_allowed(n_layers: int, choices: tuple[int, ...],
                   allowed: Sequence[Sequence[int]] | None) -> list[tuple[int, ...]]:
    """Per-layer sorted allowed choices (all of ``choices`` when None); UserError if empty or outside choices."""
    if allowed is None:
        return [tuple(sorted(choices))] * n_layers
    rows = list(allowed)
    if len(rows) != n_layers:
        raise UserError(f"allowed has {len(rows)} entries but there are {n_layers} layers")
    out = []
    for layer, row in enumerate(rows):
        try:
            values = list(row)
        except TypeError:
            raise UserError(f"allowed[{layer}] must be a sequence of group sizes, got {row!r}") from None
        if not values:
            raise UserError(f"allowed[{layer}] is empty: layer {layer} has no group size")
        bad = [v for v in values if not is_int(v) or int(v) not in choices]
        if bad:
            raise UserError(f"allowed[{layer}] has {bad}, not among the choices {choices}")
        out.append(tuple(sorted({int(v) for v in values})))
    return out


def _check_weights(n_layers: int, weights: Sequence[float] | None) -> np.ndarray:
    """Layer weights as float64 normalised to sum 1 (uniform when None); UserError if bad."""
    if weights is None:
        return np.full(n_layers, 1.0 / n_layers)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("weights must be numbers") from None
    if w.shape != (n_layers,):
        raise UserError(f"weights must have one entry per layer ({n_layers}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserError("weights must be finite, >= 0 and not all zero")
    return w / w.sum()


class _Search:
    """State of one run: allowed choices, weights, the cost cache and the random generator."""

    def __init__(self, allowed: list[tuple[int, ...]], w: np.ndarray, min_mean: float,
                 cost: Callable[[tuple[int, ...]], float], rng: np.random.Generator) -> None:
        self.allowed, self.w, self.rng, self.cost = allowed, w, rng, cost
        self.bound = min_mean - FEAS_TOL * max(1.0, min_mean)
        self.cache: dict[tuple[int, ...], float] = {}

    def mean(self, genome: Sequence[int]) -> float:
        """Mean group size of a genome (plain or weighted, per the module docstring)."""
        return float(np.dot(self.w, np.asarray(genome, dtype=np.float64)))

    def repair(self, genome: list[int], deterministic: bool = False) -> tuple[int, ...]:
        """Raise genes one step at a time until the genome is feasible (see the module docstring)."""
        while self.mean(genome) < self.bound:
            raisable = [l for l, g in enumerate(genome) if g < self.allowed[l][-1] and self.w[l] > 0]
            if not raisable:  # unreachable after the feasibility check in evolve_group_sizes
                raise UserError("no feasible genome exists")
            steps = [self.allowed[l][self.allowed[l].index(genome[l]) + 1] for l in raisable]
            if deterministic:
                gains = [self.w[l] * (s - genome[l]) for l, s in zip(raisable, steps)]
                i = int(np.argmin(gains))
            else:
                i = int(self.rng.integers(len(raisable)))
            genome[raisable[i]] = steps[i]
        return tuple(genome)

    def evaluate(self, genome: tuple[int, ...]) -> float:
        """Cached cost of a feasible genome; UserError if the cost is not a real number or is NaN."""
        if genome not in self.cache:
            value = self.cost(genome)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise UserError(f"cost returned {value!r} for genome {genome}, not a number") from None
            if math.isnan(value):
                raise UserError(f"cost returned NaN for genome {genome}")
            self.cache[genome] = value
        return self.cache[genome]

    def random_genome(self) -> tuple[int, ...]:
        """Uniform gene per layer, then repaired."""
        return self.repair([a[int(self.rng.integers(len(a)))] for a in self.allowed])

    def mutate(self, parent: tuple[int, ...], prob: float) -> tuple[int, ...]:
        """Resample each gene with probability ``prob``, then repair."""
        flips = self.rng.random(len(parent)) < prob
        return self.repair([a[int(self.rng.integers(len(a)))] if f else g
                            for g, a, f in zip(parent, self.allowed, flips)])

    def cross(self, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        """Uniform crossover (each gene from either parent with probability 1/2), then repair."""
        take = self.rng.random(len(a)) < 0.5
        return self.repair([x if t else y for x, y, t in zip(a, b, take)])

    def novel(self, make: Callable[[], tuple[int, ...]], pending: set[tuple[int, ...]]) -> tuple[int, ...]:
        """A child from ``make`` that is neither evaluated nor pending, within NOVELTY_TRIES draws."""
        child = make()
        for _ in range(NOVELTY_TRIES):
            if child not in self.cache and child not in pending:
                break
            child = make()
        return child

    def top(self, k: int) -> list[tuple[int, ...]]:
        """The k best distinct genomes evaluated so far (ties: first evaluated first)."""
        ranked = sorted(self.cache.items(), key=lambda item: item[1])  # stable: insertion order breaks ties
        return [genome for genome, _ in ranked[:k]]

    def run(self, genomes: list[tuple[int, ...]]) -> float:
        """Evaluate genomes in order; return the best cost seen so far."""
        for genome in genomes:
            self.evaluate(genome)
        return min(self.cache.values())


def evolve_group_sizes(
    n_layers: int,
    cost: Callable[[tuple[int, ...]], float],
    config: EvolutionConfig = EvolutionConfig(),
    *,
    allowed: Sequence[Sequence[int]] | None = None,
    weights: Sequence[float] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> EvolutionResult:
    """Per-layer group sizes minimising ``cost`` under mean(group size) >= ``config.min_mean`` by Q-DiT's
    evolutionary search; ``progress(generation, best_cost)`` is called after each generation (0 = initial)."""
    if not is_int(n_layers) or n_layers < 1:
        raise UserError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    if not isinstance(config, EvolutionConfig):
        raise UserError(f"config must be an EvolutionConfig, got {type(config).__name__}")
    if not callable(cost):
        raise UserError("cost must be callable")
    n_layers = int(n_layers)
    rows = _check_allowed(n_layers, tuple(config.choices), allowed)
    search = _Search(rows, _check_weights(n_layers, weights), float(config.min_mean), cost,
                     np.random.default_rng(int(config.seed)))
    best_mean = search.mean([a[-1] for a in rows])
    if best_mean < search.bound:
        raise UserError(f"no feasible genome: the largest allowed group sizes give mean {best_mean:.6g} < "
                        f"min_mean {config.min_mean}")

    seed_genome = search.repair([min(a, key=lambda c: (abs(c - SEED_GROUP), -c)) for a in rows], deterministic=True)
    initial = [seed_genome]
    pending = {seed_genome}
    for _ in range(config.population - 1):
        child = search.novel(search.random_genome, pending)
        pending.add(child)
        initial.append(child)
    history = [search.run(initial)]
    if progress is not None:
        progress(0, history[-1])

    for generation in range(1, config.generations + 1):
        parents = search.top(config.top_k)
        children: list[tuple[int, ...]] = []
        pending = set()

        def mutant() -> tuple[int, ...]:
            return search.mutate(parents[int(search.rng.integers(len(parents)))], config.mutation_prob)

        def crossed() -> tuple[int, ...]:
            i, j = search.rng.choice(len(parents), size=2, replace=len(parents) < 2)
            return search.cross(parents[int(i)], parents[int(j)])

        for make, count in ((mutant, config.mutations), (crossed, config.crossovers)):
            for _ in range(count):
                child = search.novel(make, pending)
                pending.add(child)
                children.append(child)
        history.append(search.run(children))
        if progress is not None:
            progress(generation, history[-1])

    best = search.top(1)[0]
    return EvolutionResult(best=best, best_cost=search.cache[best], history=history,
                           evaluations=len(search.cache))
