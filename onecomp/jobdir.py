"""What a job directory holds, so that --overwrite removes only a verified
onecomp job's own files and never anything a user put beside them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Where --overwrite keeps the job it replaces until the new job's preflight has passed.
REPLACED = ".onecomp-replaced"
# Every top-level entry a job writes (stages, plan, evaluation, logs, work files).
JOB_ENTRIES = ("job.yaml", "state.json", "inspect.json", "plan.json", "measurement.json", "pivots", "eval", "logs", "work", REPLACED)
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def set_aside_job(out: Path) -> None:
    """Move the job in ``out`` into ``out/.onecomp-replaced`` (renames only), so the
    job that replaces it can still be refused without anything lost. A job set
    aside by an earlier, interrupted --overwrite is the one the user replaced: it goes."""
    aside = Path(out) / REPLACED
    if aside.exists():
        _remove(aside)
    entries = [p for p in Path(out).iterdir() if _is_job_entry(p.name)]
    if not entries:
        return
    aside.mkdir()
    for path in entries:
        path.rename(aside / path.name)


def discard_replaced(out: Path) -> None:
    """The new job's preflight passed: the job it replaces is removed for good."""
    aside = Path(out) / REPLACED
    if aside.is_dir():
        shutil.rmtree(aside)


def restore_replaced(out: Path) -> None:
    """The new job stopped before its preflight passed: put the replaced job back
    in place of the new job's first files (job.yaml, state.json, logs)."""
    aside = Path(out) / REPLACED
    if not aside.is_dir():
        return
    for path in Path(out).iterdir():
        if path.name != REPLACED and _is_job_entry(path.name):
            _remove(path)
    for path in aside.iterdir():
        path.rename(Path(out) / path.name)
    aside.rmdir()
