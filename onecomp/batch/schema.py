"""The batch YAML schema: pydantic models with extra="forbid", like the job config.

Only the batch's own structure is checked here (which keys, which shapes); the
job settings inside ``defaults``, ``jobs`` and the matrix entries are partial
job mappings, validated later as whole jobs so each error can name the place it
was written (see :mod:`onecomp.batch.expand`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Job names become directory names under the batch output.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,119}$")
# Names a job cannot take: the batch's own files and folders live beside the job directories.
RESERVED_NAMES = frozenset({"batch.json", "batch-logs", "comparison.md", "comparison.csv", "pareto.png", "report.html"})


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a filesystem-safe name (letters, digits and . _ + -, starting with a letter or digit)")
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved for the batch's own files ({', '.join(sorted(RESERVED_NAMES))})")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    """One value of ``matrix.methods``: a method name, or a labelled quant section."""

    name: str | None = Field(None, description="label used in job names (default: quant.method)")
    quant: dict[str, Any] = Field(default_factory=dict, description="any keys of the job's quant: section")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value, "quant": {"method": value}} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _safe(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)


class BudgetEntry(_Strict):
    """One value of ``matrix.budgets``: uniform bits (a number or a mapping) or a mixed-precision budget."""

    bits: int | float | None = Field(None, description="uniform bits (quant.bits)")
    group_size: int | None = Field(None, description="with bits: columns per scale group (quant.group_size)")
    sym: bool | None = Field(None, description="with bits: symmetric grid (quant.sym)")
    bpw: float | None = Field(None, description="mixed precision: average bits per weight (plan.bpw)")
    memory_gb: float | Literal["auto"] | None = Field(None, description="mixed precision: weight memory in GB (plan.memory_gb)")

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"bits": value}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "BudgetEntry":
        given = [k for k in ("bits", "bpw", "memory_gb") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of bits, bpw, memory_gb (got {', '.join(given) or 'none'})")
        if given != ["bits"] and (self.group_size is not None or self.sym is not None):
            raise ValueError("group_size and sym go with bits (a uniform format), not with a mixed-precision budget")
        return self


class MatrixConfig(_Strict):
    """The cartesian product models x methods x budgets x stages; each omitted list leaves those settings to ``defaults``."""

    models: list[str] = Field(..., min_length=1, description="model specs (aliases, directories, .gguf files, hub ids)")
    methods: list[MethodEntry] | None = Field(None, min_length=1, description="method names or {name, quant} mappings")
    budgets: list[BudgetEntry] | None = Field(None, min_length=1, description="uniform bits, {bits, group_size, sym}, {bpw} or {memory_gb}")
    stages: list[list[str]] | None = Field(None, min_length=1, description="stage lists, e.g. [[layerwise], [layerwise, blockwise]]")


class BatchConfig(_Strict):
    """A batch file: where it writes, the settings every job shares, and its jobs."""

    output: str = Field(..., description="batch directory; each job runs in OUTPUT/<name>")
    defaults: dict[str, Any] = Field(default_factory=dict, description="partial job mapping merged under every job")
    jobs: list[dict[str, Any]] | None = Field(None, description="explicit jobs: partial job mappings with an optional name")
    matrix: MatrixConfig | None = None

    @model_validator(mode="after")
    def _some_jobs(self) -> "BatchConfig":
        if not self.jobs and self.matrix is None:
            raise ValueError("a batch needs jobs: or matrix: (or both)")
        return self
