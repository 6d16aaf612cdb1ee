"""The planner's solver is exact: it matches brute force on small instances and
never exceeds the budget."""

from __future__ import annotations

import itertools
import random

import pytest

from onecomp.plan.solver import Infeasible, Option, solve, smallest_size


def _brute(units: list[list[Option]], capacity: int) -> float | None:
    best = None
    for choice in itertools.product(*[range(len(u)) for u in units]):
        size = sum(units[i][k].size for i, k in enumerate(choice))
        if size <= capacity:
            cost = sum(units[i][k].cost for i, k in enumerate(choice))
            best = cost if best is None else min(best, cost)
    return best


def _instance(rng: random.Random, nunits: int, nopts: int) -> list[list[Option]]:
    units = []
    for _ in range(nunits):
        params = rng.randint(10, 1000)
        opts = []
        for _ in range(nopts):
            bits = rng.choice([2, 3, 4, 8]) + rng.random()
            # smaller formats cost more, with noise so that no order is trivially optimal
            opts.append(Option(int(bits * params), params * rng.uniform(0.5, 2.0) / bits**2))
        units.append(opts)
    return units


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    units = _instance(rng, rng.randint(2, 6), rng.randint(2, 4))
    lo = smallest_size(units)
    hi = sum(max(o.size for o in u) for u in units)
    capacity = rng.randint(lo, hi)
    got = solve(units, capacity)
    assert got.size <= capacity
    assert got.size == sum(units[i][k].size for i, k in enumerate(got.choice))
    assert got.cost == pytest.approx(_brute(units, capacity), rel=1e-9, abs=1e-12)


def test_budget_below_the_smallest_plan_is_infeasible() -> None:
    units = [[Option(10, 1.0), Option(20, 0.5)], [Option(5, 2.0)]]
    with pytest.raises(Infeasible):
        solve(units, 14)
    assert solve(units, 15).choice == [0, 0]


def test_large_sizes_stay_within_budget() -> None:
    # sizes of billions of bits, as for a 7B model: the exact check must hold
    rng = random.Random(7)
    units = [[Option(rng.randint(10**8, 10**9), rng.random()) for _ in range(8)] for _ in range(60)]
    capacity = (smallest_size(units) + sum(max(o.size for o in u) for u in units)) // 2
    got = solve(units, capacity)
    assert got.size <= capacity
