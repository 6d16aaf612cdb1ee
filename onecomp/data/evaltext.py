"""Perplexity windows from the eval split, under a fixed protocol.

Documents keep the source's canonical order (sorted by title for the built-in
corpus, file order for local files, dataset order for hub sets) and are never
shuffled, so every checkpoint is scored on exactly the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp.data._stream import add_bos, check_seqlen, ids_sha256, token_stream
from onecomp.data.sources import load_documents
from onecomp.errors import OneCompError

__all__ = ["EvalWindows", "eval_windows", "selection_windows"]


@dataclass
class EvalWindows:
    """``input_ids`` [nwindows, seqlen]; ``bos`` says whether position 0 of each window is an added BOS."""

    input_ids: torch.Tensor
    bos: bool
    record: dict


SELECT_SEQLEN = 512
SELECT_WINDOWS = 16  # a quarter of the default evaluation: enough to rank pivots, cheap next to the stages


def selection_windows(tokenizer: Any) -> EvalWindows:
    """The windows that pick the best pivot: the built-in selection split, a fixed protocol whatever the job reports."""
    return eval_windows(tokenizer, "builtin", SELECT_SEQLEN, SELECT_WINDOWS, split="select")


def eval_windows(
    tokenizer: Any, spec: str = "builtin", seqlen: int = 512, max_windows: int | None = 64, split: str = "eval"
) -> EvalWindows:
    """The first ``max_windows`` full non-overlapping windows of the split's stream (all of them if None)."""
    check_seqlen(seqlen)
    if max_windows is not None and (not isinstance(max_windows, int) or isinstance(max_windows, bool) or max_windows < 1):
        raise OneCompError(f"max_windows must be an integer >= 1 or None, got {max_windows!r}")
    source = load_documents(spec, split)
    bos = add_bos(tokenizer)
    width = seqlen - 1 if bos else seqlen
    stream = token_stream(tokenizer, source.documents, None if max_windows is None else max_windows * width)
    nwindows = len(stream.ids) // width
    if max_windows is not None:
        nwindows = min(nwindows, max_windows)
    if nwindows == 0:
        raise OneCompError(
            f"evaluation source {source.name!r} has only {len(stream.ids)} tokens in its {split} split, "
            f"fewer than one window of {seqlen}: lower seqlen or use a larger source"
        )
    body = torch.tensor(stream.ids[: nwindows * width], dtype=torch.long).view(nwindows, width)
    if bos:
        body = torch.cat([torch.full((nwindows, 1), tokenizer.bos_token_id, dtype=torch.long), body], dim=1)
    record = {
        "source": source.name,
        "description": source.description,
        "split": split,
        "seqlen": seqlen,
        "nwindows": nwindows,
        "max_windows": max_windows,
        "bos": bos,
        "total_tokens": int(body.numel()),
        "stream_tokens": nwindows * width,
        "documents": len(stream.documents_in(0, nwindows * width)),
        "sha256": ids_sha256(body),
    }
    return EvalWindows(input_ids=body, bos=bos, record=record)
