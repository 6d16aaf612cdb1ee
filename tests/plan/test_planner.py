"""The planner on synthetic measurements: fused groups share a format, pins are
honoured, destructive candidates are excluded, budgets are never exceeded, and
plan.json round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp.errors import OneCompError
from onecomp.formats import IntFormat, default_candidates, format_from_label
from onecomp.plan.measure import Measurement
from onecomp.plan.planner import Budget, ModelFacts, build_plan, fixed_bytes, load_plan_layers, make_budget
from onecomp.plan.settings import PlanSettings

LABELS = ["w2g128", "w3g128", "w4g128", "w8g128"]
SHAPES = {
    "b.0.q": (64, 64), "b.0.k": (32, 64), "b.0.v": (32, 64), "b.0.o": (64, 64),
    "b.1.q": (64, 64), "b.1.k": (32, 64), "b.1.v": (32, 64), "b.1.o": (64, 64),
}
UNITS = [["b.0.q", "b.0.k", "b.0.v"], ["b.0.o"], ["b.1.q", "b.1.k", "b.1.v"], ["b.1.o"]]
NAMES = [n for u in UNITS for n in u]


def _measurement(sensitivity: dict[str, float] | None = None, relative: dict[tuple[str, str], float] | None = None) -> Measurement:
    sensitivity = sensitivity or {}
    relative = relative or {}
    layers = {}
    for n in NAMES:
        errors = {}
        for label in LABELS:
            bits = format_from_label(label).bits
            err = sensitivity.get(n, 1.0) * 4.0 ** (-bits)  # each extra bit quarters the error
            errors[label] = {"weighted": err, "relative": relative.get((n, label), 4.0 ** (-bits))}
        layers[n] = {"shape": list(SHAPES[n]), "errors": errors}
    return Measurement({"model": "x"}, {label: format_from_label(label).to_json() for label in LABELS}, layers)


def _bpw_budget(bpw: float) -> Budget:
    params = sum(a * b for a, b in SHAPES.values())
    return Budget("bpw", int(bpw * params), bpw)


def _bpw(plan) -> float:
    return plan.achieved["bits_per_weight"]


@pytest.mark.parametrize("target", [2.3, 2.6, 3.0, 3.4, 4.2, 6.0])
def test_budget_is_never_exceeded(target: float) -> None:
    plan = build_plan(_measurement(), NAMES, UNITS, PlanSettings(bpw=target), _bpw_budget(target), SHAPES)
    assert _bpw(plan) <= target
    bits = sum(f.storage_bits(*SHAPES[n]) for n, f in plan.layers.items())
    assert bits == plan.achieved["storage_bits"]


def test_sensitive_layers_get_more_bits() -> None:
    m = _measurement({"b.0.o": 100.0})
    plan = build_plan(m, NAMES, UNITS, PlanSettings(bpw=3.2), _bpw_budget(3.2), SHAPES)
    assert plan.layers["b.0.o"].bits > plan.layers["b.1.o"].bits


def test_fused_groups_share_one_format_unless_turned_off() -> None:
    m = _measurement({"b.0.q": 1000.0, "b.0.k": 0.001})
    fused = build_plan(m, NAMES, UNITS, PlanSettings(bpw=3.2), _bpw_budget(3.2), SHAPES)
    assert len({fused.layers[n] for n in UNITS[0]}) == 1
    free = build_plan(m, NAMES, UNITS, PlanSettings(bpw=3.2, fused_groups=False), _bpw_budget(3.2), SHAPES)
    assert free.layers["b.0.q"].bits > free.layers["b.0.k"].bits


def test_pins_are_honoured_and_counted() -> None:
    settings = PlanSettings(bpw=5.0, pin={"b.*.o": "w8g128"})
    plan = build_plan(_measurement(), NAMES, UNITS, settings, _bpw_budget(5.0), SHAPES)
    assert plan.layers["b.0.o"] == plan.layers["b.1.o"] == format_from_label("w8g128")
    assert _bpw(plan) <= 5.0
    assert all(plan.layers[n].bits < 8 for n in NAMES if not n.endswith(".o"))


def test_destructive_candidates_are_excluded() -> None:
    m = _measurement(relative={("b.1.o", "w2g128"): 0.9})
    plan = build_plan(m, NAMES, UNITS, PlanSettings(bpw=2.6), _bpw_budget(2.6), SHAPES)
    assert plan.layers["b.1.o"].bits > 2
    assert "w2g128" in plan.details["b.1.o"]["excluded"]


def test_unreachable_budget_is_refused_with_the_smallest_reachable() -> None:
    with pytest.raises(OneCompError, match=r"budget \(1\.5 bits per weight\).*smallest plan needs 2\.\d+ bits per weight"):
        build_plan(_measurement(), NAMES, UNITS, PlanSettings(bpw=1.5), _bpw_budget(1.5), SHAPES)


def test_every_candidate_counts_exactly_what_it_stores() -> None:
    # storage_bytes/bits of each candidate equal the packed tensors, on a shape whose last group is short
    torch.manual_seed(0)
    from onecomp.algorithms.rtn import rtn_quantize

    n, m = 24, 200
    w = torch.randn(n, m)
    for spec in default_candidates((IntFormat,)) + [IntFormat(bits=3, group_size=64, sym=True)]:
        packed = spec.pack(rtn_quantize(w, spec.bits, spec.group_size, spec.sym))
        nbytes = sum(t.numel() * t.element_size() for t in packed.values())
        assert nbytes == spec.storage_bytes(n, m), spec.label()
        assert 0 <= nbytes * 8 - spec.storage_bits(n, m) < 8 * len(packed), spec.label()


def test_memory_budget_counts_the_unquantized_tensors() -> None:
    params = sum(a * b for a, b in SHAPES.values())
    facts = ModelFacts(params + 10_000, 2, 2, 0, SHAPES)
    budget = make_budget(PlanSettings(memory_gb=60_000 / 1e9), facts, NAMES, {})
    assert budget.fixed_bytes == fixed_bytes(facts, NAMES) > 20_000
    plan = build_plan(_measurement(), NAMES, UNITS, PlanSettings(memory_gb=60_000 / 1e9), budget, SHAPES)
    assert plan.achieved["weight_bytes"] <= 60_000


def test_plan_json_round_trip_and_hand_edits(tmp_path: Path) -> None:
    plan = build_plan(_measurement(), NAMES, UNITS, PlanSettings(bpw=3.0), _bpw_budget(3.0), SHAPES)
    path = tmp_path / "plan.json"
    plan.save(path)
    assert load_plan_layers(path, SHAPES) == plan.layers
    data = json.loads(path.read_text())
    data["layers"]["b.0.o"] = "w8g64"  # a user may write a short label
    path.write_text(json.dumps(data))
    assert load_plan_layers(path, SHAPES)["b.0.o"] == IntFormat(bits=8, group_size=64)
    data["layers"]["b.9.nope"] = "w4g128"
    data["layers"]["b.1.o"] = "w5g128"
    path.write_text(json.dumps(data))
    with pytest.raises(OneCompError, match=r"b\.1\.o: bits must be one of .*; b\.9\.nope: no such linear layer"):
        load_plan_layers(path, SHAPES)


def test_settings_take_one_budget() -> None:
    with pytest.raises(ValueError, match="give one of bpw, memory_gb, file"):
        PlanSettings(bpw=3, memory_gb=2.0)
    with pytest.raises(ValueError, match="unknown format label 'fp8'"):
        PlanSettings(bpw=3, candidates=["fp8"])
    with pytest.raises(ValueError, match="bits must be one of"):
        PlanSettings(bpw=3, pin={"*": "w5g128"})


def test_auto_memory_budget_comes_from_the_device_and_says_so() -> None:
    facts = ModelFacts(50_000, 2, 2, 1000, SHAPES)
    gpu = {"gpus": [{"name": "Big GPU", "total_memory_bytes": 24 * 2**30}], "ram_total_bytes": 8 * 2**30}
    budget = make_budget(PlanSettings(memory_gb="auto"), facts, NAMES, gpu)
    assert budget.target == int(0.9 * 24 * 2**30) - 4096 * 1000 - 2**30
    assert "Big GPU" in budget.note and "KV cache" in budget.note
    cpu = make_budget(PlanSettings(memory_gb="auto"), facts, NAMES, {"gpus": [], "ram_total_bytes": 8 * 2**30})
    assert "host memory" in cpu.note and cpu.target < budget.target


def test_fused_units_follow_the_architecture() -> None:
    from onecomp.models.adapters import adapter_for

    llama = adapter_for("llama")
    names = [f"model.layers.{b}.{n}" for b in range(2) for n in llama.linear_names()]
    units = llama.fused_units(names)
    assert [len(u) for u in units] == [3, 1, 2, 1, 3, 1, 2, 1]
    assert units[2] == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    phi3 = adapter_for("phi3")  # q/k/v and gate/up are already one linear each
    names = [f"model.layers.0.{n}" for n in phi3.linear_names()]
    assert phi3.fused_units(names) == [[n] for n in names]


def test_a_plan_entry_that_is_not_a_format_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"layers": {"b.0.o": 4, "b.1.o": ["w4g128"]}}))
    with pytest.raises(OneCompError, match=r"b\.0\.o: 4 is not a format .*; b\.1\.o: \['w4g128'\] is not a format"):
        load_plan_layers(path, SHAPES)
