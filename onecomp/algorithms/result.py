"""What quantizers hand back: an integer quantizer's codes and per-group
parameters, and the damping any of them needed to factor its Hessian."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Damping:
    """The damping a Hessian solve was asked for and the one it needed, both as a
    fraction of mean(diag H). ``raised``: the Hessian was not positive definite at
    the requested damping, so the solve regularized harder than configured and its
    correction (GPTQ's error feedback, QEP's propagation) is weaker on that layer.
    Algorithms report it; the stage decides what to make of it."""

    requested: float
    used: float

    @property
    def raised(self) -> bool:
        return self.used > self.requested


@dataclass
class IntQuantResult:
    """Codes in the original column order; group ``g_idx[j]`` holds column ``j``.

    ``g_idx`` is None when groups are contiguous runs of ``group_size`` columns
    (the last one possibly shorter); act-order without static groups needs it.
    """

    codes: torch.Tensor  # (out, in) integer values in [0, 2**bits)
    group_size: int  # columns per group; <= 0 means one group per row
    scale: torch.Tensor  # (out, ngroups) float32, float16-representable
    zero: torch.Tensor  # (out, ngroups) float32 integer values
    g_idx: torch.Tensor | None = None  # (in,) int64
    info: dict = field(default_factory=dict)  # "damping": the Damping of a Hessian-based quantizer

    def dequantize(self) -> torch.Tensor:
        idx = self.group_index()
        return (self.codes.float() - self.zero[:, idx]) * self.scale[:, idx]

    def group_index(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx
        return contiguous_group_index(self.codes.shape[1], self.group_size)


def contiguous_groups(in_features: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges of contiguous groups; ``group_size <= 0`` means one group per row."""
    g = in_features if group_size <= 0 else group_size
    return [(s, min(s + g, in_features)) for s in range(0, in_features, g)]


def contiguous_group_index(in_features: int, group_size: int) -> torch.Tensor:
    g = in_features if group_size <= 0 else group_size
    return torch.arange(in_features) // g
