"""One token stream from many documents, shared by calibration and evaluation.

Documents are tokenized one by one without special tokens and joined by the
tokens of "\\n\\n", so the stream never depends on how a tokenizer would merge
across document boundaries, and tokenizing stops once enough tokens exist.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from onecomp.errors import OneCompError

SEPARATOR = "\n\n"
_BATCH = 32  # documents per tokenizer call: fast tokenizers parallelize a batch


@dataclass
class TokenStream:
    """Token ids plus where each document starts, to tell which documents a window spans."""

    ids: list[int]
    doc_ids: list[str]
    starts: list[int]

    def documents_in(self, begin: int, end: int) -> list[str]:
        """Ids of the documents overlapping tokens [begin, end); a separator counts with the document before it."""
        first = bisect.bisect_right(self.starts, begin) - 1
        last = bisect.bisect_left(self.starts, end) - 1
        return self.doc_ids[max(first, 0) : last + 1]


def add_bos(tokenizer: Any) -> bool:
    """True if the tokenizer prepends BOS by itself: then the model was trained to see it first."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; ``verbose=False`` silences the too-long warning (no model sees them whole)."""
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def token_stream(tokenizer: Any, documents: Sequence[tuple[str, str]], needed: int | None) -> TokenStream:
    """Tokenize ``documents`` in order until at least ``needed`` tokens (all of them if None)."""
    separator = _encode(tokenizer, [SEPARATOR])[0]
    stream = TokenStream(ids=[], doc_ids=[], starts=[])
    for offset in range(0, len(documents), _BATCH):
        batch = documents[offset : offset + _BATCH]
        for (doc_id, _), ids in zip(batch, _encode(tokenizer, [text for _, text in batch])):
            if stream.doc_ids:
                stream.ids.extend(separator)
            stream.starts.append(len(stream.ids))
            stream.doc_ids.append(doc_id)
            stream.ids.extend(ids)
            if needed is not None and len(stream.ids) >= needed:
                return stream
    return stream


def ids_sha256(input_ids: torch.Tensor) -> str:
    """A fingerprint of the exact int64 ids, so two runs can prove they saw the same tokens."""
    return hashlib.sha256(input_ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def check_seqlen(seqlen: int) -> None:
    """Windows shorter than 8 tokens measure nothing useful, and usually mean a typo."""
    if not isinstance(seqlen, int) or isinstance(seqlen, bool) or seqlen < 8:
        raise OneCompError(f"seqlen must be an integer >= 8, got {seqlen!r}")
