"""Settings of QEP in the layer-wise stage (the YAML section ``quant.qep``):
one strength and damping for every layer, overridden per layer name pattern."""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field


class QEPLayerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float | None = Field(None, ge=0.0, le=1.0, description="propagation strength for matching layers")
    damp: float | None = Field(None, gt=0.0, description="damping for matching layers, a fraction of mean(diag H)")


class QEPSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="correct each layer toward the full-precision output before quantizing it")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="propagation strength: 0 is plain quantization, 1 the full least-squares correction")
    damp: float = Field(0.01, gt=0.0, description="damping of the correction's solve, a fraction of mean(diag H)")
    residual: bool = Field(
        False,
        description="layers that write into the residual stream (o_proj, down_proj) also cancel the drift already in it "
        "(LPCD-style; off: on SmolLM2 it helps on calibration-like text but hurts on unlike text, docs/notes/benchmarks-notebook.md)",
    )
    cache_gb: float = Field(
        0.5,
        ge=0.0,
        description="keep one block's full-precision layer inputs in memory when they take at most this many GB "
        "(one forward of the original block instead of one per group); above, they are recomputed, with the same result "
        "(0.5: SmolLM2's 0.43 GB are kept; a 1.5B model's 1.8 GB would take half its layer-wise peak)",
    )
    layers: dict[str, QEPLayerSettings] = Field(
        default_factory=dict,
        description="per-layer overrides by name pattern (fnmatch on the full name, e.g. '*.mlp.down_proj'); the first match wins",
    )

    def for_layer(self, name: str) -> tuple[float, float]:
        """(alpha, damp) for the layer with full name ``name``."""
        for pattern, over in self.layers.items():
            if fnmatchcase(name, pattern):
                return (self.alpha if over.alpha is None else over.alpha, self.damp if over.damp is None else over.damp)
        return self.alpha, self.damp
