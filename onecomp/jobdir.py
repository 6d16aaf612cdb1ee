"""What a job directory holds, so that --overwrite removes only a verified
onecomp job's own files and never anything a user put beside them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Every top-level entry a job writes (stages, plan, evaluation, logs, work files).
JOB_ENTRIES = ("job.yaml", "state.json", "inspect.json", "plan.json", "measurement.json", "pivots", "eval", "logs", "work")
# Keys every state.json a job writes has from its start.
_STATE_KEYS = {"version", "job", "stages"}


def _is_job_entry(name: str) -> bool:
    """One of :data:`JOB_ENTRIES`, or an atomic write's temporary sibling of one (``.state.json.x1y2.tmp``)."""
    return name in JOB_ENTRIES or any(name.startswith(f".{entry}.") for entry in JOB_ENTRIES)


def _job_yaml_is_ours(path: Path) -> bool:
    from pydantic import ValidationError

    from onecomp.config import JobConfig, load_job_yaml
    from onecomp.errors import OneCompError

    try:
        JobConfig.model_validate(load_job_yaml(path))
    except (OneCompError, ValidationError):
        return False
    return True


def _state_is_ours(path: Path) -> bool:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and _STATE_KEYS <= set(state)


def is_onecomp_job(out: Path) -> bool:
    """Whether ``out`` verifiably holds a onecomp job: its job.yaml is a valid job
    configuration, or its state.json has the keys every job's state has."""
    job, state = Path(out) / "job.yaml", Path(out) / "state.json"
    return (job.is_file() and _job_yaml_is_ours(job)) or (state.is_file() and _state_is_ours(state))


def foreign_entries(out: Path) -> list[str]:
    """Names in ``out`` that no job writes, sorted."""
    return sorted(p.name for p in Path(out).iterdir() if not _is_job_entry(p.name))


def remove_job_entries(out: Path) -> None:
    """Remove the entries a job writes from ``out``; anything else stays."""
    for path in Path(out).iterdir():
        if not _is_job_entry(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
