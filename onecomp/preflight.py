"""The executor's memory estimate for one job: the phases it will run, each
estimated by the code that runs it, composed in one place, so a batch dry run
and `onecomp inspect` show exactly what the job itself checks before any work."""

from __future__ import annotations

from onecomp.config import JobConfig
from onecomp.estimate import JobShape, MemoryEstimate, Peak
from onecomp.eval.suite import estimate_pivot, estimate_reference
from onecomp.formats.base import FormatSpec
from onecomp.hardware import rss_bytes
from onecomp.inspect import ModelProfile
from onecomp.methods import get_method, weights_rows
from onecomp.plan.run import estimate_measurement
from onecomp.stages.registry import STAGES

# What a job adds to its process beyond its models, streams and evaluation
# buffers: the tokenizer, the built-in texts and calibration tokens, torch's
# thread pools and kernel caches after the first forwards, and heap pages of
# small tensors the allocator keeps. Measured on a tiny llama with SmolLM2's
# tokenizer (/proc/self/status around each phase, 2026-12-07): 0.036 GiB from
# the job's start to its first evaluation, 0.04 more by the end of that
# evaluation, 0.06 across the stage and the pivot's load; 0.14 GiB in all.
JOB_RUNTIME = 160 * 2**20
# lm-eval and what it imports (datasets, pandas, evaluate...), loaded when the
# first task is scored, plus the task data: 120 MiB measured for the imports
# after `import onecomp.pipeline`, 0.095 GiB of growth across a tiny job's two
# built-in tasks. Scoring the original's tasks streamed (a second lm-eval
# model, its requests scored in one pass) left a quality-gate job 4 MB above
# the estimate at 128 MiB (2026-12-08), hence 144.
TASKS_RUNTIME = 144 * 2**20

REFERENCE = "evaluate the original"
MEASURE = "measure sensitivity"
PIVOTS = "evaluate pivots"


def _weights_rows(config: JobConfig, plan: dict[str, FormatSpec] | None) -> bool:
    """Whether the layer-wise stage runs a gradient pass for row weights (an
    unplanned mixed job: if its own method would)."""
    if "layerwise" not in config.stages:
        return False
    method, options = get_method(config.quant.method), config.quant.method_options()
    if plan is None:
        return method.row_weight_exponent(options) > 0
    return any(weights_rows(f, method, options) for f in set(plan.values()))


def phase_peaks(shape: JobShape) -> dict[str, Peak]:
    """Each phase the job runs, in order, with its peaks beyond the process's own memory."""
    config = shape.config
    phases: dict[str, Peak] = {}
    if shape.evaluates:
        phases[REFERENCE] = estimate_reference(shape)
    if shape.mixed and config.plan.measurement is None:
        phases[MEASURE] = estimate_measurement(shape)
    for name in config.stages:
        phases[name] = STAGES[name].estimate(shape)
    if shape.evaluates:
        phases[PIVOTS] = estimate_pivot(shape)
    return phases


def job_memory_estimate(
    config: JobConfig,
    profile: ModelProfile,
    on_gpu: bool,
    plan: dict[str, FormatSpec] | None,
    mixed: bool,
    baseline_bytes: int | None = None,
) -> MemoryEstimate:
    """``plan``: the layers' formats where known before planning (None: a
    mixed-precision job that has not solved its plan yet; its pivots are counted
    at 8 bits and its training views as integer ones). ``mixed``: the job plans
    its own formats (so it calibrates, and measures unless given a measurement).
    ``baseline_bytes``: the process's resident memory when the job starts (None:
    this process's, measured now: a job run inside a test run or a notebook
    peaks that much higher, and its peak counts it)."""
    shape = JobShape.of(config, profile, on_gpu, plan, mixed, _weights_rows(config, plan))
    phases = phase_peaks(shape)
    runtime = rss_bytes() if baseline_bytes is None else baseline_bytes
    job_runtime = JOB_RUNTIME + (TASKS_RUNTIME if config.eval.tasks and shape.evaluates else 0)
    host = runtime + job_runtime + max((p.host for p in phases.values()), default=0)
    device = max((p.device for p in phases.values()), default=0) if on_gpu else 0
    return MemoryEstimate(int(host), int(device), runtime, job_runtime, phases)
