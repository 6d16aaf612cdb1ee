"""Durable per-block results of the layer-wise stage, so a killed job resumes
at the first unfinished block instead of starting over.

Each finished block is one safetensors file (packed tensors; formats and layer
records in its metadata), written to a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from onecomp.formats.base import FormatSpec, format_from_json
from onecomp.io import atomic_file


class BlockStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, index: int) -> Path:
        return self.root / f"block-{index:04d}.safetensors"

    def has(self, index: int) -> bool:
        return self._path(index).is_file()

    def finished(self) -> int:
        """Number of leading blocks that are durably finished."""
        n = 0
        while self.has(n):
            n += 1
        return n

    def save(
        self,
        index: int,
        packed: dict[str, dict[str, torch.Tensor]],
        formats: dict[str, FormatSpec],
        records: list[dict],
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tensors = {f"{layer}::{key}": t.contiguous() for layer, ts in packed.items() for key, t in ts.items()}
        meta = {"formats": json.dumps({k: f.to_json() for k, f in formats.items()}), "records": json.dumps(records)}
        with atomic_file(self._path(index)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load(self, index: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, FormatSpec], list[dict]]:
        packed: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(self._path(index)), framework="pt") as fh:
            meta = fh.metadata()
            for key in fh.keys():
                layer, name = key.split("::", 1)
                packed.setdefault(layer, {})[name] = fh.get_tensor(key)
        formats = {k: format_from_json(v) for k, v in json.loads(meta["formats"]).items()}
        return packed, formats, json.loads(meta["records"])
