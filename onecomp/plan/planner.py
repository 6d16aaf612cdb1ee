"""The planner: a format for every linear layer that minimizes the measured,
loss-weighted error under a budget of bits per weight or of bytes.

Layers that engines fuse (q/k/v; gate/up) are planned as one unit and get one
format. Candidates whose measured error would wreck a layer are excluded, pins
from the config are honoured, and the solve is exact (``solver``).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from onecomp.errors import OneCompError
from onecomp.formats import FormatSpec, format_from_json, format_from_label
from onecomp.io import atomic_write_json, read_json
from onecomp.plan.measure import Measurement
from onecomp.plan.settings import PlanSettings
from onecomp.plan.solver import Infeasible, Option, smallest_size, solve

PLAN_SCHEMA = 1
GB = 10**9  # --memory is in decimal gigabytes: the stricter reading of "fit in N GB"
_HEADER_BYTES_PER_TENSOR = 160  # safetensors header entry (name, dtype, shape, offsets) and alignment
_KV_TOKENS = 4096  # context the hardware-derived budget leaves room for
_RUNTIME_ALLOWANCE = 2**30  # activations, CUDA context / interpreter, allocator slack


@dataclass
class ModelFacts:
    """What planning needs to know of a model; saved in the measurement, so a
    re-plan never loads the model or its libraries."""

    total_params: int
    num_blocks: int
    dtype_bytes: int  # bytes per element of the tensors the plan does not quantize
    kv_bytes_per_token: int  # 16-bit KV cache per token of context
    shapes: dict[str, tuple[int, int]]  # every linear layer: (out, in)

    def to_json(self) -> dict[str, Any]:
        return {"total_params": self.total_params, "num_blocks": self.num_blocks, "dtype_bytes": self.dtype_bytes,
                "kv_bytes_per_token": self.kv_bytes_per_token, "shapes": {n: list(s) for n, s in self.shapes.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelFacts":
        return cls(d["total_params"], d["num_blocks"], d["dtype_bytes"], d["kv_bytes_per_token"], {n: tuple(s) for n, s in d["shapes"].items()})


@dataclass
class Budget:
    kind: str  # bpw | memory
    capacity: int  # bits (bpw) or bytes (memory) available to the quantized layers
    target: float  # bits per weight or bytes of the whole model
    fixed_bytes: int = 0  # unquantized tensors + header allowance (memory budgets)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "capacity": self.capacity, "fixed_bytes": self.fixed_bytes, "note": self.note}


def fixed_bytes(facts: ModelFacts, names: list[str]) -> int:
    """Bytes of everything the plan does not quantize (embeddings, head, norms,
    biases), stored in the model's dtype, plus the safetensors header."""
    qparams = sum(facts.shapes[n][0] * facts.shapes[n][1] for n in names)
    ntensors = 4 * len(names) + 4 * facts.num_blocks + 16
    return (facts.total_params - qparams) * facts.dtype_bytes + ntensors * _HEADER_BYTES_PER_TENSOR + 4096


def hardware_memory_bytes(hardware: dict[str, Any], kv_bytes_per_token: int) -> tuple[int, str]:
    """Weight bytes that leave room for a KV cache of 4096 tokens and the runtime on
    this machine's inference device (the first GPU, else host memory)."""
    if hardware.get("gpus"):
        have, where = int(hardware["gpus"][0]["total_memory_bytes"]), f"GPU {hardware['gpus'][0]['name']}"
    else:
        have, where = int(hardware["ram_total_bytes"]), "host memory"
    kv = kv_bytes_per_token * _KV_TOKENS
    weights = int(0.9 * have) - kv - _RUNTIME_ALLOWANCE
    note = (
        f"derived from the hardware: 90% of {have / GB:.1f} GB {where}, minus a {_KV_TOKENS}-token KV cache "
        f"({kv / GB:.2f} GB) and {_RUNTIME_ALLOWANCE / GB:.2f} GB for activations and runtime"
    )
    return weights, note


def make_budget(settings: PlanSettings, facts: ModelFacts, names: list[str], hardware: dict[str, Any]) -> Budget:
    params = sum(facts.shapes[n][0] * facts.shapes[n][1] for n in names)
    if settings.bpw is not None:
        return Budget("bpw", int(math.floor(settings.bpw * params)), settings.bpw)
    fixed = fixed_bytes(facts, names)
    if settings.memory_gb == "auto":
        total, note = hardware_memory_bytes(hardware, facts.kv_bytes_per_token)
    elif settings.memory_gb is not None:
        total, note = int(settings.memory_gb * GB), ""
    else:
        raise OneCompError("no budget: give --bpw or --memory (or --memory auto to fit this machine)")
    return Budget("memory", total - fixed, float(total), fixed, note)


@dataclass
class Unit:
    names: list[str]
    labels: list[str]  # options the solver may choose, after exclusions and pins
    excluded: list[str] = field(default_factory=list)


@dataclass
class Plan:
    layers: dict[str, FormatSpec]
    budget: dict[str, Any]
    achieved: dict[str, Any]
    predicted: dict[str, Any]
    details: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    fused_groups: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "budget": self.budget,
            "achieved": self.achieved,
            "predicted": self.predicted,
            "fused_groups": self.fused_groups,
            "warnings": self.warnings,
            "layers": {n: f.to_json() for n, f in self.layers.items()},
            "details": self.details,
        }

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())


def load_plan_layers(path: Path, known: dict[str, tuple[int, int]]) -> dict[str, FormatSpec]:
    """The per-layer formats of a plan.json (possibly edited by hand), checked
    against the model's linear layers."""
    data = read_json(path, "plan")
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise OneCompError(f"plan {path} has no 'layers' mapping of layer name -> format")
    out: dict[str, FormatSpec] = {}
    problems = []
    for name, spec in layers.items():
        if name not in known:
            problems.append(f"{name}: no such linear layer in the model")
            continue
        if not isinstance(spec, (str, dict)):
            problems.append(f"{name}: {spec!r} is not a format (give a label like w4g128 or a mapping with 'format')")
            continue
        try:
            out[name] = format_from_label(spec) if isinstance(spec, str) else format_from_json(spec)
        except ValidationError as exc:
            problems.append(f"{name}: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise OneCompError(f"plan {path}: {shown}")
    return out


def plan_size(layers: dict[str, FormatSpec], shapes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(storage bits, stored bytes) of the quantized layers."""
    bits = sum(f.storage_bits(*shapes[n]) for n, f in layers.items())
    nbytes = sum(f.storage_bytes(*shapes[n]) for n, f in layers.items())
    return bits, nbytes


def _units(measurement: Measurement, names: list[str], fused: list[list[str]], settings: PlanSettings, labels: list[str]) -> list[Unit]:
    missing = [label for label in labels if label not in measurement.candidates]
    if missing:
        raise OneCompError(f"the measurement has no data for {', '.join(missing)}; measure again with these candidates")
    units = []
    for members in fused:
        pins = {label for pattern, label in settings.pin.items() for n in members if fnmatch.fnmatchcase(n, pattern)}
        if len(pins) > 1:
            raise OneCompError(f"conflicting pins for the fused layers {', '.join(members)}: {', '.join(sorted(pins))}")
        if pins:
            units.append(Unit(members, sorted(pins)))
            continue
        rel = {label: max(measurement.layers[n]["errors"][label]["relative"] for n in members) for label in labels}
        allowed = [label for label in labels if rel[label] <= settings.max_relative_error]
        excluded = [label for label in labels if label not in allowed]
        if not allowed:  # nothing is safe: keep the most faithful candidate
            allowed = [min(labels, key=lambda label: rel[label])]
        units.append(Unit(members, allowed, excluded))
    return units


def build_plan(
    measurement: Measurement,
    names: list[str],
    fused: list[list[str]],
    settings: PlanSettings,
    budget: Budget,
    shapes: dict[str, tuple[int, int]],
) -> Plan:
    """Solve for the plan; ``fused`` lists the units (each a list of layer names)."""
    if not settings.fused_groups:
        fused = [[n] for units in fused for n in units]
    formats = measurement.formats()
    labels = settings.candidate_labels(list(formats))
    units = _units(measurement, names, fused, settings, labels)
    measure = (lambda f, s: f.storage_bits(*s)) if budget.kind == "bpw" else (lambda f, s: f.storage_bytes(*s))

    def cost(label: str, members: list[str]) -> float:
        return sum(measurement.layers[n]["errors"][label]["weighted"] for n in members)

    options = [[Option(sum(measure(formats[label], shapes[n]) for n in u.names), cost(label, u.names)) for label in u.labels] for u in units]
    params = sum(shapes[n][0] * shapes[n][1] for n in names)
    try:
        solution = solve(options, budget.capacity)
    except Infeasible:
        least = smallest_size(options)
        if budget.kind == "bpw":
            reach = f"{least / params:.3f} bits per weight"
            asked = f"{budget.target:g} bits per weight"
        else:
            reach = f"{(least + budget.fixed_bytes) / GB:.3f} GB"
            asked = f"{budget.target / GB:.3f} GB"
        raise OneCompError(
            f"the budget ({asked}) is below what the allowed candidates can reach: the smallest plan needs {reach}; "
            "raise the budget, allow smaller candidates, or raise plan.max_relative_error"
        ) from None
    layers: dict[str, FormatSpec] = {}
    details: dict[str, dict[str, Any]] = {}
    for unit, k in zip(units, solution.choice):
        label = unit.labels[k]
        for n in unit.names:
            layers[n] = formats[label]
            err = measurement.layers[n]["errors"][label]
            details[n] = {"format": label, "bpw": formats[label].bits_per_weight(*shapes[n]), "weighted": err["weighted"], "relative": err["relative"]}
            if unit.excluded:
                details[n]["excluded"] = unit.excluded
    layers = {n: layers[n] for n in names}
    bits, nbytes = plan_size(layers, shapes)
    delta = sum(d["weighted"] for d in details.values())
    warnings = []
    ratio = math.exp(min(delta, 50.0))
    if ratio > 2.0:
        warnings.append(f"predicted perplexity is {ratio:.2f}x the original's: expect a clearly damaged model at this budget")
    achieved = {"bits_per_weight": bits / params, "storage_bits": bits, "layer_bytes": nbytes}
    if budget.kind == "memory":
        achieved["weight_bytes"] = nbytes + budget.fixed_bytes
    return Plan(
        layers=layers,
        budget=budget.to_json(),
        achieved=achieved,
        predicted={"delta_nll": delta, "ppl_ratio": ratio, "note": "second-order estimate from measured layer errors (layers treated as independent)"},
        details={n: details[n] for n in names},
        warnings=warnings,
        fused_groups=settings.fused_groups,
    )


def plan_summary_line(plan: Plan) -> str:
    a, b = plan.achieved, plan.budget
    if b["kind"] == "bpw":
        target = f"budget {b['target']:g} bits per weight"
    else:
        target = f"budget {b['target'] / GB:.3f} GB of weights"
    got = f"planned {a['bits_per_weight']:.3f} bits per weight"
    if "weight_bytes" in a:
        got += f", {a['weight_bytes'] / GB:.3f} GB of weights"
    return f"plan: {target}; {got}; predicted perplexity x{plan.predicted['ppl_ratio']:.3f} of the original"
