"""Which files hold a model's weights, and whether each is an intact safetensors file.

Only safetensors are ever loaded: the weights a model needs are
``model.safetensors`` or the shards named by ``model.safetensors.index.json``
(what transformers reads with ``use_safetensors=True``), never a stray
``*.safetensors`` beside a pickle. The header check reads a few bytes per file,
so a truncated or corrupt download is refused in one line before a job
directory is touched, instead of failing deep inside a stage.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

from onecomp.errors import OneCompError

log = logging.getLogger("onecomp")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Bytes per element of the dtypes safetensors stores and torch reads.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit
_REDO = "replace it with an intact copy (download or convert it again)"


class DamagedFile(OneCompError):
    """A safetensors file whose header does not describe an intact file."""

    def __init__(self, file: Path, problem: str) -> None:
        super().__init__(f"{file} is not an intact safetensors file ({problem}); {_REDO}")
        self.problem = problem


def _damaged(file: Path, problem: str) -> DamagedFile:
    return DamagedFile(file, problem)


def read_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size:
    every tensor's dtype is known, and its bytes lie inside the file and match
    its shape. Raises a one-line error naming the file otherwise."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _damaged(file, f"{size} bytes, shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise _damaged(file, "truncated or corrupt header")
            raw = fh.read(n)
    except OSError as exc:
        raise OneCompError(f"cannot read {file}: {exc.strerror}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _damaged(file, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(file, "its header is not a mapping")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _damaged(file, "its metadata is not a mapping of strings")
    data_len = size - 8 - n
    for name, entry in header.items():
        problem = _entry_problem(entry, data_len)
        if problem is not None:
            raise _damaged(file, f"tensor {name}: {problem}")
    return header


def _entry_problem(entry: Any, data_len: int) -> str | None:
    if not isinstance(entry, dict):
        return "not a tensor entry"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return "invalid shape"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return "invalid data offsets"
    begin, end = offsets
    if not 0 <= begin <= end:
        return "invalid data offsets"
    if end > data_len:
        return f"its data ends {end - data_len} bytes past the end of the file (truncated)"
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        return "its size does not match its shape"
    return None


def drop_damaged(path: Path) -> str | None:
    """Remove a job's own work file whose header shows it damaged (cut short by a
    crash or a full disk), so the stage makes it again instead of failing on every
    resume. Returns the warning to record; None when the file is intact or absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        read_header(path)
    except DamagedFile as exc:
        path.unlink()
        message = f"work file {path} is damaged ({exc.problem}); dropped it, it is made again"
        log.warning(message)
        return message
    return None


def weight_files(path: Path) -> list[Path]:
    """The safetensors files the model in directory ``path`` is loaded from.

    Refuses, in one line, a directory whose weights are only pickles or are missing."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        return _shards(index)
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if path.is_dir() else []
    if pickles:
        raise OneCompError(
            f"{path} holds only pickled weights ({', '.join(pickles[:3])}); onecomp never loads pickled weights: "
            f"save the model with safe_serialization=True (or use a safetensors copy)"
        )
    raise OneCompError(f"{path} has no {WEIGHTS_FILE} (or {INDEX_FILE}); onecomp loads only safetensors weights")


def _shards(index: Path) -> list[Path]:
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise OneCompError(f"{index} is not valid JSON; {_REDO}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise OneCompError(f"{index} has no weight_map; {_REDO}")
    names = sorted(set(weight_map.values()))
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise OneCompError(f"{index} names {name!r}, which is not a safetensors file beside it; onecomp loads only safetensors")
        if not (index.parent / name).is_file():
            raise OneCompError(f"{index} names the shard {name}, which is missing; {_REDO}")
    return [index.parent / name for name in names]


def has_weights(path: Path) -> bool:
    """Whether ``path`` names the safetensors weights a model is loaded from (existence only)."""
    path = Path(path)
    return (path / WEIGHTS_FILE).is_file() or (path / INDEX_FILE).is_file()


def check_weights(path: Path) -> dict[Path, dict[str, Any]]:
    """The header of every weight file of the model in ``path``, each checked; for
    a sharded model, every tensor the index names is in the shard it names."""
    files = weight_files(path)
    headers = {f: read_header(f) for f in files}
    index = Path(path) / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        for tensor, shard in weight_map.items():
            if tensor not in headers[index.parent / shard]:
                raise OneCompError(f"{index} puts {tensor} in {shard}, which does not hold it; {_REDO}")
    return headers
