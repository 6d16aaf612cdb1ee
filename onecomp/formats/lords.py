"""LoRDS weights: b-bit codes on a fixed codebook times a rank-r fp16 scale B @ A.

Storage per (out=n x in=m) weight: codes n*m*b bits, scale factors 16*r*(n+m).
With r = floor(n*m / (block*(n+m))) (the default, ``rank=None``) the factors cost
at most what fp16 scales of ``block``-wide blocks cost, so ``lords3g128`` sits next
to ``w3g128s`` in bits per weight. See :mod:`onecomp.algorithms.lords`.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import nn

from onecomp.algorithms.lords import FACTOR_DTYPE, LoRDSResult, lords_dequantize, lords_rank
from onecomp.formats.base import FormatSpec, register_format
from onecomp.formats.intq import check_code_bits
from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes

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
        n, m = result.codes.shape
        if (result.bits, result.codebook) != (self.bits, self.codebook):
            raise ValueError(f"result ({result.bits} bits, {result.codebook}) does not match format {self.label()}")
        if result.rank != self.rank_for(n, m):
            raise ValueError(f"result rank {result.rank} does not match format rank {self.rank_for(n, m)}")
        return {
            "qweight": pack_codes(result.codes.to(torch.int64), self.bits),
            "scale_b": result.B.to(FACTOR_DTYPE).contiguous(),
            "scale_a": result.A.to(FACTOR_DTYPE).contiguous(),
        }

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return LoRDSLinear(self, in_features, out_features, bias)


class LoRDSLinear(nn.Module):
    """Linear layer that computes from packed codes and the fp16 low-rank scale
    (torch reference path): the float weight is rebuilt on every call, never stored."""

    def __init__(self, spec: LoRDSFormat, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.spec = spec
        self.in_features = in_features
        self.out_features = out_features
        r = spec.rank_for(out_features, in_features)
        self.register_buffer("qweight", torch.zeros(packed_nbytes(out_features * in_features, spec.bits), dtype=torch.uint8))
        self.register_buffer("scale_b", torch.zeros(out_features, r, dtype=FACTOR_DTYPE))
        self.register_buffer("scale_a", torch.zeros(r, in_features, dtype=FACTOR_DTYPE))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def dequantize(self) -> torch.Tensor:
        n, m = self.out_features, self.in_features
        codes = unpack_codes(self.qweight, self.spec.bits, n * m).view(n, m)
        return lords_dequantize(codes, self.scale_b, self.scale_a, self.spec.bits, self.spec.codebook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.spec.label()}"
