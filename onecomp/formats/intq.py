"""Integer weights with per-group float16 scales and (asymmetric) integer zeros.

Storage per (out x in) weight with G = ceil(in / group) groups per row:
codes out*in*b bits, scales out*G*16, zeros out*G*b when asymmetric, and, only
for act-order without static groups, a group index of in*16 bits.
The last group of a row may be shorter than the group size.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from onecomp.formats.base import FormatSpec, register_format
from onecomp.formats.layout import packed_nbytes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from onecomp.algorithms.result import IntQuantResult

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
        from onecomp.formats.intq_linear import pack_int

        return pack_int(self, result)

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        from onecomp.formats.intq_linear import IntQuantLinear

        return IntQuantLinear(self, in_features, out_features, bias)


def __getattr__(name: str) -> Any:
    """The inference module, imported (with torch) only when asked for."""
    if name == "IntQuantLinear":
        from onecomp.formats.intq_linear import IntQuantLinear

        return IntQuantLinear
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
