"""A rough cost model of a job's wall time, for `onecomp batch --dry-run`.

Each part is a reference time measured on SmolLM2-135M on a 2-core CPU
(docs/notes/benchmarks-notebook.md), scaled linearly by the job's parameter count and by the
tokens it processes relative to the reference settings:

- layer-wise stage, 128 x 512 calibration tokens: GPTQ 370 s, RTN 5 s (no data:
  parameters only), DBF 1800 s, MDBF 1550 s, LoRDS 8x GPTQ; QEP adds 40% of a GPTQ pass
  (GPTQ+QEP = 1.4x GPTQ) to any method. Of these data-driven passes only
  :data:`TOKEN_SHARE` (half) is taken to grow with the calibration tokens
  (forwards, input statistics); the rest (per-layer solves, clip search) grows
  with the parameters alone, so a job with few calibration sequences is not
  predicted to be nearly free;
- mixed precision: measuring the layers' sensitivity costs about 2 GPTQ passes
  (none when plan.measurement reuses a measurement), split the same way;
- block-wise 770 s (2 epochs) and global 420 s (1 epoch) over 128 x 512 tokens,
  scaled by their sequences and epochs;
- perplexity: 75 s per text for 64 windows of 512 tokens, for every pivot and
  once for the original model (its scores are cached per model);
- lm-eval tasks (``eval.tasks``): 0.4 s per item per task and evaluated model
  (the two built-in tasks, 300 items each, took 16 min on the original with the
  2 cores shared by four jobs; ``eval.limit`` caps the items).

A GPU is assumed :data:`GPU_SPEEDUP` times faster on everything: a very rough
figure, good for the order of magnitude only. Real times vary by +-50% with the
machine, other load on it, and the model's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onecomp.config import JobConfig

REF_PARAMS = 134_515_008  # SmolLM2-135M, tied embedding counted once
REF_CALIB_TOKENS = 128 * 512
REF_EVAL_TOKENS = 64 * 512
GPTQ_SECONDS = 370.0
LAYERWISE_SECONDS = {"gptq": GPTQ_SECONDS, "rtn": 5.0, "dbf": 1800.0, "mdbf": 1550.0, "lords": 8 * GPTQ_SECONDS}
DATA_FREE = {"rtn"}  # methods whose own cost does not grow with calibration tokens
QEP_EXTRA = 0.4 * GPTQ_SECONDS
MEASURE_SECONDS = 2 * GPTQ_SECONDS
BLOCKWISE_SECONDS, BLOCKWISE_EPOCHS = 770.0, 2
GLOBAL_SECONDS, GLOBAL_EPOCHS = 420.0, 1
PPL_SECONDS = 75.0  # per text and evaluated model, REF_EVAL_TOKENS
TASK_SECONDS_PER_ITEM = 0.4  # per lm-eval item and evaluated model
TASK_ITEMS = 300  # items of a built-in task (a standard task is counted the same)
GPU_SPEEDUP = 20.0
TOKEN_SHARE = 0.5  # share of a layer-wise pass (or a measurement) that grows with calibration tokens
CPU_SEQLEN = 512  # calib.seqlen when unset, on a CPU


@dataclass
class TimeEstimate:
    """Seconds per part of a job on the reference 2-core CPU."""

    parts: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.parts.values())

    @property
    def gpu_seconds(self) -> float:
        return self.cpu_seconds / GPU_SPEEDUP


def estimate_job_seconds(config: JobConfig, params: int, evaluate_original: bool = True) -> TimeEstimate:
    """Rough wall time of ``config`` on a model of ``params`` parameters (see the module docstring).

    ``evaluate_original``: count the original model's evaluation (false when an
    earlier job of the same batch already scores it, since the scores are cached).
    """
    scale = params / REF_PARAMS
    seqlen = config.calib.seqlen or CPU_SEQLEN
    tokens = config.calib.nsamples * seqlen / REF_CALIB_TOKENS
    calib = 1.0 - TOKEN_SHARE + TOKEN_SHARE * tokens  # a data-driven pass: fixed part + per-token part
    parts: dict[str, float] = {}
    if config.plan.mixed and config.plan.measurement is None:
        parts["measure"] = MEASURE_SECONDS * scale * calib
    if "layerwise" in config.stages:
        method = config.quant.method
        base = LAYERWISE_SECONDS.get(method, GPTQ_SECONDS) * scale * (1.0 if method in DATA_FREE else calib)
        parts["layerwise"] = base + (QEP_EXTRA * scale * calib if config.quant.qep.enabled else 0.0)
    if "blockwise" in config.stages:
        rows = min(config.blockwise.nsamples or config.calib.nsamples, config.calib.nsamples)
        parts["blockwise"] = BLOCKWISE_SECONDS * scale * rows * seqlen / REF_CALIB_TOKENS * config.blockwise.epochs / BLOCKWISE_EPOCHS
    if "global" in config.stages:
        rows = min(config.global_.nsamples or config.calib.nsamples, config.calib.nsamples)
        parts["global"] = GLOBAL_SECONDS * scale * rows * seqlen / REF_CALIB_TOKENS * config.global_.epochs / GLOBAL_EPOCHS
    evaluated = len(config.stages) + (1 if evaluate_original else 0) + (1 if config.from_pivot else 0)
    windows = config.eval.max_windows or 64
    ppl = PPL_SECONDS * scale * windows * config.eval.seqlen / REF_EVAL_TOKENS * len(config.eval.ppl) * evaluated
    if ppl:
        parts["perplexity"] = ppl
    if config.eval.tasks:
        items = min(config.eval.limit or TASK_ITEMS, TASK_ITEMS)
        parts["tasks"] = TASK_SECONDS_PER_ITEM * items * scale * len(config.eval.tasks) * evaluated
    return TimeEstimate(parts)


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
