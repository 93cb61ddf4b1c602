import math
import time

import numpy as np
import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant import vatmp
from qdit4sr_export.quant.vatmp import schedule_activation_bits, schedule_cost, schedule_layers, segments

# Integer-grid Gaussian distortion kappa(b) (reference values; quant/gaussian.py computes them).
KAPPA = {2: 0.19017, 3: 0.04686, 4: 0.012889, 5: 0.0036932, 6: 0.0010693, 7: 3.0862e-4, 8: 8.8308e-5}
ALL_BITS = (2, 3, 4, 5, 6, 7, 8)


def n_segments(schedule):
    s = np.asarray(schedule)
    return 1 + int(np.count_nonzero(s[1:] != s[:-1]))


def brute_force(variances, budget, bits, max_segments):
    """Every schedule in bits^T within the Eq. 21 budget and segment limit; least cost, then fewest bits, then
    fewest segments (costs within 1e-9 relative tie, as in the DP)."""
    steps = len(variances)
    grid = np.asarray(bits)[np.indices((len(bits),) * steps).reshape(steps, -1).T]
    table = np.zeros(max(KAPPA) + 1)
    table[list(KAPPA)] = list(KAPPA.values())
    cost = table[grid] @ np.asarray(variances)
    used = grid.sum(axis=1)
    segs = 1 + np.count_nonzero(grid[:, 1:] != grid[:, :-1], axis=1)
    ok = used <= math.floor(budget * steps + 1e-9)
    if max_segments is not None:
        ok &= segs <= max_segments
    tied = ok & (cost <= cost[ok].min() * (1 + 1e-9))
    best = np.flatnonzero(tied)[np.lexsort((segs[tied], used[tied]))[0]]
    return grid[best].tolist(), float(cost[best])


@pytest.mark.parametrize("max_segments", [None, 1, 2, 3])
def test_dp_equals_brute_force(max_segments):
    rng = np.random.default_rng(max_segments or 0)
    for steps in range(1, 8):
        bits = ALL_BITS if steps <= 5 else (2, 3, 4, 6, 8)
        for budget in (2.0, 3.5, 4.0, 4.3, 6.2):
            v = np.exp(rng.normal(0, 1.5, steps))
            got = schedule_activation_bits(v, budget=budget, kappa=KAPPA, bits=bits, max_segments=max_segments)
            want, want_cost = brute_force(v, budget, bits, max_segments)
            assert got == want, (steps, budget, v)
            assert schedule_cost(v, got, KAPPA) == pytest.approx(want_cost, rel=1e-12)


def test_dp_equals_brute_force_all_bits_seven_steps():
    v = np.exp(np.random.default_rng(9).normal(0, 2, 7))
    for max_segments in (None, 2):
        got = schedule_activation_bits(v, budget=4.4, kappa=KAPPA, max_segments=max_segments)
        assert got == brute_force(v, 4.4, ALL_BITS, max_segments)[0]


def test_segment_limited_dp_agrees_with_unbounded_shortcut():
    # schedule_layers solves the unbounded DP first and re-solves only rows with too many runs; the segment-limited
    # DP run on every row must give the same schedules.
    rng = np.random.default_rng(4)
    v = np.exp(rng.normal(0, 1, (30, 1)) + np.cumsum(rng.normal(0, 0.3, (30, 12)), axis=1))
    bits = np.arange(2, 9)
    kap = np.array([KAPPA[b] for b in bits])
    for k in (1, 2, 3, 12):
        got = schedule_layers(v, budget=4.5, kappa=KAPPA, max_segments=k)
        peak = v.max(axis=1, keepdims=True)
        extra = 54 - 2 * 12  # floor(4.5 * 12) bits less the 2-bit floor at every timestep
        np.testing.assert_array_equal(got, vatmp._dp(v / peak, bits, kap, extra, k))


def test_one_segment_is_constant():
    rng = np.random.default_rng(2)
    for budget in (2.0, 3.9, 4.7, 6.01, 8.0):
        s = schedule_activation_bits(rng.random(10), budget=budget, kappa=KAPPA, max_segments=1)
        assert len(set(s)) == 1 and s[0] == math.floor(budget + 1e-9)
    assert schedule_activation_bits([1.0] * 4, budget=5.0, kappa=KAPPA, bits=(2, 4, 6, 8), max_segments=1) == [4] * 4


@pytest.mark.parametrize("budget", [3.0, 4.0, 4.6])
def test_higher_variance_timesteps_get_at_least_as_many_bits(budget):
    rng = np.random.default_rng(int(budget * 10))
    for _ in range(5):
        v = np.exp(rng.normal(0, 1.5, 40))
        s = np.asarray(schedule_activation_bits(v, budget=budget, kappa=KAPPA))
        assert np.all(np.diff(s[np.argsort(v)]) >= 0)
        assert len(set(s.tolist())) > 1  # the test is not vacuous


@pytest.mark.parametrize("max_segments", [None, 1, 2, 4])
def test_budget_respected(max_segments):
    rng = np.random.default_rng(6)
    v = np.exp(rng.normal(0, 2, (50, 23)))
    for budget in (2.0, 2.5, 3.3, 4.0, 5.75, 8.0, 9.0):
        s = schedule_layers(v, budget=budget, kappa=KAPPA, max_segments=max_segments)
        assert s.shape == v.shape and s.dtype.kind == "i"
        assert np.all(s.sum(axis=1) <= math.floor(budget * 23 + 1e-9))
        assert np.all((s >= 2) & (s <= 8))
        if max_segments is not None:
            assert max(n_segments(r) for r in s) <= max_segments


def test_budget_is_read_as_the_decimal_written():
    # 2.01 * 100 is 200.99999999999997 in floats; Eq. 21 must still allow 201 bits.
    assert math.floor(2.01 * 100) == 200
    v = np.linspace(1.0, 2.0, 100)
    s = schedule_activation_bits(v, budget=2.01, kappa=KAPPA)
    assert sum(s) == 201 and s[-1] == 3


@pytest.mark.parametrize("max_segments", [None, 1, 3])
def test_schedule_layers_equals_per_layer_calls(max_segments, monkeypatch):
    rng = np.random.default_rng(8)
    v = np.exp(rng.normal(0, 1, (9, 1)) * 5 + np.cumsum(rng.normal(0, 0.4, (9, 15)), axis=1))
    v[3] = 0.0
    v[4] = 2.5
    v[5] *= 1e-30
    per_layer = [schedule_activation_bits(r, budget=3.7, kappa=KAPPA, max_segments=max_segments) for r in v]
    together = schedule_layers(v, budget=3.7, kappa=KAPPA, max_segments=max_segments)
    np.testing.assert_array_equal(together, np.array(per_layer))
    monkeypatch.setattr(vatmp, "CHUNK_BYTES", 1)  # one layer per chunk
    np.testing.assert_array_equal(schedule_layers(v, budget=3.7, kappa=KAPPA, max_segments=max_segments), together)


def test_ties_prefer_fewer_bits_then_fewer_segments():
    assert schedule_activation_bits([0.0, 0.0, 0.0], budget=4.0, kappa=KAPPA) == [2, 2, 2]
    assert schedule_activation_bits([0.0, 1.0, 0.0], budget=4.0, kappa=KAPPA) == [2, 8, 2]
    assert schedule_activation_bits([0.0, 1.0, 0.0], budget=4.0, kappa=KAPPA, max_segments=2) == [5, 5, 2]
    # Equal variances: many optima differ only by where the extra bits sit (sums differ in the last ulp);
    # the tie-break packs them into one run, giving two segments.
    bits = np.arange(2, 9)
    kap = np.array([KAPPA[b] for b in bits])
    for steps, budget in ((7, 3.3), (20, 4.9), (40, 4.1), (40, 4.5), (40, 5.7)):
        for max_segments in (None, 3):
            s = schedule_activation_bits([0.37] * steps, budget=budget, kappa=KAPPA, max_segments=max_segments)
            assert sum(s) == math.floor(budget * steps) and n_segments(s) == 2
        # The segment-limited DP on its own (schedule_layers skips it when the unlimited optimum fits).
        extra = math.floor(budget * steps) - 2 * steps
        s = vatmp._dp(np.full((1, steps), 0.37), bits, kap, extra, 3)[0]
        assert sum(s) == math.floor(budget * steps) and n_segments(s) == 2


def test_variance_scale_does_not_matter():
    # Costs are scaled per layer, so variances near the float maximum cannot overflow the DP's sums (here
    # unscaled, 40 * kappa(2) * 1e308 is inf and every schedule would tie at inf).
    v = np.linspace(8.0, 1.0, 40) * np.linspace(1.0, 2.0, 40)
    v /= v.max()
    for bits, budget in (((2, 3), 2.5), (ALL_BITS, 4.3)):
        want = schedule_activation_bits(v, budget=budget, kappa=KAPPA, bits=bits, max_segments=3)
        assert len(set(want)) > 1
        for scale in (1e308, 1e-300):
            assert schedule_activation_bits(v * scale, budget=budget, kappa=KAPPA, bits=bits, max_segments=3) == want


def test_fewer_bits_beat_fewer_segments_at_equal_cost():
    # The zero-variance step costs nothing at any width: (8, 2) and (8, 8) tie on cost; (8, 2) uses fewer bits.
    assert schedule_activation_bits([1.0, 0.0], budget=8.0, kappa=KAPPA) == [8, 2]


def test_exact_ties_match_brute_force():
    # Variances from a small set (zeros included) make many optima tie up to float rounding; the DP must then
    # agree with brute force on cost, bits used and segment count. Found by search: with exact (not RTOL) ties
    # in the predecessor pick, (0, .1, 1, .37, .1, 1) at budget 3 came out with 6 segments instead of 5; with
    # exact ties in the final pick, the next two came out with 3 segments instead of 2.
    rng = np.random.default_rng(12)
    cases = [
        (np.array([0.0, 0.1, 1.0, 0.37, 0.1, 1.0]), 3.0, None),
        (np.array([1.0, 1.0, 0.37, 0.1, 1.0]), 4.0, 4),
        (np.array([0.37, 0.37, 0.1, 0.37]), 4.0, 4),
    ]
    for i in range(240):
        steps = int(rng.integers(2, 7))
        v = rng.choice([0.0, 0.1, 0.37, 1.0], steps) if i % 2 else np.full(steps, rng.choice([0.1, 0.37, 1.3]))
        cases.append((v, float(rng.choice([2.5, 3.0, 3.4, 4.0, 4.5, 5.2])), (None, 2, 3, 4)[i % 4]))
    bits = (2, 3, 4, 5, 6)
    for v, budget, max_segments in cases:
        got = schedule_activation_bits(v, budget=budget, kappa=KAPPA, bits=bits, max_segments=max_segments)
        want, want_cost = brute_force(v, budget, bits, max_segments)
        assert schedule_cost(v, got, KAPPA) == pytest.approx(want_cost, rel=1e-9, abs=0)
        assert (sum(got), n_segments(got)) == (sum(want), n_segments(want)), (v, budget, max_segments)


def test_paper_scale_is_fast():
    rng = np.random.default_rng(0)
    v = np.exp(rng.normal(0, 2, (600, 40)))  # noisy rows: every layer needs the segment-limited DP
    start = time.perf_counter()
    s = schedule_layers(v, budget=4.0, kappa=KAPPA, max_segments=4)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0  # measured about 1.2 s on 2 CPU cores
    assert np.all(s.sum(axis=1) <= 160) and max(n_segments(r) for r in s) <= 4


def test_schedule_cost_and_segments():
    assert schedule_cost([1.0, 2.0, 0.5], [2, 4, 4], KAPPA) == pytest.approx(0.19017 + 2.5 * 0.012889)
    assert segments([4, 4, 5, 5, 5, 3]) == [(0, 2, 4), (2, 5, 5), (5, 6, 3)]
    assert segments([6]) == [(0, 1, 6)] and segments([]) == []
    with pytest.raises(UserError, match="schedule has 2 entries"):
        schedule_cost([1.0, 2.0, 3.0], [4, 4], KAPPA)
    with pytest.raises(UserError, match=r"schedule bits \[9\]"):
        schedule_cost([1.0], [9], KAPPA)


def test_empty_layer_axis_gives_an_empty_schedule():
    assert schedule_layers(np.zeros((0, 5)), budget=4.0, kappa=KAPPA).shape == (0, 5)


@pytest.mark.parametrize(
    "variances, kwargs, message",
    [
        ([1.0, 1.0], dict(budget=1.5), "below the minimum 2 bits per timestep"),
        ([1.0, 1.0], dict(budget=3.5, bits=(4, 6)), "below the minimum 4 bits"),
        ([], dict(), "empty"),
        ([1.0, -0.5], dict(), "finite and >= 0"),
        ([1.0, float("nan")], dict(), "finite and >= 0"),
        ([[1.0, 2.0]], dict(), "1-D"),
        ([1.0], dict(max_segments=0), "max_segments must be None or an integer >= 1"),
        ([1.0], dict(max_segments=-2), "max_segments"),
        ([1.0], dict(max_segments=1.5), "max_segments"),
        ([1.0], dict(max_segments=True), "max_segments"),
        ([1.0], dict(bits=()), "bits is empty"),
        ([1.0], dict(bits=(2, 2, 4)), "repeated"),
        ([1.0], dict(bits=(2, 9)), r"bits \[9\] are not in the kappa table"),
        ([1.0], dict(bits=(2.5, 4)), "integers"),
        ([1.0], dict(budget=float("inf")), "budget must be finite"),
        ([1.0], dict(budget=None), "budget must be a number"),
    ],
)
def test_bad_input_raises_user_error(variances, kwargs, message):
    args = dict(budget=4.0, kappa=KAPPA) | kwargs
    with pytest.raises(UserError, match=message):
        schedule_activation_bits(variances, **args)


def test_schedule_layers_wants_two_dimensions():
    with pytest.raises(UserError, match="2-D"):
        schedule_layers(np.ones(5), budget=4.0, kappa=KAPPA)
    with pytest.raises(UserError, match="empty"):
        schedule_layers(np.ones((3, 0)), budget=4.0, kappa=KAPPA)
