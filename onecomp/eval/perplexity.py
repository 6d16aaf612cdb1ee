"""Perplexity on non-overlapping windows, token-weighted.

Protocol (recorded with every number): the text is one stream of documents
joined by blank lines, cut into windows of ``seqlen`` tokens that never overlap;
a BOS starts each window exactly when the tokenizer adds one by itself; every
position after the first predicts the next token, and PPL = exp(total NLL /
scored tokens). Computed in float32.

The decoder runs a batch of windows at once, the vocabulary projection one
window at a time: a batch's logits (batch x seqlen x vocabulary floats, 0.8 GB
for SmolLM2's 8 x 512 windows, 4.2 GB for Llama-3's vocabulary) never exist
together. :func:`streamed_perplexity` scores a model read block by block from
its files (one block present at a time), with the same result.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from onecomp.models.adapters import ArchAdapter
from onecomp.runtime.forward import last_block_outputs, logits_fn, streamed_logits
from onecomp.runtime.skeleton import StreamedModel


def perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    total_nll = 0.0
    total_tokens = 0
    decoder, logits_of = model.base_model, logits_fn(model)
    with torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
            nll, tokens = _score_windows(logits_of, hidden, batch)
            total_nll, total_tokens = total_nll + nll, total_tokens + tokens
            del hidden
            if on_batch:
                on_batch(batch.shape[0])
    return _result(total_nll, total_tokens, input_ids.shape[0])


def _score_windows(logits_of: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of a batch of windows from their final hidden states, one window's logits at a time."""
    total = 0.0
    for row in range(batch.shape[0]):
        logits = logits_of(hidden[row, :-1]).float()
        total += float(F.cross_entropy(logits, batch[row, 1:].to(logits.device), reduction="sum"))
        del logits
    return total, batch.shape[0] * (batch.shape[1] - 1)


def _result(total_nll: float, total_tokens: int, windows: int) -> dict[str, float]:
    mean = total_nll / max(total_tokens, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": int(windows)}


def streamed_perplexity(
    model: StreamedModel,
    adapter: ArchAdapter,
    input_ids: torch.Tensor,
    batch_size: int = 4,
    on_block: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """:func:`perplexity` of a model read from its files one block at a time:
    every window's hidden states (host memory, the model's dtype) pass through
    each block in turn, then the final norm and the head. The peak is one block
    and the hidden states, whatever the model's depth."""
    inputs = last_block_outputs(model, adapter, input_ids, batch_size, on_block)
    total_nll, total_tokens = 0.0, 0
    for b, logits_of, final in streamed_logits(model, adapter, inputs.hidden):
        batch = input_ids[b * batch_size : (b + 1) * batch_size]
        with torch.no_grad():
            nll, tokens = _score_windows(logits_of, final, batch)
        total_nll, total_tokens = total_nll + nll, total_tokens + tokens
    return _result(total_nll, total_tokens, input_ids.shape[0])
