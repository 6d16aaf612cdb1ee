"""`onecomp batch --dry-run`: what each job would do, its peak memory and a rough time, without running it.

Models are resolved and profiled from their config alone (a GGUF file is
converted once into the cache, as `onecomp inspect` does); no weight is loaded
and no job directory is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from onecomp.batch.expand import STAGE_ABBREV
from onecomp.batch.runner import job_state
from onecomp.errors import OneCompError
from onecomp.timing import GPU_SPEEDUP, TimeEstimate, estimate_job_seconds, format_seconds

if TYPE_CHECKING:
    from rich.table import Table

    from onecomp.batch.expand import Batch, BatchJob
    from onecomp.config import JobConfig
    from onecomp.estimate import MemoryEstimate
    from onecomp.inspect import ModelProfile


@dataclass
class DryRunRow:
    job: BatchJob
    state: str  # complete, partial or new (on disk)
    memory: MemoryEstimate | None = None
    time: TimeEstimate | None = None
    problem: str | None = None


def _on_gpu(config: JobConfig) -> bool:
    import torch

    return config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())


def estimate_memory(config: JobConfig, profile: ModelProfile, on_gpu: bool) -> MemoryEstimate:
    """The executor's own memory estimate for ``config``, with the plan as far as
    it is known before the job runs (a uniform format; a mixed-precision job
    counts its pivots at 8 bits, an upper bound)."""
    from onecomp.preflight import job_memory_estimate

    mixed = config.plan.mixed
    plan = None
    if not mixed and config.plan.file is None and config.from_pivot is None:
        fmt = config.quant.format()
        plan = {li.name: fmt for li in profile.linears}
    return job_memory_estimate(config, profile, on_gpu, plan, mixed)


def _profile(spec: str) -> ModelProfile:
    from onecomp.inspect import profile_model
    from onecomp.models.resolve import resolve_model

    return profile_model(resolve_model(spec).path)


def dry_run_rows(jobs: list[BatchJob]) -> list[DryRunRow]:
    """One row per job; a model that cannot be resolved or profiled is reported in its rows, not raised."""
    profiles: dict[str, ModelProfile | str] = {}
    scored: set[str] = set()  # models whose original an earlier job already evaluates
    rows = []
    for job in jobs:
        cfg = job.config
        row = DryRunRow(job, job_state(job.dir))
        if cfg.model not in profiles:
            try:
                profiles[cfg.model] = _profile(cfg.model)
            except (OneCompError, OSError, ValueError) as exc:
                profiles[cfg.model] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        got = profiles[cfg.model]
        if isinstance(got, str):
            row.problem = got
        else:
            profile = got
            try:
                row.memory = estimate_memory(cfg, profile, _on_gpu(cfg))
            except (OneCompError, ValueError) as exc:
                row.problem = str(exc)
            row.time = estimate_job_seconds(cfg, profile.total_params, evaluate_original=cfg.model not in scored)
            scored.add(cfg.model)
        rows.append(row)
    return rows


def dry_run_table(batch: Batch, rows: list[DryRunRow]) -> Table:
    from rich.table import Table
    from rich.text import Text  # plain cells: model paths are not markup

    from onecomp.ui import gib

    models = sorted({r.job.config.model for r in rows})
    one_model = len(models) == 1
    gpu = any(_on_gpu(r.job.config) for r in rows)
    where = f" of {models[0]}" if one_model else ""
    table = Table(
        title=Text(f"onecomp batch (dry run): {len(rows)} jobs{where} in {batch.output}; times are a rough estimate"),
        caption="time: reference timings of a 2-core CPU scaled by parameters x tokens (docs/batch.md)"
        + (f"; GPU: CPU / {GPU_SPEEDUP:g}, very rough" if gpu else ""),
    )
    cols = ["job", *([] if one_model else ["model"]), "method", "format", "stages", "state", "peak mem", "GPU time" if gpu else "CPU time"]
    for col in cols:  # names and paths fold; the short columns keep their width, so a narrow terminal shows them all
        table.add_column(col, no_wrap=col not in ("job", "model"), overflow="fold", min_width=10 if col == "job" else None, justify="right" if col.endswith(("time", "mem")) else "left")
    total = 0.0
    for r in rows:
        cfg = r.job.config
        if r.memory is None:
            mem = "?"
        else:
            mem = gib(r.memory.host_peak_bytes) + (f" + {gib(r.memory.device_peak_bytes)} GPU" if r.memory.device_peak_bytes else "")
        seconds = (r.time.gpu_seconds if gpu else r.time.cpu_seconds) if r.time else None
        if seconds is not None and r.state != "complete":
            total += seconds
        stages = "+".join(STAGE_ABBREV[s] for s in cfg.stages)
        cells = [r.job.name, *([] if one_model else [cfg.model]), r.job.method, r.job.budget, stages, r.state, mem]
        table.add_row(*(Text(c) for c in cells), Text(format_seconds(seconds) if seconds is not None else "?"))
    table.add_section()
    table.add_row("total to run", *[""] * (len(cols) - 2), format_seconds(total))
    return table
