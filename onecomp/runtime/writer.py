"""Safetensors files written tensor by tensor, and sharded like Hugging Face
checkpoints: the writer holds one tensor at a time, never a whole state dict,
so writing a 70B pivot takes no more memory than its largest tensor."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from onecomp.runtime.tensors import TORCH_TO_ST

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default


@dataclass(frozen=True)
class PendingTensor:
    """A tensor to write: what it is, and how to produce it when its turn comes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _header(tensors: list[PendingTensor], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned


def write_safetensors(path: Path, tensors: list[PendingTensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` in order, producing each only when it is written.
    A produced tensor must match its declared dtype and shape."""
    raw = _header(tensors, metadata)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for t in tensors:
            value = t.produce()
            if value.dtype != t.dtype or tuple(value.shape) != t.shape:
                raise ValueError(f"{t.name}: produced {value.dtype} {list(value.shape)}, declared {t.dtype} {list(t.shape)}")
            if t.nbytes:
                fh.write(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def shard(tensors: list[PendingTensor], max_bytes: int) -> list[list[PendingTensor]]:
    """Consecutive groups of at most ``max_bytes`` each (a larger tensor gets a shard of its own)."""
    shards: list[list[PendingTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def write_sharded(directory: Path, tensors: list[PendingTensor], max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: dict[str, str] | None = None) -> list[Path]:
    """``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` and
    their index when the tensors exceed ``max_shard_bytes``: the layout
    transformers and every engine read. The caller makes the write atomic (a
    temporary directory renamed into place)."""
    directory = Path(directory)
    groups = shard(tensors, max_shard_bytes)
    if len(groups) == 1:
        write_safetensors(directory / WEIGHTS_FILE, groups[0], metadata)
        return [directory / WEIGHTS_FILE]
    files, weight_map = [], {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(directory / name, group, metadata)
        weight_map.update({t.name: name for t in group})
        files.append(directory / name)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files
