"""Durable per-block results of the layer-wise stage, so a killed job resumes
at the first unfinished block instead of starting over.

Each finished block is one safetensors file (packed tensors; formats and layer
records in its metadata), written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from onecomp.formats.base import FormatSpec, format_from_json
from onecomp.io import atomic_file, fsync_dir, save_safetensors
from onecomp.models.weights import DamagedFile, read_header
from onecomp.runtime.tensors import TensorEntry, data_start, read_entry
from onecomp.runtime.writer import PendingTensor

log = logging.getLogger("onecomp")


class BlockStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dropped: list[str] = []  # warnings about damaged block files that were dropped

    def _path(self, index: int) -> Path:
        return self.root / f"block-{index:04d}.safetensors"

    def has(self, index: int) -> bool:
        return self._path(index).is_file()

    def finished(self) -> int:
        """Number of leading blocks that are durably finished. A block file that
        does not read back (truncated, corrupt) is dropped with the blocks after
        it, so the job redoes them from the last good block instead of failing
        on every resume."""
        n = 0
        while self.has(n):
            problem = self._problem(n)
            if problem is not None:
                self._drop_from(n, problem)
                break
            n += 1
        return n

    def _problem(self, index: int) -> str | None:
        """What is wrong with a block file, or None when its header and metadata read back."""
        path = self._path(index)
        try:
            read_header(path)
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            for spec in json.loads(meta["formats"]).values():
                format_from_json(spec)
            json.loads(meta["records"])
        except DamagedFile as exc:
            return exc.problem
        except (SafetensorError, OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None

    def _drop_from(self, index: int, problem: str) -> None:
        names = (p.name.removeprefix("block-").removesuffix(".safetensors") for p in self.root.glob("block-*.safetensors"))
        later = sorted(int(n) for n in names if n.isdigit() and int(n) > index)
        for i in (index, *later):
            self._path(i).unlink()
        fsync_dir(self.root)
        after = f" and the {len(later)} after it" if later else ""
        message = f"block file {self._path(index).name} in {self.root} is damaged ({problem}); dropped it{after}, redoing from block {index}"
        log.warning(message)
        self.dropped.append(message)

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
            save_safetensors(tensors, tmp, meta)

    def load(self, index: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, FormatSpec], list[dict]]:
        packed: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(self._path(index)), framework="pt") as fh:
            meta = fh.metadata()
            for key in fh.keys():
                layer, name = key.split("::", 1)
                packed.setdefault(layer, {})[name] = fh.get_tensor(key)
        formats = {k: format_from_json(v) for k, v in json.loads(meta["formats"]).items()}
        return packed, formats, json.loads(meta["records"])

    def pending(self, index: int) -> dict[str, dict[str, PendingTensor]]:
        """Block ``index``'s packed tensors, each read from its file only when it is
        produced: what the pivot writer streams, without the block in memory."""
        path = self._path(index)
        header = read_header(path)
        start = data_start(path)
        out: dict[str, dict[str, PendingTensor]] = {}
        for key, raw in header.items():
            layer, name = key.split("::", 1)
            entry = TensorEntry(path, start, raw)
            out.setdefault(layer, {})[name] = PendingTensor(key, entry.dtype, entry.shape, lambda e=entry: read_entry(e))
        return out
