"""The ``plan:`` section of a job config (also the YAML schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onecomp.formats import format_from_label


class PlanSettings(BaseModel):
    """The ``plan:`` section of a job: which budget, which candidates, which pins."""

    model_config = ConfigDict(extra="forbid")

    bpw: float | None = Field(None, gt=0, description="average bits per weight over the quantized layers (scales, zeros, indices counted)")
    memory_gb: float | Literal["auto"] | None = Field(
        None, description="total weight bytes of the deployed model in GB (10^9 bytes); auto: what fits this machine's device memory"
    )
    file: str | None = Field(None, description="a plan.json to use as it is (from `onecomp plan`, possibly edited)")
    measurement: str | None = Field(None, description="reuse this measurement file instead of measuring")
    candidates: list[str] | None = Field(None, description="format labels the planner may choose (default: every registered candidate)")
    pin: dict[str, str] = Field(default_factory=dict, description="layer name pattern (fnmatch) -> format label, forced")
    fused_groups: bool = Field(True, description="layers that engines fuse (q/k/v, gate/up) share one format")
    grad_samples: int = Field(32, ge=1, description="calibration sequences of the gradient pass that weights the errors")
    row_fraction: float = Field(0.125, gt=0, le=1, description="share of each layer's output channels measured (row-separable methods; 1 = all)")
    min_rows: int = Field(128, ge=1, description="measure at least this many output channels per layer (all of a smaller one)")
    heavy_rows: int = Field(16, ge=0, description="always measure this many of each layer's most important output channels")
    max_relative_error: float = Field(0.5, gt=0, description="exclude a candidate for a layer whose relative output error exceeds this")

    @field_validator("memory_gb")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, float) and v <= 0:
            raise ValueError("must be positive (GB) or 'auto'")
        return v

    @field_validator("candidates")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("at least one candidate is needed")
            for label in v:
                format_from_label(label)
        return v

    @field_validator("pin")
    @classmethod
    def _pins(cls, v: dict[str, str]) -> dict[str, str]:
        for label in v.values():
            format_from_label(label)
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> "PlanSettings":
        given = [k for k in ("bpw", "memory_gb", "file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of bpw, memory_gb, file (got {', '.join(given)})")
        return self

    @property
    def mixed(self) -> bool:
        """Whether the job's formats come from the planner (else: uniform quant.bits)."""
        return self.bpw is not None or self.memory_gb is not None

    def candidate_labels(self, available: list[str]) -> list[str]:
        """The labels to plan with: the configured candidates (default: all of
        ``available``), plus every pinned format."""
        return list(dict.fromkeys([*(self.candidates or available), *self.pin.values()]))
