"""What every stage runner receives: the job's settings, its directory, the
resolved model, the calibration tokens, and how to record durable progress and
warnings."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onecomp.config import JobConfig
from onecomp.errors import OneCompError
from onecomp.formats.base import FormatSpec
from onecomp.inspect import ModelProfile
from onecomp.io import atomic_write_json
from onecomp.models.adapters import ArchAdapter
from onecomp.models.resolve import ResolvedModel
from onecomp.reporter import Reporter

log = logging.getLogger("onecomp")


def read_state(out: Path) -> dict[str, Any]:
    """The job's state.json ({} before it exists); a damaged one ends in one line."""
    path = out / "state.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:  # empty, truncated or not text
        state = None
    if not isinstance(state, dict):
        raise OneCompError(
            f"the job's state {path} is damaged (not a JSON mapping), so the job cannot be resumed; "
            f"keep what you need from {out / 'pivots'}, then start over with --overwrite"
        )
    return state


def write_state(out: Path, **updates: Any) -> dict[str, Any]:
    """Merge ``updates`` into state.json (one atomic replace)."""
    current = read_state(out)
    current.update(updates)
    atomic_write_json(out / "state.json", current)
    return current


@dataclass(frozen=True)
class JobWarning:
    """Something that made the result worse than the settings asked for (a raised
    damping, a layer refinement could not train, ...): never silent, and under
    ``strict`` a failure."""

    stage: str
    message: str
    layer: str | None = None

    def to_json(self) -> dict[str, str]:
        return {"stage": self.stage, **({"layer": self.layer} if self.layer else {}), "message": self.message}

    def line(self) -> str:
        return f"{self.stage}{f' {self.layer}' if self.layer else ''}: {self.message}"


class StrictError(OneCompError):
    """A warning under ``strict``: the job stops; what it wrote is kept."""


def record_warning(out: Path, warning: JobWarning, strict: bool, reporter: Reporter) -> None:
    """Keep ``warning`` in state.json (once: a resumed stage may meet it again),
    log and show it; under ``strict``, stop the job with it (the error shows it)."""
    known = read_state(out).get("warnings", [])
    if warning.to_json() not in known:
        write_state(out, warnings=[*known, warning.to_json()])
        log.warning("%s", warning.line())
        if not strict:
            reporter.info(f"warning: {warning.line()}")
    if strict:
        raise StrictError(
            f"--strict: {warning.line()}. What the job wrote is kept; to accept this, resume it without --strict: onecomp resume {out} --no-strict"
        )


def job_warnings(out: Path) -> list[dict[str, str]]:
    """Every warning the job in ``out`` recorded, in order."""
    return list(read_state(out).get("warnings", []))


@dataclass
class StageContext:
    config: JobConfig
    out: Path
    reporter: Reporter
    device: torch.device
    resolved: ResolvedModel
    profile: ModelProfile
    adapter: ArchAdapter
    plan: dict[str, FormatSpec]
    input_ids: torch.Tensor | None
    compute_dtype: torch.dtype
    storage_dtype: torch.dtype
    meta: dict[str, Any] = field(default_factory=dict)  # source and calibration, written into every pivot

    def work_dir(self, stage: str) -> Path:
        return self.out / "work" / stage

    def progress(self, stage: str) -> dict[str, Any]:
        return read_state(self.out).get("progress", {}).get(stage, {})

    def set_progress(self, stage: str, **values: Any) -> None:
        progress = read_state(self.out).get("progress", {})
        progress[stage] = {**progress.get(stage, {}), **values}
        write_state(self.out, progress=progress)

    def warn(self, stage: str, message: str, layer: str | None = None) -> None:
        """Record a warning of ``stage`` (see :func:`record_warning`)."""
        record_warning(self.out, JobWarning(stage, message, layer), self.config.strict, self.reporter)


@dataclass
class StageOutcome:
    bits_per_weight: float
    seconds: float
    peak_rss_bytes: int
    info: dict[str, Any] = field(default_factory=dict)
