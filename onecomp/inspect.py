"""A model's profile (architecture, shapes, linear layers), computed from its
config alone on the meta device, so a job is checked against the machine
before any weight is loaded, and a directory holding only config.json can be
planned for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onecomp.checkpoint import storage_dtype
from onecomp.models.configs import model_config
from onecomp.runtime.skeleton import empty_model
from onecomp.models.adapters import ADAPTERS, ArchAdapter

@dataclass
class LinearInfo:
    name: str
    out_features: int
    in_features: int

    @property
    def params(self) -> int:
        return self.out_features * self.in_features


@dataclass
class ModelProfile:
    model_type: str
    architecture: str
    num_blocks: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    tied_head: bool
    dtype: str
    total_params: int
    linears: list[LinearInfo] = field(default_factory=list)
    supported: bool = True

    @property
    def block_linear_params(self) -> int:
        return sum(li.params for li in self.linears)

    @property
    def size_bytes(self) -> int:
        return self.total_params * torch.tensor([], dtype=getattr(torch, self.dtype)).element_size()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_bytes"] = self.size_bytes
        d["block_linear_params"] = self.block_linear_params
        return d


def profile_model(path: Path) -> ModelProfile:
    config = model_config(path)
    model = empty_model(config)
    adapter: ArchAdapter | None = ADAPTERS.get(config.model_type)
    linears: list[LinearInfo] = []
    if adapter is not None:
        for index in range(len(adapter.blocks(model))):
            prefix = adapter.block_prefix(index)
            for name in adapter.linear_names():
                mod = model.get_submodule(f"{prefix}.{name}")
                assert isinstance(mod, nn.Linear)
                linears.append(LinearInfo(f"{prefix}.{name}", mod.out_features, mod.in_features))
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False)) and head is not None
    params = {id(p): p.numel() for p in model.parameters()}
    total = sum(params.values()) - (head.weight.numel() if tied and id(head.weight) != id(emb.weight) else 0)
    return ModelProfile(
        model_type=config.model_type,
        architecture=(config.architectures or [type(model).__name__])[0],
        num_blocks=getattr(config, "num_hidden_layers", 0),
        hidden_size=getattr(config, "hidden_size", 0),
        intermediate_size=getattr(config, "intermediate_size", 0),
        vocab_size=getattr(config, "vocab_size", 0),
        num_heads=getattr(config, "num_attention_heads", 0),
        tied_head=tied,
        dtype=str(storage_dtype(config)).removeprefix("torch."),
        total_params=total,
        linears=linears,
        supported=adapter is not None,
    )
