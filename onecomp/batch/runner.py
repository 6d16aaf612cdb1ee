"""Run a batch: each job in its own directory through the ordinary executor.

The executor's resume makes re-running a batch cheap and safe: a complete job
returns at once (skipped), an interrupted one continues from its last durable
state, a new one starts. One failing job is recorded and the others still run;
Ctrl-C stops the batch and keeps every file. ``OUTPUT/batch.json`` says where
each job stands after every job.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape

from onecomp.batch.expand import Batch, BatchJob
from onecomp.errors import OneCompError
from onecomp.io import atomic_write_json, atomic_write_text
from onecomp.reporter import NullReporter, Reporter

BATCH_FILE = "batch.json"
LOG_DIR = "batch-logs"


class JobsFailed(OneCompError):
    """Some jobs of a batch failed (the others ran): exit status 1, not the 2 of bad input."""

    exit_code = 1


@dataclass
class JobRecord:
    """Where one job stands: done, failed, pending or skipped (complete before this run)."""

    name: str
    status: str = "pending"
    seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    resumed: bool = False


@dataclass
class BatchOutcome:
    batch: Batch
    records: dict[str, JobRecord]
    ran: list[str] = field(default_factory=list)  # names of the jobs this run ran
    rows: list[Any] = field(default_factory=list)  # CompareRow
    reports: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[JobRecord]:
        """The jobs of this run that failed (earlier failures of jobs not run now are only in batch.json)."""
        return [self.records[n] for n in self.ran if self.records[n].status == "failed"]


def job_state(job_dir: Path) -> str:
    """complete, partial (resumable) or new, from the job directory alone."""
    state_file = Path(job_dir) / "state.json"
    if not state_file.is_file():
        return "new"
    try:
        return "complete" if json.loads(state_file.read_text()).get("complete") else "partial"
    except ValueError:
        return "partial"


def _previous(output: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((output / BATCH_FILE).read_text())
        return {j["name"]: j for j in data.get("jobs", []) if isinstance(j, dict) and "name" in j}
    except (OSError, ValueError, TypeError):
        return {}


def initial_records(batch: Batch) -> dict[str, JobRecord]:
    """Each job's record from the last batch.json, corrected by what is on disk now."""
    previous = _previous(batch.output)
    fields = set(JobRecord.__dataclass_fields__)
    records = {}
    for job in batch.jobs:
        rec = JobRecord(**{**{k: v for k, v in previous.get(job.name, {}).items() if k in fields}, "name": job.name})
        complete = job_state(job.dir) == "complete"
        if complete and rec.status == "pending":  # a failure stays recorded: the results on disk may predate it
            rec.status, rec.error = "done", None
        elif not complete and rec.status in ("done", "skipped"):
            rec.status = "pending"
        records[job.name] = rec
    return records


def write_batch_file(batch: Batch, records: dict[str, JobRecord]) -> None:
    jobs = []
    for job in batch.jobs:
        rec = asdict(records[job.name])
        rec.update(dir=str(job.dir), where=job.where, model=job.config.model, method=job.method, format=job.budget, stages=list(job.config.stages))
        jobs.append(rec)
    atomic_write_json(batch.output / BATCH_FILE, {
        "schema": 1,
        "source": str(batch.source) if batch.source else None,
        "output": str(batch.output),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": jobs,
    })


def _clear_stub(job_dir: Path) -> bool:
    """Remove a job directory the executor made but had not started (only logs/ in it), so it can start
    again; returns whether job.yaml exists without state.json (started, nothing durable yet: replace it)."""
    if not job_dir.is_dir() or (job_dir / "state.json").is_file():
        return False
    if (job_dir / "job.yaml").is_file():
        return True
    entries = list(job_dir.iterdir())
    logs = job_dir / "logs"
    if entries and entries == [logs] and logs.is_dir() and all(p.name == "onecomp.log" for p in logs.iterdir()):
        shutil.rmtree(job_dir)
    return False


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, OneCompError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_one(job: BatchJob, rec: JobRecord, batch: Batch, reporter: Reporter) -> None:
    from onecomp.pipeline import compress

    state = job_state(job.dir)
    replace = _clear_stub(job.dir)
    start = time.perf_counter()
    try:
        compress(job.config, reporter, overwrite=replace, resume=True)
    except KeyboardInterrupt:
        rec.status, rec.error, rec.seconds = "pending", "interrupted", time.perf_counter() - start
        raise
    except Exception as exc:  # one job's failure must not stop the others
        rec.status, rec.error = "failed", _one_line(exc)
        log = batch.output / LOG_DIR / f"{job.name}.txt"
        atomic_write_text(log, traceback.format_exc())
        rec.traceback = str(log)
        reporter.info(escape(f"{job.name} failed: {rec.error} (traceback: {log})"))
    else:
        rec.status = "skipped" if state == "complete" else "done"
        rec.resumed, rec.error, rec.traceback = state == "partial", None, None
    rec.seconds = time.perf_counter() - start


def run_batch(batch: Batch, jobs: list[BatchJob] | None = None, reporter: Reporter | None = None) -> BatchOutcome:
    """Run ``jobs`` (default: all of the batch) in order, then write the comparison of every finished job."""
    from onecomp.batch.compare import comparison_rows, write_reports

    reporter = reporter or NullReporter()
    selected = batch.jobs if jobs is None else jobs
    batch.output.mkdir(parents=True, exist_ok=True)
    records = initial_records(batch)
    write_batch_file(batch, records)
    for i, job in enumerate(selected, 1):
        rec = records[job.name]
        state = job_state(job.dir)
        verb = {"complete": "already complete", "partial": "resuming", "new": "starting"}[state]
        reporter.info(f"batch job {i}/{len(selected)}: {job.name} ({verb})")
        try:
            _run_one(job, rec, batch, reporter)
        finally:
            write_batch_file(batch, records)
    rows = comparison_rows(batch, records)
    return BatchOutcome(batch, records, [j.name for j in selected], rows, write_reports(batch, rows))
