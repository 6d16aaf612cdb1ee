"""Calibration samples: fixed-length token windows cut from shuffled documents of the calib split.

The result records which documents each sample came from and a hash of the ids,
so a quantized checkpoint can be traced back to the exact data that shaped it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from onecomp.data._stream import add_bos, check_seqlen, ids_sha256, token_stream
from onecomp.data.sources import load_documents
from onecomp.errors import OneCompError

__all__ = ["CalibrationSet", "add_bos", "build_calibration"]


@dataclass
class CalibrationSet:
    """``input_ids`` is a LongTensor [nsamples, seqlen]; ``record`` is JSON-serializable provenance."""

    input_ids: torch.Tensor
    record: dict


def build_calibration(
    tokenizer: Any, spec: str = "builtin", nsamples: int = 128, seqlen: int = 512, seed: int = 0
) -> CalibrationSet:
    """Consecutive non-overlapping windows of a seeded shuffle of the calib documents.

    Each sample starts with BOS when the tokenizer adds one by itself, so the
    activations seen during calibration match those of normal use.
    """
    if not isinstance(nsamples, int) or isinstance(nsamples, bool) or nsamples < 1:
        raise OneCompError(f"nsamples must be an integer >= 1, got {nsamples!r}")
    check_seqlen(seqlen)
    source = load_documents(spec, "calib")
    documents = list(source.documents)
    random.Random(seed).shuffle(documents)
    bos = add_bos(tokenizer)
    width = seqlen - 1 if bos else seqlen
    needed = nsamples * width
    stream = token_stream(tokenizer, documents, needed)
    if len(stream.ids) < needed:
        raise OneCompError(
            f"calibration source {source.name!r} has {len(stream.ids)} tokens in its calib split, "
            f"but {nsamples} samples x {seqlen} tokens need {needed}: lower nsamples or seqlen, or use a larger source"
        )
    body = torch.tensor(stream.ids[:needed], dtype=torch.long).view(nsamples, width)
    if bos:
        body = torch.cat([torch.full((nsamples, 1), tokenizer.bos_token_id, dtype=torch.long), body], dim=1)
    samples = [
        {"offset": k * width, "documents": stream.documents_in(k * width, (k + 1) * width)} for k in range(nsamples)
    ]
    record = {
        "source": source.name,
        "description": source.description,
        "split": "calib",
        "seed": seed,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "add_bos": bos,
        "stream_tokens": needed,
        "samples": samples,
        "sha256": ids_sha256(body),
    }
    return CalibrationSet(input_ids=body, record=record)
