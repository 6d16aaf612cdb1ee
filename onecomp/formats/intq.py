"""Integer weights with per-group float16 scales and (asymmetric) integer zeros.

Storage per (out x in) weight with G = ceil(in / group) groups per row:
codes out*in*b bits, scales out*G*16, zeros out*G*b when asymmetric, and, only
for act-order without static groups, a group index of in*16 bits.
The last group of a row may be shorter than the group size.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import nn

from onecomp.algorithms.result import IntQuantResult
from onecomp.formats.base import FormatSpec, register_format
from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes

SUPPORTED_BITS = (2, 3, 4, 8)
CANDIDATE_GROUPS = (32, 64, 128, -1)


def check_code_bits(v: int) -> int:
    """The code widths packing and the candidates support (shared by every coded format)."""
    if v not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {v}")
    return v


_LABEL = re.compile(r"^w(\d+)(?:g(\d+)|(ch))(s?)$")


@register_format
class IntFormat(FormatSpec):
    name = "int"

    bits: int = 4
    group_size: int = 128  # -1: one group per output channel
    sym: bool = False
    g_idx: bool = False  # True when columns are grouped out of order (act-order)

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        return check_code_bits(v)

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError(f"group size must be a positive integer or -1 (per channel), got {v}")
        return v

    def ngroups(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else -(-in_features // self.group_size)

    def storage_bits(self, out_features: int, in_features: int) -> int:
        groups = out_features * self.ngroups(in_features)
        bits = out_features * in_features * self.bits + groups * 16
        if not self.sym:
            bits += groups * self.bits
        if self.g_idx:
            bits += in_features * 16
        return bits

    def storage_bytes(self, out_features: int, in_features: int) -> int:
        groups = out_features * self.ngroups(in_features)
        nbytes = packed_nbytes(out_features * in_features, self.bits) + 2 * groups
        if not self.sym:
            nbytes += packed_nbytes(groups, self.bits)
        if self.g_idx:
            nbytes += 2 * in_features
        return nbytes

    def label(self) -> str:
        group = "ch" if self.group_size == -1 else f"g{self.group_size}"
        return f"w{self.bits}{group}{'s' if self.sym else ''}"

    @classmethod
    def candidates(cls) -> list[FormatSpec]:
        return [cls(bits=b, group_size=g) for b in SUPPORTED_BITS for g in CANDIDATE_GROUPS]

    @classmethod
    def from_label(cls, label: str) -> "IntFormat | None":
        m = _LABEL.match(label)
        if m is None:
            return None
        group = -1 if m.group(3) else int(m.group(2))
        return cls(bits=int(m.group(1)), group_size=group, sym=bool(m.group(4)))

    def pack(self, result: IntQuantResult) -> dict[str, torch.Tensor]:
        if (result.g_idx is not None) != self.g_idx:
            raise ValueError("format g_idx flag does not match the quantizer's result")
        out: dict[str, torch.Tensor] = {
            "qweight": pack_codes(result.codes.to(torch.int64), self.bits),
            "scales": result.scale.to(torch.float16).contiguous(),
        }
        if not self.sym:
            out["qzeros"] = pack_codes(result.zero.to(torch.int64), self.bits)
        if result.g_idx is not None:
            out["g_idx"] = result.g_idx.to(torch.int16)
        return out

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return IntQuantLinear(self, in_features, out_features, bias)


class IntQuantLinear(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.spec.label()}"
