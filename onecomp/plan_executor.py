"""The executor of `onecomp plan`, beside the main one (``pipeline``): resolve
the model, measure its layers (or reuse a measurement), solve the plan and
write it, without quantizing anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from onecomp.errors import OneCompError
from onecomp.plan.measure import Measurement
from onecomp.plan.planner import ModelFacts
from onecomp.plan.run import check_measurement, check_reachable, model_facts, obtain_measurement
from onecomp.reporter import Reporter

if TYPE_CHECKING:
    from onecomp.config import JobConfig
    from onecomp.plan.planner import Plan


def plan_job(config: "JobConfig", out: Path, reporter: Reporter, force: bool = False) -> tuple["Plan", dict[str, tuple[int, int]]]:
    """`onecomp plan`: measure (or reuse a measurement), solve, and write
    ``out/plan.json`` (and ``out/measurement.json`` when it measured). Re-planning
    from a measurement reads only JSON: the model's facts are in the measurement."""
    from onecomp.hardware import detect_hardware
    from onecomp.methods import get_method
    from onecomp.models.adapters import ADAPTERS, adapter_for
    from onecomp.models.resolve import resolve_model
    from onecomp.plan.planner import build_plan, make_budget

    resolved = resolve_model(config.model, reporter)
    method, options = get_method(config.quant.method), config.quant.method_options()
    hardware = detect_hardware().to_dict()
    if config.plan.measurement is not None:
        measurement = Measurement.load(Path(config.plan.measurement))
        check_measurement(measurement, resolved.path, force)
        if "model" not in measurement.info:
            raise OneCompError(f"{config.plan.measurement} does not describe its model (made by an older version); measure again")
        facts = ModelFacts.from_json(measurement.info["model"])
        adapter = ADAPTERS[measurement.info["model"]["model_type"]]
        names = list(measurement.layers)
        budget = make_budget(config.plan, facts, names, hardware)
        check_reachable(config.plan, budget, facts, names, method, options)
    else:
        import transformers

        from onecomp.data import build_calibration
        from onecomp.inspect import profile_model
        from onecomp.models.weights import check_weights
        from onecomp.devices import resolve_compute_dtype, resolve_device

        device = resolve_device(config.device)
        config = config.for_device(str(device))
        profile = profile_model(resolved.path)
        adapter = adapter_for(profile.model_type)
        check_weights(resolved.path)  # before the measurement's work directory is made
        facts = model_facts(profile, json.loads((resolved.path / "config.json").read_text()))
        names = list(facts.shapes)
        budget = make_budget(config.plan, facts, names, hardware)
        check_reachable(config.plan, budget, facts, names, method, options)
        tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path)
        assert config.calib.seqlen is not None
        calib = build_calibration(tokenizer, config.calib.source, config.calib.nsamples, config.calib.seqlen, config.calib.seed)
        compute_dtype = resolve_compute_dtype(config.calib.dtype, device, hardware)
        out.mkdir(parents=True, exist_ok=True)
        measurement = obtain_measurement(
            config.plan, method, options, out, resolved.path, profile, adapter, names, calib.input_ids, calib.record["sha256"],
            config.calib.batch_size, device, compute_dtype, reporter, force, facts,
        )
    plan = build_plan(measurement, names, adapter.fused_units(names), config.plan, budget, facts.shapes)
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    return plan, facts.shapes
