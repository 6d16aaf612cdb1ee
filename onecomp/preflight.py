"""The executor's memory estimate for one job's settings: one function, so a
batch dry run shows exactly what the job itself will check before any work."""

from __future__ import annotations

import math
from typing import Any

from onecomp.config import JobConfig
from onecomp.formats.base import FormatSpec, plan_training_footprint
from onecomp.inspect import MemoryEstimate, ModelProfile, estimate_compress_memory
from onecomp.methods import get_method, weights_rows
from onecomp.stages.registry import STAGES


def _weights_rows(config: JobConfig, plan: dict[str, FormatSpec] | None) -> bool:
    """Whether the layer-wise stage runs a gradient pass for row weights (an
    unplanned mixed job: if its own method would)."""
    method, options = get_method(config.quant.method), config.quant.method_options()
    if plan is None:
        return method.row_weight_exponent(options) > 0
    return any(weights_rows(f, method, options) for f in set(plan.values()))


def job_memory_estimate(
    config: JobConfig,
    profile: ModelProfile,
    raw_cfg: dict[str, Any],
    on_gpu: bool,
    plan: dict[str, FormatSpec] | None,
    mixed: bool,
) -> MemoryEstimate:
    """``plan``: the layers' formats where known before planning (None: a
    mixed-precision job that has not solved its plan yet; its pivots are counted
    at 8 bits and its training views as integer ones). ``mixed``: the job plans
    its own formats (so it calibrates, and measures unless given a measurement)."""
    shapes = {li.name: (li.out_features, li.in_features) for li in profile.linears}
    seqlen = config.calib.seqlen or (2048 if on_gpu else 512)
    needs_calib = mixed or any(STAGES[s].needs_calibration(config) for s in config.stages)
    rows = max((STAGES[s].calibration_samples(config) or config.calib.nsamples) for s in config.stages) if needs_calib else 0
    rows = config.calib.nsamples if mixed else min(rows, config.calib.nsamples)
    evaluates = bool(config.eval.ppl or config.eval.tasks)
    return estimate_compress_memory(
        profile, rows, seqlen, config.calib.batch_size, config.eval.seqlen,
        config.eval.batch_size if evaluates else 0,  # task batches (16 short sequences) are smaller than a window batch
        on_gpu, raw_cfg.get("num_attention_heads", 0),
        blockwise_nsamples=min(config.blockwise.nsamples or config.calib.nsamples, config.calib.nsamples) if "blockwise" in config.stages else 0,
        blockwise_batch=config.blockwise.batch_size,
        global_batch=config.global_.batch_size if "global" in config.stages else 0,
        bits=math.ceil(max((f.bits_per_weight(*shapes[n]) for n, f in (plan or {}).items() if n in shapes), default=8)),
        measure_grad_samples=config.plan.grad_samples if mixed and config.plan.measurement is None else 0,
        row_grad_samples=config.plan.grad_samples if "layerwise" in config.stages and _weights_rows(config, plan) else 0,
        qep="layerwise" in config.stages and config.quant.qep.enabled,
        qep_cache_limit=config.quant.qep.cache_gb * 1e9,
        compute_bytes=4 if config.calib.dtype == "float32" else 2,
        training=plan_training_footprint(plan, shapes) if plan is not None else None,
        tasks=bool(config.eval.tasks),
    )
