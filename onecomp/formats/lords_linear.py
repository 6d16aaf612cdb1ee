"""The LoRDS format's tensors and its inference module (torch reference path)."""

from __future__ import annotations

import torch
from torch import nn

from onecomp.algorithms.lords import FACTOR_DTYPE, LoRDSResult, lords_dequantize
from onecomp.formats.intq_linear import DequantizingLinear
from onecomp.formats.lords import LoRDSFormat
from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes


def pack_lords(spec: LoRDSFormat, result: LoRDSResult) -> dict[str, torch.Tensor]:
    """The tensors a LoRDS layer stores."""
    n, m = result.codes.shape
    if (result.bits, result.codebook) != (spec.bits, spec.codebook):
        raise ValueError(f"result ({result.bits} bits, {result.codebook}) does not match format {spec.label()}")
    if result.rank != spec.rank_for(n, m):
        raise ValueError(f"result rank {result.rank} does not match format rank {spec.rank_for(n, m)}")
    return {
        "qweight": pack_codes(result.codes.to(torch.int64), spec.bits),
        "scale_b": result.B.to(FACTOR_DTYPE).contiguous(),
        "scale_a": result.A.to(FACTOR_DTYPE).contiguous(),
    }


class LoRDSLinear(DequantizingLinear):
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
