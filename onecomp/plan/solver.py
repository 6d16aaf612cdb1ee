"""Exact choice of one option per unit under a size budget (a multiple-choice
knapsack), solved as an integer program with HiGHS.

A unit is a set of layers that must share a format (a fused group, or a single
layer); each option has an integer size (bits or bytes) and a cost (predicted
loss increase). Sizes are checked in exact integer arithmetic after the solve,
so a returned assignment never exceeds the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np


@dataclass(frozen=True)
class Option:
    size: int
    cost: float


@dataclass
class Assignment:
    choice: list[int]  # index of the chosen option of each unit
    size: int
    cost: float


class Infeasible(ValueError):
    """No assignment fits the budget."""


def smallest_size(units: list[list[Option]]) -> int:
    return sum(min(o.size for o in options) for options in units)


def _solve_once(units: list[list[Option]], capacity: float, scale: float) -> list[int] | None:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("random_seed", 0)
    cmax = max((o.cost for options in units for o in options), default=1.0) or 1.0
    costs, cols = [], []
    for u, options in enumerate(units):
        for k, o in enumerate(options):
            costs.append(o.cost / cmax)
            cols.append((u, k))
    n = len(cols)
    inf = highspy.kHighsInf
    h.addVars(n, np.zeros(n), np.ones(n))
    h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(costs, dtype=np.float64))
    h.changeColsIntegrality(n, np.arange(n, dtype=np.int32), np.array([highspy.HighsVarType.kInteger] * n))
    start = 0
    for options in units:  # exactly one option per unit
        idx = np.arange(start, start + len(options), dtype=np.int32)
        h.addRow(1.0, 1.0, len(idx), idx, np.ones(len(idx)))
        start += len(options)
    sizes = np.array([units[u][k].size / scale for u, k in cols], dtype=np.float64)
    h.addRow(-inf, capacity / scale, n, np.arange(n, dtype=np.int32), sizes)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    values = np.asarray(h.getSolution().col_value)
    choice = [0] * len(units)
    for (u, k), v in zip(cols, values):
        if v > 0.5:
            choice[u] = k
    return choice


def solve(units: list[list[Option]], capacity: int) -> Assignment:
    """The assignment of least total cost whose total size is at most ``capacity``."""
    if any(not options for options in units):
        raise ValueError("every unit needs at least one option")
    if smallest_size(units) > capacity:
        raise Infeasible(f"the smallest assignment needs {smallest_size(units)}, the budget is {capacity}")
    scale = max(1.0, capacity / 1e6)  # keep the size row well conditioned
    cap = float(capacity)
    for _ in range(8):
        choice = _solve_once(units, cap, scale)
        if choice is None:
            break
        size = sum(units[u][k].size for u, k in enumerate(choice))
        if size <= capacity:
            return Assignment(choice, size, sum(units[u][k].cost for u, k in enumerate(choice)))
        cap -= (size - capacity) + scale  # the solver's feasibility tolerance let it slip over: tighten
    raise Infeasible("the integer program found no assignment within the budget")
