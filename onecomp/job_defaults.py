"""A job from what the user gave: the defaults that ``onecomp compress`` and
``onecomp.compress`` fill alike, kept in one place so the two never drift apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onecomp.config import JobConfig, build_job_config
from onecomp.errors import OneCompError


def complete_job(data: dict[str, Any], where: str = "") -> JobConfig:
    """Validate job settings (job.yaml's keys), filling what only the job's own
    inputs decide: the model of a refined pivot, its stages, and the output directory."""
    data = dict(data)
    pivot = data.get("from_pivot")
    if data.get("model") is None:
        if pivot is None:
            raise OneCompError("missing the model to compress (a hub id, local directory, .gguf file or alias)")
        data["model"] = pivot_source(Path(pivot))
    if pivot and "stages" not in data:
        data["stages"] = ["blockwise", "global"]
    if "output" not in data and pivot:
        data["output"] = f"onecomp-out/{Path(pivot).resolve().parent.parent.name}-refined"
    if "output" not in data:
        data["output"] = default_output(str(data["model"]), _section(data, "quant"), _section(data, "plan"))
    return build_job_config(data, where=where)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A section of the settings, or {} if it is not a mapping (validation then says so)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def default_output(model: str, quant: dict[str, Any], plan: dict[str, Any] | None = None) -> str:
    """onecomp-out/<model>-<method>-<format>: jobs on one model with different settings do not collide."""
    name = Path(model.rstrip("/")).name.removesuffix(".gguf").replace("/", "-")
    plan = plan or {}
    if plan.get("bpw") is not None:
        fmt = f"mixed{plan['bpw']:g}bpw"
    elif plan.get("memory_gb") is not None:
        fmt = f"mixed{plan['memory_gb']}GB" if plan["memory_gb"] != "auto" else "mixed-auto"
    elif plan.get("file") is not None:
        fmt = "plan"
    else:
        fmt = _uniform_label(quant)
    return f"onecomp-out/{name}-{quant.get('method', 'gptq')}-{fmt}"


def _uniform_label(quant: dict[str, Any]) -> str:
    """The uniform format's label (w4g128, dbf2, ...), or "custom" for settings the job validation will reject."""
    from pydantic import ValidationError

    from onecomp.config import QuantConfig

    try:
        return QuantConfig.model_validate(quant).format().label()
    except (ValidationError, ValueError):
        return "custom"


def pivot_source(pivot: Path) -> str:
    """The model a pivot was made from, as its onecomp.json names it."""
    from onecomp.pipeline import read_pivot_meta

    spec = read_pivot_meta(pivot).get("source", {}).get("spec")
    if not spec:
        raise OneCompError(f"{pivot} does not name the model it was made from; pass it as MODEL")
    return str(spec)
