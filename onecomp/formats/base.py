"""A weight format: exact storage accounting, packing, and the module that runs it.

Each format is a pydantic spec (its fields are the YAML/JSON schema of a layer's
entry in ``quantization_config``) plus a registry entry. Code elsewhere never
branches on format names: it asks the registry.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class FormatSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]

    def storage_bits(self, out_features: int, in_features: int) -> int:
        """Exact bits this format stores for one (out x in) weight, all overheads counted."""
        raise NotImplementedError

    def bits_per_weight(self, out_features: int, in_features: int) -> float:
        return self.storage_bits(out_features, in_features) / (out_features * in_features)

    def storage_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes of the stored tensors (each padded to whole bytes); bias not included."""
        return -(-self.storage_bits(out_features, in_features) // 8)

    @classmethod
    def candidates(cls) -> list["FormatSpec"]:
        """The settings of this format the planner considers by default."""
        return []

    @classmethod
    def from_label(cls, label: str) -> "FormatSpec | None":
        """The spec a short label (as :meth:`label` writes it) names, or None if not this format's."""
        return None

    def pack(self, result: Any) -> dict[str, torch.Tensor]:
        """Tensors to store for one layer (names relative to the layer)."""
        raise NotImplementedError

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        """An empty inference module whose state dict matches :meth:`pack` (plus bias)."""
        raise NotImplementedError

    def label(self) -> str:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"format": self.name, **self.model_dump()}


FORMATS: dict[str, type[FormatSpec]] = {}


def register_format(cls: type[FormatSpec]) -> type[FormatSpec]:
    FORMATS[cls.name] = cls
    return cls


def format_from_json(data: dict[str, Any]) -> FormatSpec:
    data = dict(data)
    name = data.pop("format", None)
    if name not in FORMATS:
        raise ValueError(f"unknown weight format {name!r}; known: {sorted(FORMATS)}")
    return FORMATS[name].model_validate(data)


def format_from_label(label: str) -> FormatSpec:
    """Parse a short label such as ``w4g128`` with whichever registered format owns it."""
    for cls in FORMATS.values():
        spec = cls.from_label(label.strip())
        if spec is not None:
            return spec
    raise ValueError(f"unknown format label {label!r} (examples: w4g128, w3g64, w2ch, w4g128s)")


def default_candidates(kinds: "tuple[type[FormatSpec], ...] | None" = None) -> list[FormatSpec]:
    """The default planner candidates of the given format classes (all registered ones by default)."""
    return [spec for cls in FORMATS.values() if kinds is None or issubclass(cls, kinds) for spec in cls.candidates()]
