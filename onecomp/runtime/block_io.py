"""Calibration activations, streamed block by block.

Inputs of the first block are captured by running the model with every block
replaced by a pass-through recorder, which also records the keyword arguments
each block receives (masks and position embeddings differ per block on
architectures with sliding-window layers). Only the current block ever runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

_DROP_KWARGS = ("cache", "past_key_values", "past_key_value")


class _StopCapture(Exception):
    pass


class _Recorder(nn.Module):
    def __init__(self, index: int, sink: "BlockInputs", last: bool, storage: torch.device) -> None:
        super().__init__()
        self.index, self.sink, self.last, self.storage = index, sink, last, storage

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.index == 0:
            self.sink.hidden.append(hidden_states.detach().to(self.storage))
        kept = {k: v for k, v in kwargs.items() if k not in _DROP_KWARGS}
        self.sink.calls[self.index].append((args, kept))
        if self.last:
            raise _StopCapture
        return hidden_states


@dataclass
class BlockInputs:
    """The hidden states entering the current block, batch by batch, and the
    positional/keyword arguments every block receives for each batch."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    calls: list[list[tuple[tuple, dict]]] = field(default_factory=list)

    @property
    def ntokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def split_batches(input_ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [input_ids[start : start + batch_size] for start in range(0, input_ids.shape[0], batch_size)]


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor | list[torch.Tensor], batch_size: int, device: torch.device
) -> BlockInputs:
    """The first block's inputs for ``input_ids`` in batches of ``batch_size``
    rows, or for each tensor of a list of batches (which may differ in length)."""
    batches = split_batches(input_ids, batch_size) if isinstance(input_ids, torch.Tensor) else input_ids
    sink = BlockInputs(calls=[[] for _ in blocks])
    originals = list(blocks)
    try:
        for i in range(len(blocks)):
            blocks[i] = _Recorder(i, sink, i == len(blocks) - 1, batches[0].device if batches else torch.device("cpu"))
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopCapture:
                    pass
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return sink


def _to(obj: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if obj.is_floating_point() else obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


def block_dtype(block: nn.Module) -> torch.dtype:
    return next(p.dtype for p in block.parameters() if p.is_floating_point())


def run_block(block: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict], device: torch.device) -> torch.Tensor:
    """Run ``block`` in its own dtype on ``device`` (float arguments are cast to match)."""
    args, kwargs = call
    dtype = block_dtype(block)
    out = block(hidden.to(device, dtype), *_to(args, device, dtype), **_to(kwargs, device, dtype))
    return out[0] if isinstance(out, tuple) else out


def iter_batches(inputs: BlockInputs, index: int) -> Iterator[tuple[int, torch.Tensor, tuple[tuple, dict]]]:
    for b, hidden in enumerate(inputs.hidden):
        yield b, hidden, inputs.calls[index][b]


class _StopForward(Exception):
    pass


class InputStatistics:
    """Accumulates H = 2/N * sum x x^T of a module's input over calibration tokens."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.sum = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum.addmm_(x.T, x)
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return self.sum * (2.0 / max(self.count, 1))


class PairedInputStatistics:
    """What QEP needs of a module's input on both paths, over the same tokens:
    H = 2/N Σ x̂x̂ᵀ (quantized path), C = 2/N Σ (x − x̂)x̂ᵀ (x: full-precision
    path) and, for a residual writer, R = 2/N Σ (h − ĥ)x̂ᵀ with h the residual
    stream it adds to. Each costs one input-sized product per batch, as much as
    the Hessian itself, so nothing else is accumulated."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.quant = InputStatistics(features, device)
        self.cross = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.residual: torch.Tensor | None = None

    def add(self, x_fp: torch.Tensor, x_q: torch.Tensor, drift: torch.Tensor | None = None) -> None:
        """Inputs from bfloat16 forwards are exact in bfloat16, so C and R are
        multiplied in bfloat16 (fp32 accumulation inside the product, one rounding of
        each batch's product): two to three times faster on CPUs with bf16 units,
        and a correction term tolerates it. H, which GPTQ itself uses, stays float32."""
        low = torch.bfloat16 if x_q.dtype == torch.bfloat16 else torch.float32
        xq = x_q.reshape(-1, x_q.shape[-1])
        diff = (x_fp.reshape(-1, x_fp.shape[-1]) - xq).to(low)  # bfloat16 subtraction rounds the exact difference once, as float32 and a cast do
        self.quant.add(xq)
        xq_low = xq.to(low)
        self.cross.add_(torch.mm(diff.T, xq_low))  # the low-precision product is added to the float32 sum
        del diff
        if drift is not None:
            d = drift.reshape(-1, drift.shape[-1])
            if self.residual is None:
                self.residual = torch.zeros(d.shape[1], xq.shape[1], dtype=torch.float32, device=xq.device)
            self.residual.add_(torch.mm(d.to(low).T, xq_low))

    def finish(self) -> "PairedStatistics":
        scale = 2.0 / max(self.quant.count, 1)
        residual = None if self.residual is None else self.residual * scale
        return PairedStatistics(self.quant.hessian(), self.cross * scale, residual)


@dataclass
class PairedStatistics:
    hessian: torch.Tensor
    cross: torch.Tensor
    residual: torch.Tensor | None = None


def module_inputs(
    block: nn.Module, modules: list[nn.Module], hidden: torch.Tensor, call: tuple[tuple, dict], device: torch.device
) -> list[torch.Tensor]:
    """The inputs ``modules`` receive when ``block`` runs on ``hidden``; the forward
    stops at the last of them (they must be listed in execution order)."""
    seen: dict[int, torch.Tensor] = {}

    def hook(index: int, last: bool):
        def fn(_mod: nn.Module, args: tuple) -> None:
            seen[index] = args[0].detach()
            if last:
                raise _StopForward

        return fn

    handles = [m.register_forward_pre_hook(hook(i, i == len(modules) - 1)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            try:
                run_block(block, hidden, call, device)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(modules):
        raise RuntimeError("the block's forward never reached the module")
    return [seen[i] for i in range(len(modules))]


FPInputs = dict[str, list[torch.Tensor]]  # module name -> its full-precision input, batch by batch


def propagate_capturing(
    block: nn.Module, names: list[str], inputs: BlockInputs, index: int, device: torch.device, storage: torch.device
) -> FPInputs:
    """One forward of ``block`` over all batches that keeps the inputs of the
    modules ``names`` (in the block's dtype, on ``storage``; the name "" keeps
    the block's own input) and replaces the stored hidden states by the block's
    outputs. The original block never changes, so one forward serves every
    group of the block (QEP)."""
    seen: FPInputs = {n: [] for n in names}
    handles = [
        block.get_submodule(n).register_forward_pre_hook(lambda _m, args, n=n: seen[n].append(args[0].detach().to(storage)))
        for n in names
        if n
    ]
    try:
        with torch.no_grad():
            for b, hidden, call in iter_batches(inputs, index):
                if "" in seen:
                    seen[""].append(hidden)
                inputs.hidden[b] = run_block(block, hidden, call, device).to(hidden.device)
    finally:
        for h in handles:
            h.remove()
    return seen


def collect_paired_statistics(
    block: nn.Module,
    module_name: str,
    fp_block: nn.Module,
    inputs: BlockInputs,
    fp_inputs: BlockInputs,
    index: int,
    device: torch.device,
    residual_source: str | None = None,
    fp_cached: FPInputs | None = None,
) -> PairedStatistics:
    """QEP's statistics of the input of ``module_name``: the partly quantized
    ``block`` on the quantized stream beside the original ``fp_block`` on the
    full-precision stream, batch by batch, so only one batch of each path is
    alive at a time. ``residual_source`` names the module whose input is the
    residual stream the module adds to ("" for the block's input), for R.
    With ``fp_cached`` (from :func:`propagate_capturing`), the full-precision
    inputs are read from it instead of recomputed; the result is the same."""
    wanted = [residual_source, module_name] if residual_source else [module_name]
    stats = PairedInputStatistics(block.get_submodule(module_name).in_features, device)
    for b, ((_, hidden, call), fp_hidden) in enumerate(zip(iter_batches(inputs, index), fp_inputs.hidden)):
        q_in = module_inputs(block, [block.get_submodule(n) for n in wanted], hidden, call, device)
        if fp_cached is not None:
            fp_in = [fp_cached[n][b].to(device) for n in wanted]
            fp_block_input = fp_cached[""][b] if residual_source == "" else None
        else:
            fp_in = module_inputs(fp_block, [fp_block.get_submodule(n) for n in wanted], fp_hidden, call, device)
            fp_block_input = fp_hidden
        drift = None
        if residual_source is not None:
            r_fp, r_q = (fp_in[0], q_in[0]) if residual_source else (fp_block_input, hidden)
            drift = r_fp.to(device).float() - r_q.to(device).float()
        stats.add(fp_in[-1], q_in[-1], drift)
    return stats.finish()


def collect_input_hessian(
    block: nn.Module,
    module: nn.Module,
    inputs: BlockInputs,
    index: int,
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Hessian of ``module``'s input over all batches, running ``block`` only as far as
    ``module`` (the forward is stopped right after its input is seen)."""
    stats = InputStatistics(module.in_features, device)
    for _, hidden, call in iter_batches(inputs, index):
        (x,) = module_inputs(block, [module], hidden, call, device)
        stats.add(x)
        if on_batch:
            on_batch()
    return stats.hessian()


def propagate(block: nn.Module, inputs: BlockInputs, index: int, device: torch.device) -> None:
    """Replace the stored hidden states by ``block``'s outputs: the next block's inputs."""
    with torch.no_grad():
        for b, hidden, call in iter_batches(inputs, index):
            inputs.hidden[b] = run_block(block, hidden, call, device).to(hidden.device)


def forward_with_input_hessians(
    block: nn.Module, modules: list[nn.Module], inputs: BlockInputs, index: int, device: torch.device
) -> list[torch.Tensor]:
    """One forward of ``block`` over all batches that collects the input Hessian of
    every module in ``modules`` and replaces the stored hidden states by the block's
    outputs. Only valid while the block's weights do not change (measurement)."""
    stats = [InputStatistics(m.in_features, device) for m in modules]
    handles = [m.register_forward_pre_hook(lambda _m, args, st=st: st.add(args[0].detach())) for m, st in zip(modules, stats)]
    try:
        with torch.no_grad():
            for b, hidden, call in iter_batches(inputs, index):
                inputs.hidden[b] = run_block(block, hidden, call, device).to(hidden.device)
    finally:
        for h in handles:
            h.remove()
    return [st.hessian() for st in stats]
