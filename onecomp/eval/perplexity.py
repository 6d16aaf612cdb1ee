"""Perplexity on non-overlapping windows, token-weighted.

Protocol (recorded with every number): the text is one stream of documents
joined by blank lines, cut into windows of ``seqlen`` tokens that never overlap;
a BOS starts each window exactly when the tokenizer adds one by itself; every
position after the first predicts the next token, and PPL = exp(total NLL /
scored tokens). Computed in float32.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    total_nll = 0.0
    total_tokens = 0
    with torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            for row in range(batch.shape[0]):  # one window at a time: no batch-sized float copy
                nll = F.cross_entropy(logits[row, :-1].float(), batch[row, 1:], reduction="sum")
                total_nll += float(nll)
                total_tokens += batch.shape[1] - 1
            del logits
            if on_batch:
                on_batch(batch.shape[0])
    mean = total_nll / max(total_tokens, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": int(input_ids.shape[0])}
