import itertools

import numpy as np
import pytest
from pass_graphs import HID, IN, layer, make_plan

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import kappa
from qdit4sr_export.quant.plan import QuantPlan
from qdit4sr_export.quant.variants import plan_variants


def _plan(schedules, variances):
    names = [f"l{i}" for i in range(len(schedules))]
    layers = {n: layer(IN, HID, abits=tuple(s), act_variance=tuple(v)) for n, s, v in zip(names, schedules, variances)}
    base = make_plan(layers)
    return QuantPlan(base.method, {}, {}, {}, tuple(float(1000 - 100 * i) for i in range(len(schedules[0]))), layers)


def _brute(schedules, variances, k):
    steps = len(schedules[0])
    best = np.inf
    for cuts in range(k):
        for bounds in itertools.combinations(range(1, steps), cuts):
            edges = (0, *bounds, steps)
            cost = 0.0
            for a, b in zip(edges, edges[1:]):
                for s, v in zip(schedules, variances):
                    bits = sum(s[a:b]) // (b - a)
                    cost += kappa(bits) * sum(v[a:b])
            best = min(best, cost)
    return best


def test_one_variant_per_distinct_configuration():
    p = _plan([(4, 4, 6, 6, 4), (8, 8, 8, 6, 8)], [(1,) * 5, (1,) * 5])
    s = plan_variants(p)
    assert [v.steps for v in s.variants] == [(0, 1, 4), (2,), (3,)]  # step 4 repeats steps 0-1's bits
    assert s.step_variant == (0, 0, 1, 2, 0)
    assert s.distortion == pytest.approx(s.distortion_uncapped)


@pytest.mark.parametrize("seed", range(6))
def test_cap_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    steps = 7
    schedules = [tuple(int(b) for b in rng.integers(3, 8, steps)) for _ in range(3)]
    variances = [tuple(float(x) for x in rng.uniform(0.1, 3.0, steps)) for _ in range(3)]
    for k in (1, 2, 3):
        s = plan_variants(_plan(schedules, variances), max_variants=k)
        assert len(s.variants) <= k
        assert s.distortion == pytest.approx(_brute(schedules, variances, k))
        assert s.mean_abits <= s.mean_abits_uncapped + 1e-9  # floor of the mean never exceeds the budget
        changes = sum(a != b for a, b in zip(s.step_variant, s.step_variant[1:]))
        assert changes <= k - 1  # at most k contiguous segments


def test_bad_cap():
    with pytest.raises(UserError, match="--max-variants"):
        plan_variants(_plan([(4, 4)], [(1, 1)]), max_variants=0)
