"""What results.json says about the job itself and about how its best pivot was chosen,
so a report read months later names the model, method, data and command behind it."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onecomp import __version__
from onecomp.config import JobConfig
from onecomp.describe import method_label

SELECTION_TEXT = "builtin-selection"
SELECTION_RULE = (
    "lowest perplexity on the built-in selection text (held-out leads never calibrated on, never reported, "
    "not asked about by the built-in tasks); a stage's pivot is kept as the best only if it is not worse than the best before it"
)


def command_line(argv: list[str] | None = None) -> str:
    """The command as the user would type it again: ``onecomp ...`` however the CLI was started."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0]).name
    if program in ("onecomp", "cli.py", "__main__.py"):
        program = "onecomp"
    return shlex.join([program, *argv[1:]])


def _format_label(budget: dict[str, Any]) -> str:
    kind = budget.get("kind")
    if kind == "uniform":
        from onecomp.formats.base import format_from_json

        return format_from_json(budget["format"]).label()
    if kind == "from_pivot":
        return f"the formats of the input pivot {budget.get('pivot')}"
    if kind == "file":
        return f"per-layer formats from the plan file {budget.get('path')}"
    if kind == "bpw":
        return f"mixed formats, {budget.get('target'):g} bits per weight"
    return f"mixed formats, {budget.get('target', 0) / 1e9:.3f} GB of weights"


def job_record(config: JobConfig, model_spec: str, budget: dict[str, Any], calibrated: bool) -> dict[str, Any]:
    """The job's identity for the report: model, method and format, stages, calibration, command, date, version."""
    calib = config.calib
    return {
        "model": model_spec,
        "method": method_label(config),
        "format": _format_label(budget),
        "stages": list(config.stages),
        "calibration": {"source": calib.source, "nsamples": calib.nsamples, "seqlen": calib.seqlen, "seed": calib.seed} if calibrated else None,
        "device": config.device,
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
    }


def selection_record(values: dict[str, float], best: str | None, protocol: dict[str, Any] | None, candidates: int = 2) -> dict[str, Any]:
    """How the best pivot was chosen: the text, the metric, each candidate's value (no protocol: nothing was scored)."""
    if protocol is None:
        rule = "one pivot: nothing to choose" if candidates < 2 else "no evaluation asked for: each stage's pivot is kept as the best"
        return {"text": None, "metric": None, "values": {}, "chosen": best, "rule": rule}
    return {"text": SELECTION_TEXT, "metric": "ppl", "values": values, "chosen": best, "rule": SELECTION_RULE, "protocol": protocol}
