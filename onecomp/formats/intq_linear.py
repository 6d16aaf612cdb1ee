"""The integer format's tensors and its inference module (torch reference path)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onecomp.algorithms.result import IntQuantResult
from onecomp.formats.intq import IntFormat
from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes


def pack_int(spec: IntFormat, result: IntQuantResult) -> dict[str, torch.Tensor]:
    """The tensors an integer layer stores."""
    if (result.g_idx is not None) != spec.g_idx:
        raise ValueError("format g_idx flag does not match the quantizer's result")
    out: dict[str, torch.Tensor] = {
        "qweight": pack_codes(result.codes.to(torch.int64), spec.bits),
        "scales": result.scale.to(torch.float16).contiguous(),
    }
    if not spec.sym:
        out["qzeros"] = pack_codes(result.zero.to(torch.int64), spec.bits)
    if result.g_idx is not None:
        out["g_idx"] = result.g_idx.to(torch.int16)
    return out


class DequantizingLinear(nn.Module):
    """The forward of reference modules that rebuild the float weight from their
    stored form on every call (``dequantize``) and never keep it."""

    spec: Any
    in_features: int
    out_features: int
    bias: nn.Parameter | None

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.spec.label()}"


class IntQuantLinear(DequantizingLinear):
    """Linear layer that computes from packed integer weights (torch reference path).

    The float weight is rebuilt from the packed codes on every call and never
    stored, so memory holds only the packed form.
    """

    def __init__(self, spec: IntFormat, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.spec = spec
        self.in_features = in_features
        self.out_features = out_features
        ngroups = spec.ngroups(in_features)
        self.register_buffer("qweight", torch.zeros(packed_nbytes(out_features * in_features, spec.bits), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, ngroups, dtype=torch.float16))
        if not spec.sym:
            self.register_buffer("qzeros", torch.zeros(packed_nbytes(out_features * ngroups, spec.bits), dtype=torch.uint8))
        if spec.g_idx:
            self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def dequantize(self) -> torch.Tensor:
        n, m = self.out_features, self.in_features
        codes = unpack_codes(self.qweight, self.spec.bits, n * m).view(n, m).float()
        scales = self.scales.float()
        ngroups = scales.shape[1]
        if self.spec.sym:
            zeros = torch.full_like(scales, float(1 << (self.spec.bits - 1)))
        else:
            zeros = unpack_codes(self.qzeros, self.spec.bits, n * ngroups).view(n, ngroups).float()
        if self.spec.g_idx:
            idx = self.g_idx.long()
            return (codes - zeros[:, idx]) * scales[:, idx]
        # contiguous groups: broadcast per group instead of gathering per column
        g = m if self.spec.group_size == -1 else self.spec.group_size
        pad = ngroups * g - m
        if pad:
            codes = F.pad(codes, (0, pad))
        w = (codes.view(n, ngroups, g) - zeros.unsqueeze(2)) * scales.unsqueeze(2)
        return w.view(n, ngroups * g)[:, :m]
