"""How much each linear layer's output matters to the model's loss: the mean
squared gradient of the next-token loss with respect to every output channel
(the diagonal empirical Fisher of the layer's outputs).

To second order, perturbing a layer's outputs by dy raises the mean token loss
by about 1/2 * sum_q E[g_q^2] E[dy_q^2]; the planner weighs each candidate's
output error with these E[g_q^2]. The pass runs block by block, forward and then
backward one block at a time (each block's input is kept, the block recomputed
with gradients): each batch reads every block from the model's files twice, in
float32, so only one block is ever present, as in every stage.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from onecomp.io import atomic_write_bytes
from onecomp.models.adapters import ArchAdapter
from onecomp.runtime.block_io import capture_block_inputs, run_block
from onecomp.runtime.forward import autocast, logits_fn
from onecomp.runtime.skeleton import StreamedModel

_LOGIT_CHUNK = 128  # tokens per vocabulary projection: bounds the float32 logits held at once


@contextlib.contextmanager
def _block(model: StreamedModel, prefix: str) -> Iterator[nn.Module]:
    """Block ``prefix`` in float32 on the device while the body runs; no parameter gradients."""
    block = model.load(prefix, torch.float32)
    try:
        yield block
    finally:
        model.release(prefix)


def _head_grad(model: StreamedModel, adapter: ArchAdapter, hidden: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, float, int]:
    """Gradient of the summed next-token loss with respect to the last block's output."""
    device = model.device
    head_name = model.module_name(model.model.get_output_embeddings())
    with model.loaded(adapter.final_norm_path, head_name, dtype=torch.float32) as (norm, head):
        return _chunked_head_grad(norm, logits_fn(model.model, head), hidden, ids, device, dtype)


def _chunked_head_grad(
    norm: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, ids: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, float, int]:
    grad = torch.zeros_like(hidden)
    total, count = 0.0, 0
    targets = ids[:, 1:].to(device)
    for s in range(0, hidden.shape[1] - 1, _LOGIT_CHUNK):
        e = min(s + _LOGIT_CHUNK, hidden.shape[1] - 1)
        h = hidden[:, s:e].detach().to(device).requires_grad_(True)
        with autocast(device, dtype):
            logits = logits_of(norm(h)).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, s:e].reshape(-1), reduction="sum")
        loss.backward()
        grad[:, s:e] = h.grad.to(grad.device)
        total += float(loss.detach())
        count += targets[:, s:e].numel()
    return grad, total, count


def output_grad_moments(
    model: StreamedModel,
    adapter: ArchAdapter,
    names: list[str],
    input_ids: torch.Tensor,
    batch_size: int,
    compute_dtype: torch.dtype = torch.float32,
    on_batch: Callable[[], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """E[g_q^2] per output channel of each named linear (full names), and a summary
    (mean loss, tokens) of the pass. Gradients are of the summed token loss."""
    device = model.device
    blocks = adapter.blocks(model.model)
    modules = {name: model.model.get_submodule(name) for name in names}
    sums = {name: torch.zeros(m.out_features, dtype=torch.float64) for name, m in modules.items()}
    counts = dict.fromkeys(names, 0)

    def make_hook(name: str) -> Callable:
        def hook(_mod: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            if output.requires_grad:
                def acc(g: torch.Tensor) -> None:
                    g2 = g.detach().float().reshape(-1, g.shape[-1])
                    sums[name] += (g2 * g2).sum(0).double().cpu()
                    counts[name] += g2.shape[0]

                output.register_hook(acc)

        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in modules.items()]
    loss_sum, loss_tokens = 0.0, 0
    try:
        with model.loaded(model.module_name(model.model.get_input_embeddings()), dtype=torch.float32), torch.no_grad():
            inputs = capture_block_inputs(model.model, blocks, input_ids, batch_size, device)
        for b, hidden in enumerate(inputs.hidden):
            saved = []
            h = hidden
            with torch.no_grad():
                for k in range(len(blocks)):
                    saved.append(h.to(hidden.device))  # kept off the accelerator
                    with _block(model, adapter.block_prefix(k)) as block, autocast(device, compute_dtype):
                        h = run_block(block, h, inputs.calls[k][b], device).float()
            ids = input_ids[b * batch_size : b * batch_size + hidden.shape[0]]
            grad, loss, count = _head_grad(model, adapter, h, ids, compute_dtype)
            loss_sum, loss_tokens = loss_sum + loss, loss_tokens + count
            for k in range(len(blocks) - 1, -1, -1):
                x = saved[k].detach().to(device).float().requires_grad_(True)
                with _block(model, adapter.block_prefix(k)) as block:
                    with autocast(device, compute_dtype):
                        out = run_block(block, x, inputs.calls[k][b], device)
                    out.float().backward(grad.to(device))
                grad = x.grad.detach()
                saved[k] = None
            if on_batch:
                on_batch()
    finally:
        for handle in handles:
            handle.remove()
    moments = {name: (sums[name] / max(counts[name], 1)).float() for name in names}
    return moments, {"mean_loss": loss_sum / max(loss_tokens, 1), "tokens": loss_tokens}


def save_moments(path: Path, moments: dict[str, torch.Tensor]) -> None:
    """Keep a gradient pass's moments (safetensors, written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_tensors({n: t.contiguous() for n, t in moments.items()}))


def load_moments(path: Path, names: list[str]) -> dict[str, torch.Tensor] | None:
    """Moments saved by :func:`save_moments`, if the file holds every one of ``names``."""
    if not path.is_file():
        return None
    tensors = load_tensors(path.read_bytes())
    return tensors if all(n in tensors for n in names) else None
