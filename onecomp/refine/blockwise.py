"""Block-wise refinement: each decoder block's continuous parameters are
trained so that, fed the quantized model's own hidden states, it reproduces the
original block's outputs on the original hidden states (teacher outputs
computed once per block). One block is trained at a time; the two hidden
streams are the only activations kept.

A block whose calibration loss would get worse keeps its starting values, so
this stage never makes a block worse on the data it sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from onecomp.refine.settings import BlockwiseSettings
from onecomp.refine.trainable import commit_trainable, make_trainable, norm_weights, scale_parameters
from onecomp.runtime.block_io import BlockInputs, capture_block_inputs, run_block
from onecomp.runtime.forward import autocast


@dataclass
class BlockStats:
    index: int
    loss_before: float
    loss_after: float
    kept: bool  # False: training did not help and the starting values were restored
    seconds: float


def _relative_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out, target = out.float(), target.float()
    return ((out - target) ** 2).mean() / (target**2).mean().clamp(min=1e-12)


@torch.no_grad()
def _evaluate(
    block: nn.Module, inputs: BlockInputs, index: int, targets: list[torch.Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[float, list[torch.Tensor]]:
    total, outs = 0.0, []
    for b, hidden in enumerate(inputs.hidden):
        with autocast(device, dtype):
            out = run_block(block, hidden, inputs.calls[index][b], device)
        total += float(_relative_mse(out, targets[b].to(device)))
        outs.append(out.to(hidden.device, hidden.dtype))
    return total / max(len(inputs.hidden), 1), outs


def round_to(params: list[nn.Parameter], dtype: torch.dtype) -> None:
    """Give float parameters exactly the values their storage dtype can hold."""
    with torch.no_grad():
        for p in params:
            p.copy_(p.to(dtype).to(p.dtype))


def refine_block(
    block: nn.Module,
    inputs: BlockInputs,
    index: int,
    targets: list[torch.Tensor],
    settings: BlockwiseSettings,
    device: torch.device,
    compute_dtype: torch.dtype,
    storage_dtype: torch.dtype,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[BlockStats, list[torch.Tensor]]:
    """Train one block in place; returns its stats and its outputs (the next block's inputs)."""
    t0 = time.perf_counter()
    block.to(device)
    before_state = {k: v.detach().clone() for k, v in block.state_dict().items()}
    loss_before, outs_before = _evaluate(block, inputs, index, targets, device, compute_dtype)
    for p in block.parameters():
        p.requires_grad_(False)
    make_trainable(block)
    scale_params = scale_parameters(block)
    norms = norm_weights(block) if settings.train_norms else []
    for p in scale_params + norms:
        p.requires_grad_(True)
    groups = [{"params": scale_params, "lr": settings.lr}]
    if norms:
        groups.append({"params": norms, "lr": settings.lr})
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + index)
    step = 0
    for _epoch in range(settings.epochs):
        for b in torch.randperm(len(inputs.hidden), generator=gen).tolist():
            with autocast(device, compute_dtype):
                out = run_block(block, inputs.hidden[b], inputs.calls[index][b], device)
            loss = _relative_mse(out, targets[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if on_step:
                on_step(step, loss.item())
    for p in block.parameters():
        p.requires_grad_(False)
    commit_trainable(block)
    round_to(norms, storage_dtype)
    loss_after, outs_after = _evaluate(block, inputs, index, targets, device, compute_dtype)
    kept = loss_after < loss_before
    if not kept:
        block.load_state_dict(before_state)
        outs_after, loss_after = outs_before, loss_before
    block.to("cpu")
    return BlockStats(index, loss_before, loss_after, kept, time.perf_counter() - t0), outs_after


@torch.no_grad()
def teacher_outputs(
    block: nn.Module, inputs: BlockInputs, index: int, device: torch.device, compute_dtype: torch.dtype
) -> list[torch.Tensor]:
    block.to(device)
    outs = []
    for b, hidden in enumerate(inputs.hidden):
        with autocast(device, compute_dtype):
            out = run_block(block, hidden, inputs.calls[index][b], device)
        outs.append(out.to(hidden.device, hidden.dtype))
    return outs


def capture_streams(
    student: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[BlockInputs, BlockInputs]:
    """Inputs of the first block for both models: the embeddings are not
    quantized, so the quantized and original streams start identical."""
    q = capture_block_inputs(student, blocks, input_ids, batch_size, device)
    fp = BlockInputs(hidden=[h.clone() for h in q.hidden], calls=q.calls)
    return q, fp
