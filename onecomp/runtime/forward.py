"""Whole-model forwards streamed block by block: every row's hidden states pass
through one block at a time (read from the files, released after), then the
final norm and the head. What evaluation and the global stage's teacher need
of a model that need not fit in memory."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator

import torch
from torch import nn

from onecomp.models.adapters import ArchAdapter
from onecomp.runtime.block_io import BlockInputs, capture_block_inputs, propagate
from onecomp.runtime.skeleton import StreamedModel


def logits_fn(model: nn.Module, head: nn.Module | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The causal LM's own map from final hidden states to logits: its head, then
    the soft cap Gemma 2 and 3 put on the logits (the only post-processing the
    supported architectures apply), computed in float32 whatever the head's
    autocast dtype."""
    head = model.get_output_embeddings() if head is None else head
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        if cap:
            out = torch.tanh(out.float() / cap) * cap
        return out

    return logits


def autocast(device: torch.device, dtype: torch.dtype | None):  # noqa: ANN201
    """Autocast to ``dtype`` on ``device``; nothing for None or float32."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def last_block_outputs(
    model: StreamedModel,
    adapter: ArchAdapter,
    input_ids: torch.Tensor | list[torch.Tensor],
    batch_size: int,
    on_block: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> BlockInputs:
    """Every batch's hidden states after the last block (host memory, the
    dtype the blocks return); ``input_ids`` in batches of ``batch_size`` rows,
    or a list of batches. The peak is one block and the hidden states,
    whatever the model's depth."""
    device = model.device
    blocks = adapter.blocks(model.model)
    with model.loaded(model.module_name(model.model.get_input_embeddings())), autocast(device, autocast_dtype):
        inputs = capture_block_inputs(model.model, blocks, input_ids, batch_size, device)
    for index in range(len(blocks)):
        prefix = adapter.block_prefix(index)
        with autocast(device, autocast_dtype):
            propagate(model.load(prefix), inputs, index, device)
        model.release(prefix)
        if on_block:
            on_block(1)
    return inputs


def streamed_logits(
    model: StreamedModel, adapter: ArchAdapter, hidden: list[torch.Tensor], autocast_dtype: torch.dtype | None = None
) -> Iterator[tuple[int, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]:
    """(batch index, the logits map, the batch's normed final hidden states on
    the device) for each batch of ``hidden``, with the final norm and the head
    loaded once for all of them: the caller applies the head to as few
    positions at a time as it likes."""
    device = model.device
    head_name = model.module_name(model.model.get_output_embeddings())
    with torch.no_grad(), model.loaded(adapter.final_norm_path, head_name) as (norm, head):
        logits_of = logits_fn(model.model, head)
        for b, h in enumerate(hidden):
            with autocast(device, autocast_dtype):
                final = norm(h.to(device, model.dtype))
            yield b, logits_of, final
