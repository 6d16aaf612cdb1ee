"""Words for what a job does, shared by its progress lines and its final summary,
so that a user sees what a method includes (``--method rtn`` runs QEP too)."""

from __future__ import annotations

from onecomp.config import JobConfig

STAGE_WORDS = {"layerwise": "layer-wise quantization", "blockwise": "block-wise refinement", "global": "global distillation"}


def method_label(config: JobConfig) -> str:
    """The layer-wise method as it runs: 'gptq + QEP', 'rtn + QEP', or plain 'rtn' with --no-qep."""
    return f"{config.quant.method} + QEP" if config.quant.qep.enabled else config.quant.method


def format_label(config: JobConfig) -> str:
    """The formats asked for: a uniform label (w4g128), a budget, or a plan file."""
    plan = config.plan
    if plan.bpw is not None:
        return f"mixed, {plan.bpw:g} bits per weight"
    if plan.memory_gb is not None:
        return f"mixed, {plan.memory_gb} GB" if plan.memory_gb != "auto" else "mixed, fit to this machine"
    if plan.file is not None:
        return "formats from a plan file"
    return config.quant.format().label()


def stage_line(config: JobConfig, number: int, name: str) -> str:
    """'stage 1/3: layer-wise quantization, gptq + QEP, w4g128'."""
    words = f"stage {number}/{len(config.stages)}: {STAGE_WORDS.get(name, name)}"
    return f"{words}, {method_label(config)}, {format_label(config)}" if name == "layerwise" else words


def job_caption(config: JobConfig) -> str:
    """One line under the summary table: what the pivots were made with."""
    if config.from_pivot is not None:
        return f"refined from {config.from_pivot}: " + ", ".join(STAGE_WORDS.get(s, s) for s in config.stages)
    rest = [STAGE_WORDS.get(s, s) for s in config.stages if s != "layerwise"]
    return f"method: {method_label(config)}, {format_label(config)}" + (f"; then {', '.join(rest)}" if rest else "")
