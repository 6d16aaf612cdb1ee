"""Perplexity on non-overlapping windows, token-weighted.

Protocol (recorded with every number): the text is one stream of documents
joined by blank lines, cut into windows of ``seqlen`` tokens that never overlap;
a BOS starts each window exactly when the tokenizer adds one by itself; every
position after the first predicts the next token, and PPL = exp(total NLL /
scored tokens). Computed in float32.

The decoder runs a batch of windows at once, the vocabulary projection one
window at a time: a batch's logits (batch x seqlen x vocabulary floats, 0.8 GB
for SmolLM2's 8 x 512 windows, 4.2 GB for Llama-3's vocabulary) never exist
together.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _logits_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The causal LM's own map from final hidden states to logits: its head, then
    the soft cap Gemma 2 and 3 put on the logits (the only post-processing the
    supported architectures apply)."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        if cap:
            out = torch.tanh(out / cap) * cap
        return out

    return logits


def perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    total_nll = 0.0
    total_tokens = 0
    decoder, logits_of = model.base_model, _logits_of(model)
    with torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
            for row in range(batch.shape[0]):
                logits = logits_of(hidden[row, :-1]).float()
                total_nll += float(F.cross_entropy(logits, batch[row, 1:], reduction="sum"))
                total_tokens += batch.shape[1] - 1
                del logits
            del hidden
            if on_batch:
                on_batch(batch.shape[0])
    mean = total_nll / max(total_tokens, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": int(input_ids.shape[0])}
