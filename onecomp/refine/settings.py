"""The refinement stages' settings (the ``blockwise:`` and ``global:`` sections
of a job), apart from the training code so a job validates without torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BlockwiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(2, ge=1, description="passes over the calibration set per block")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate (relative change of a scale per step)")
    batch_size: int = Field(2, ge=1, description="sequences per optimizer step")
    nsamples: int | None = Field(None, ge=1, description="calibration sequences used (default: all of the job's)")
    train_norms: bool = Field(True, description="also train the normalization weights of the block")
    seed: int = Field(0, description="seed of the batch order")


class GlobalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1, ge=1, description="passes over the distillation sequences")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate (relative change of a scale per step)")
    batch_size: int = Field(1, ge=1, description="sequences per optimizer step")
    nsamples: int | None = Field(None, ge=1, description="calibration sequences distilled on (default: all of the job's)")
    topk: int = Field(64, ge=1, description="teacher log-probabilities kept per position")
    train_norms: bool = Field(True, description="also train normalization weights")
    chunk: int = Field(128, ge=1, description="positions per vocabulary-projection chunk")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between durable progress writes")
    seed: int = Field(0, description="seed of the batch order")
