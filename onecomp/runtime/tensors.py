"""Tensors of a safetensors model directory, read one at a time.

Reads are positional (``os.pread``) into a fresh buffer, not through a memory
map: pages of a mapped file that were touched stay in the process's resident
set for as long as the map lives, so reading a model through one map would
count the whole model against the host-memory budget.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from onecomp.models.weights import check_weights

# safetensors dtype names -> torch dtypes (the ones a model checkpoint holds)
ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in ST_TO_TORCH.items()}


class TensorEntry:
    """Where one tensor lies: file, byte range, dtype and shape."""

    __slots__ = ("file", "begin", "end", "dtype", "shape")

    def __init__(self, file: Path, data_start: int, entry: dict[str, Any]) -> None:
        self.file = file
        self.begin = data_start + entry["data_offsets"][0]
        self.end = data_start + entry["data_offsets"][1]
        self.dtype = ST_TO_TORCH.get(entry["dtype"])
        self.shape = tuple(entry["shape"])

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def data_start(file: Path) -> int:
    """Where a safetensors file's tensor data begins (after its 8-byte length and header)."""
    with open(file, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def read_entry(entry: TensorEntry) -> torch.Tensor:
    """The tensor an entry describes, in its stored dtype, on the CPU, owning its memory."""
    if entry.dtype is None:
        raise ValueError(f"{entry.file}: a tensor of a dtype torch cannot read")
    buf = bytearray(entry.nbytes)
    view = memoryview(buf)
    fd = os.open(entry.file, os.O_RDONLY)
    try:
        done = 0
        while done < entry.nbytes:
            got = os.preadv(fd, [view[done:]], entry.begin + done)
            if got <= 0:
                raise OSError(f"{entry.file}: unexpected end of file")
            done += got
    finally:
        os.close(fd)
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return torch.frombuffer(buf, dtype=entry.dtype).reshape(entry.shape)


def _cast(t: torch.Tensor, device: torch.device | str | None, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` in ``dtype`` (floating tensors only) on ``device``; None keeps either."""
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    return t if device is None else t.to(device)


class TensorReader:
    """Every tensor of a model directory (``model.safetensors`` or its shards),
    by name, each file's header checked once when the reader is made."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, TensorEntry] = {}
        for file, header in check_weights(self.path).items():
            start = data_start(file)
            for name, entry in header.items():
                self.entries[name] = TensorEntry(file, start, entry)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor ``name``, cast to ``dtype`` (floating tensors only) and moved to ``device``."""
        return _cast(read_entry(self.entries[name]), device, dtype)

    def dtype(self, name: str) -> torch.dtype | None:
        return self.entries[name].dtype

    def nbytes(self, names: list[str] | None = None) -> int:
        return sum(self.entries[n].nbytes for n in (self.entries if names is None else names))


class StateDictReader:
    """The reader interface over tensors already in memory (a model built in a
    test or a benchmark): the same runtime runs on them without a file."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.detach() for k, v in state.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.state

    def names(self) -> list[str]:
        return list(self.state)

    def get(self, name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = _cast(self.state[name], device, dtype)
        return t.clone() if t is self.state[name] else t

    def dtype(self, name: str) -> torch.dtype | None:
        return self.state[name].dtype

    def nbytes(self, names: list[str] | None = None) -> int:
        return sum(self.state[n].numel() * self.state[n].element_size() for n in (self.state if names is None else names))
