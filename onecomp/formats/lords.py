"""LoRDS weights: b-bit codes on a fixed codebook times a rank-r fp16 scale B @ A.

Storage per (out=n x in=m) weight: codes n*m*b bits, scale factors 16*r*(n+m).
With r = floor(n*m / (block*(n+m))) (the default, ``rank=None``) the factors cost
at most what fp16 scales of ``block``-wide blocks cost, so ``lords3g128`` sits next
to ``w3g128s`` in bits per weight. See :mod:`onecomp.algorithms.lords`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import field_validator

from onecomp.formats.base import FormatSpec, register_format
from onecomp.formats.intq import check_code_bits
from onecomp.formats.layout import lords_rank, packed_nbytes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from onecomp.algorithms.lords import LoRDSResult

_LABEL = re.compile(r"^lords(\d+)g(\d+)(?:r(\d+))?(nf)?$")


@register_format
class LoRDSFormat(FormatSpec):
    name = "lords"

    bits: int = 4
    block: int = 128  # block size whose fp16 scale budget sets the rank
    codebook: Literal["int", "nf"] = "int"
    rank: int | None = None  # None: lords_rank(out, in, block); stored specs carry it

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        return check_code_bits(v)

    @field_validator("block")
    @classmethod
    def _block(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"block must be a positive integer, got {v}")
        return v

    @field_validator("rank")
    @classmethod
    def _rank(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"rank must be a positive integer or None, got {v}")
        return v

    def rank_for(self, out_features: int, in_features: int) -> int:
        return lords_rank(out_features, in_features, self.block) if self.rank is None else self.rank

    def resolved(self, out_features: int, in_features: int) -> "LoRDSFormat":
        """This spec with the rank of an (out x in) layer filled in: what a checkpoint
        stores, so loading never has to re-derive the factor shapes."""
        return self.model_copy(update={"rank": self.rank_for(out_features, in_features)})

    def storage_bits(self, out_features: int, in_features: int) -> int:
        r = self.rank_for(out_features, in_features)
        return out_features * in_features * self.bits + 16 * r * (out_features + in_features)

    def storage_bytes(self, out_features: int, in_features: int) -> int:
        r = self.rank_for(out_features, in_features)
        return packed_nbytes(out_features * in_features, self.bits) + 2 * r * (out_features + in_features)

    def label(self) -> str:
        rank = "" if self.rank is None else f"r{self.rank}"
        return f"lords{self.bits}g{self.block}{rank}{'nf' if self.codebook == 'nf' else ''}"

    @classmethod
    def candidates(cls) -> list[FormatSpec]:
        """What the planner considers for a lords job (other jobs list LoRDS labels
        in ``plan.candidates`` to mix them in): 2 to 4 bits at the scale budget of
        blocks of 64 and 128; the lords method plans them in the codebook its
        options choose (``methods._lords_candidates``)."""
        return [cls(bits=b, block=g) for b in (2, 3, 4) for g in (64, 128)]

    @classmethod
    def from_label(cls, label: str) -> "LoRDSFormat | None":
        m = _LABEL.match(label)
        if m is None:
            return None
        rank = None if m.group(3) is None else int(m.group(3))
        return cls(bits=int(m.group(1)), block=int(m.group(2)), rank=rank, codebook="nf" if m.group(4) else "int")

    def pack(self, result: LoRDSResult) -> dict[str, torch.Tensor]:
        from onecomp.formats.lords_linear import pack_lords

        return pack_lords(self, result)

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        from onecomp.formats.lords_linear import LoRDSLinear

        return LoRDSLinear(self, in_features, out_features, bias)


def __getattr__(name: str) -> Any:
    """The inference module, imported (with torch) only when asked for."""
    if name == "LoRDSLinear":
        from onecomp.formats.lords_linear import LoRDSLinear

        return LoRDSLinear
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
