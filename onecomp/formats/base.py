"""A weight format: exact storage accounting, packing, and the module that runs it.

Each format is a pydantic spec (its fields are the YAML/JSON schema of a layer's
entry in ``quantization_config``) plus a registry entry. Code elsewhere never
branches on format names: it asks the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # the specs are torch-free: settings validate without the numerics
    import torch
    from torch import nn


@dataclass(frozen=True)
class TrainingFootprint:
    """Bytes a layer's training view holds (block-wise and global stages).

    ``view``: its frozen discrete part as the view keeps it; ``saved``: what one
    step's backward keeps whatever the batch; ``saved_per_token``: what it keeps
    per token of the batch (intermediate activations of a factored forward).
    """

    view: int = 0
    saved: int = 0
    saved_per_token: int = 0

    def __add__(self, other: "TrainingFootprint") -> "TrainingFootprint":
        return TrainingFootprint(self.view + other.view, self.saved + other.saved, self.saved_per_token + other.saved_per_token)


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

    def training_footprint(self, out_features: int, in_features: int) -> TrainingFootprint:
        """Default: a view that keeps one bfloat16 tensor of the weight's shape and
        rebuilds the weight in bfloat16 each step (which the backward keeps)."""
        dense = 2 * out_features * in_features
        return TrainingFootprint(view=dense, saved=dense)

    def resolved(self, out_features: int, in_features: int) -> "FormatSpec":
        """This spec as it applies to an (out x in) layer. Formats with a
        shape-dependent setting (LoRDS's rank) fill it in, so a quantizer given a
        sample of the layer's rows still produces the whole layer's format."""
        return self

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


def plan_training_footprint(plan: dict[str, FormatSpec], shapes: dict[str, tuple[int, int]]) -> TrainingFootprint:
    """What the refinement stages' training views of a plan's layers hold, summed."""
    total = TrainingFootprint()
    for name, fmt in plan.items():
        if name in shapes:
            total = total + fmt.training_footprint(*shapes[name])
    return total


def default_candidates(kinds: "tuple[type[FormatSpec], ...] | None" = None) -> list[FormatSpec]:
    """The default planner candidates of the given format classes (all registered ones by default)."""
    return [spec for cls in FORMATS.values() if kinds is None or issubclass(cls, kinds) for spec in cls.candidates()]
