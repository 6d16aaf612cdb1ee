"""Global refinement: end-to-end distillation of the quantized model toward the
original's next-token distribution, training continuous parameters only.

The teacher runs once, streamed one block at a time from the original's files:
its top-k log-probabilities per position are cached on disk (float16 values,
int32 token ids), so the teacher and the student are never in memory together.
The student's vocabulary projection runs in chunks of positions under
activation checkpointing, so memory does not grow with the vocabulary times the
sequence length. ``accelerate`` drives the training loop on
one device (the CPU or one GPU); several GPUs are not supported yet.

Progress is durable: every ``checkpoint_every`` steps the trained values and
the optimizer state are written atomically; a resumed run continues from the
last of them and, since the batch order depends only on the seed and the epoch,
produces the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.checkpoint import checkpoint

from onecomp.io import atomic_file, save_safetensors
from onecomp.models.adapters import ArchAdapter
from onecomp.refine.blockwise import round_to
from onecomp.refine.settings import GlobalSettings
from onecomp.refine.trainable import commit_trainable, make_trainable, norm_weights, scale_parameters
from onecomp.runtime.forward import autocast, last_block_outputs, streamed_logits
from onecomp.runtime.skeleton import StreamedModel


TEACHER_FILE = "teacher.safetensors"
PROGRESS_FILE = "progress.safetensors"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_file(path) as tmp:
        save_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata)


@torch.no_grad()
def cache_teacher(
    teacher: StreamedModel,
    adapter: ArchAdapter,
    input_ids: torch.Tensor,
    topk: int,
    compute_dtype: torch.dtype,
    path: Path,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Top-k log-probabilities of the teacher for every position, written once.
    The teacher is read one block at a time: every row's hidden states pass
    each block in turn (one row per batch, as a whole-model forward of each row
    would run), then the head, one row's logits at a time."""
    inputs = last_block_outputs(teacher, adapter, input_ids, 1, on_step, compute_dtype)
    values, indices = [], []
    for _, logits_of, final in streamed_logits(teacher, adapter, inputs.hidden, compute_dtype):
        with autocast(teacher.device, compute_dtype):
            logits = logits_of(final)
        logp = torch.log_softmax(logits.float(), dim=-1)
        del logits
        v, i = logp.topk(topk, dim=-1)
        values.append(v.to(torch.float16).cpu())
        indices.append(i.to(torch.int32).cpu())
    if on_step:
        on_step(1)
    _atomic_save({"values": torch.cat(values), "indices": torch.cat(indices)}, path, {"topk": str(topk)})


def load_teacher(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor("values"), fh.get_tensor("indices")


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, idx: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(head(hidden).float(), dim=-1)
    return -(probs * logp.gather(-1, idx)).sum()


def distill_loss(model: nn.Module, input_ids: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, chunk: int) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's renormalized top-k
    distribution (equal to the top-k KL up to the teacher's constant entropy)."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    probs = torch.softmax(values.float(), dim=-1)
    idx = indices.long()
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[1], chunk):
        total = total + checkpoint(
            _chunk_loss, head, hidden[:, s : s + chunk], idx[:, s : s + chunk], probs[:, s : s + chunk], use_reentrant=False
        )
    return total / (hidden.shape[0] * hidden.shape[1])


def _trainables(model: nn.Module, settings: GlobalSettings) -> tuple[list[str], list[nn.Parameter], list[nn.Parameter]]:
    """Names of the trained parameters, the scale ratios and the norm weights."""
    for p in model.parameters():
        p.requires_grad_(False)
    make_trainable(model)
    norms = norm_weights(model) if settings.train_norms else []
    scale_params = scale_parameters(model)
    for p in scale_params + norms:
        p.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return names, scale_params, norms


def _save_progress(path: Path, model: nn.Module, names: list[str], opt: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
    params = dict(model.named_parameters())
    tensors = {f"param::{n}": params[n].detach().cpu() for n in names}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt::{i}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu()
    _atomic_save(tensors, path, {"step": str(step), "losses": json.dumps(losses)})


def _load_progress(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    params = dict(model.named_parameters())
    state: dict[int, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        for key in fh.keys():
            kind, rest = key.split("::", 1)
            if kind == "param":
                with torch.no_grad():
                    params[rest].copy_(fh.get_tensor(key))
            else:
                i, k = rest.split("::", 1)
                state.setdefault(int(i), {})[k] = fh.get_tensor(key)
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    return int(meta["step"]), json.loads(meta["losses"])


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Every step's rows, fixed by the seed: a resumed run sees the same batches."""
    steps = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        steps.extend(perm[s : s + batch_size] for s in range(0, n, batch_size))
    return steps


def distill(
    model: nn.Module,
    input_ids: torch.Tensor,
    work: Path,
    settings: GlobalSettings,
    device: torch.device,
    compute_dtype: torch.dtype,
    storage_dtype: torch.dtype,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Train ``model`` (packed layers) in place against the cached teacher in ``work``."""
    from accelerate import Accelerator

    t0 = time.perf_counter()
    values, indices = load_teacher(work / TEACHER_FILE)
    names, scale_params, norms = _trainables(model, settings)
    groups = [{"params": scale_params, "lr": settings.lr}]
    if norms:
        groups.append({"params": norms, "lr": settings.lr})
    opt = torch.optim.Adam(groups)
    acc = Accelerator(cpu=device.type == "cpu")
    model, opt = acc.prepare(model, opt)
    steps = batch_order(input_ids.shape[0], settings.batch_size, settings.epochs, settings.seed)
    progress = work / PROGRESS_FILE
    start, losses = (0, [])
    if progress.is_file():
        start, losses = _load_progress(progress, acc.unwrap_model(model), opt)
    model.eval()  # no dropout: the student must match the teacher's deterministic forward
    for step in range(start, len(steps)):
        rows = steps[step][acc.process_index :: acc.num_processes] or steps[step][:1]
        with torch.autocast(acc.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
            loss = distill_loss(acc.unwrap_model(model), input_ids[rows].to(acc.device), values[rows].to(acc.device), indices[rows].to(acc.device), settings.chunk)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == len(steps):
            if acc.is_main_process:
                _save_progress(progress, acc.unwrap_model(model), names, opt, step + 1, losses)
            acc.wait_for_everyone()
        if on_step:
            on_step(step + 1, len(steps), losses[-1])
    model = acc.unwrap_model(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    commit_trainable(model)
    round_to(norms, storage_dtype)
    return {"steps": len(steps), "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None, "seconds": time.perf_counter() - t0}
