"""The stages a job can run, in their fixed order, each with the name of the
pivot it writes. The executor iterates this registry; it never branches on
stage names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from onecomp.config import JobConfig
from onecomp.estimate import JobShape, Peak
from onecomp.methods import get_method
from onecomp.stages.context import StageContext, StageOutcome
from onecomp.stages import layerwise_stage
from onecomp.stages.layerwise_stage import run_layerwise_stage
from onecomp.stages.refine_stages import estimate_blockwise, estimate_global, run_blockwise_stage, run_global_stage

StageRunner = Callable[[StageContext, "Path | None", Path], StageOutcome]


@dataclass(frozen=True)
class Stage:
    name: str
    pivot: str  # directory under OUT/pivots
    run: StageRunner
    needs_calibration: Callable[[JobConfig], bool]
    calibration_samples: Callable[[JobConfig], int | None]
    estimate: Callable[[JobShape], Peak]  # host and device peaks beyond the process's own


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "layerwise", "1-layerwise", run_layerwise_stage,
            lambda c: get_method(c.quant.method).needs_hessian or c.quant.qep.enabled, lambda c: c.calib.nsamples,
            layerwise_stage.estimate,
        ),
        Stage("blockwise", "2-blockwise", run_blockwise_stage, lambda c: True, lambda c: c.blockwise.nsamples, estimate_blockwise),
        Stage("global", "3-global", run_global_stage, lambda c: True, lambda c: c.global_.nsamples, estimate_global),
    )
}
