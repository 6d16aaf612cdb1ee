"""Layer-wise stage: quantize each block's linears in execution order, from
inputs that flow through the already-quantized earlier blocks.

Inside a block, groups run in order and each group's statistics are collected
after the previous groups were quantized (true-sequential), stopping the block's
forward at the group so the extra cost stays small.

With QEP, a second stream runs beside the quantized one: the original block on
the full-precision hidden states. Both streams hold one block's inputs, never
more; linears that read one input (q/k/v; gate/up) share the statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from onecomp.algorithms.gptq import HessianError, relative_output_error
from onecomp.algorithms.qep import QEPError, qep_corrected_weight
from onecomp.algorithms.result import Damping
from onecomp.formats.base import FormatSpec
from onecomp.errors import OneCompError
from onecomp.methods import Method, MethodOptions, method_for
from onecomp.models.adapters import ArchAdapter
from onecomp.runtime.skeleton import StreamedModel
from onecomp.stages.block_store import BlockStore
from onecomp.runtime.block_io import (
    BlockInputs,
    FPInputs,
    PairedStatistics,
    block_dtype,
    capture_block_inputs,
    collect_input_hessian,
    collect_paired_statistics,
    propagate,
    propagate_capturing,
)
from onecomp.stages.qep import QEPSettings


@dataclass
class LayerRecord:
    name: str
    shape: tuple[int, int]
    fmt: FormatSpec
    error: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)  # JSON; "warnings": what degraded this layer

    @property
    def warnings(self) -> list[str]:
        return list(self.info.get("warnings", []))


@dataclass
class LayerwiseResult:
    packed: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    records: list[LayerRecord] = field(default_factory=list)


ProgressFn = Callable[[int, str, float], None]


@dataclass
class FullPrecisionPath:
    """The original block and its inputs on the full-precision stream (QEP)."""

    settings: QEPSettings
    inputs: BlockInputs
    block: nn.Module | None = None
    cache: FPInputs | None = None  # this block's full-precision inputs, when they fit settings.cache_gb

    def residual_source(self, adapter: ArchAdapter, names: list[str]) -> str | None:
        """Where the residual stream a single residual-writing linear adds to is read, if the term is on."""
        return adapter.residual_writers.get(names[0]) if self.settings.residual and len(names) == 1 else None

    def start_block(self, adapter: ArchAdapter, groups: list[list[str]], index: int, device: torch.device) -> None:
        """Run the original block once, keeping its layers' inputs, when they fit the cache limit.
        That also propagates the full-precision stream to the next block."""
        assert self.block is not None
        names = [g[0] for g in groups]
        names += [s for s in (self.residual_source(adapter, g) for g in groups) if s is not None]
        hidden = self.inputs.hidden[0].shape[-1]
        per_token = sum(getattr(self.block.get_submodule(n), "in_features", hidden) if n else hidden for n in names)
        nbytes = self.inputs.ntokens * per_token * torch.finfo(block_dtype(self.block)).bits // 8
        if nbytes <= self.settings.cache_gb * 1e9:
            self.cache = propagate_capturing(self.block, names, self.inputs, index, device, self.inputs.hidden[0].device)


def damping_record(damping: Damping | None, key: str, solver: str, weakens: str) -> dict[str, Any]:
    """A layer record's fields for the damping a solve used (``key``), and a
    warning when the solve had to raise it: the layer silently got less of what
    the solver is for, which the job must say."""
    if damping is None:
        return {}
    fields: dict[str, Any] = {key: damping.used}
    if damping.raised:
        fields["warnings"] = [
            f"{solver}: the Hessian was not positive definite at damping {damping.requested:g}; it took {damping.used:g} "
            f"x mean(diag H), which weakens {weakens} on this layer"
        ]
    return fields


def _merge_records(*parts: dict[str, Any]) -> dict[str, Any]:
    """Record fields merged, their warnings concatenated."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, []) + v if k == "warnings" else v
    return out


def _weight_error(w: torch.Tensor, q: torch.Tensor) -> float:
    return float(((w.float() - q) ** 2).sum() / (w.float() ** 2).sum().clamp(min=1e-30))


def quantize_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    fmt: FormatSpec,
    method: Method,
    options: MethodOptions,
    grad_sq: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, FormatSpec, float, dict]:
    """Quantize one float32 weight: packed tensors, dequantized weight, exact spec,
    error, info (JSON: the method's details, "damp" it used, "warnings").
    ``grad_sq``: E[g^2] per output channel, for methods that weight rows by it
    (see :mod:`onecomp.algorithms.row_weights`)."""
    method, options = method_for(fmt, method, options)
    if method.needs_hessian and hessian is None:
        raise OneCompError(f"{fmt.label()} layers need calibration data; run the job with a calibrated method (e.g. --method gptq)")
    ((result, spec),) = method.quantize_weighted(weight, hessian, [fmt], options, grad_sq)
    deq = result.dequantize()
    error = relative_output_error(weight, deq, hessian) if hessian is not None else _weight_error(weight, deq)
    info = dict(getattr(result, "info", {}))
    info.update(damping_record(info.pop("damping", None), "damp", method.name, "its error feedback"))
    return spec.pack(result), deq, spec, error, info


def _quantize_block(
    block: nn.Module,
    index: int,
    prefix: str,
    adapter: ArchAdapter,
    plan: dict[str, FormatSpec],
    method: Method,
    options: MethodOptions,
    inputs: BlockInputs | None,
    device: torch.device,
    compute_dtype: torch.dtype,
    weight32: Callable[[str], torch.Tensor],
    out: LayerwiseResult,
    progress: ProgressFn | None,
    fp: FullPrecisionPath | None = None,
    true_sequential: bool = True,
    grad_sq: dict[str, torch.Tensor] | None = None,
) -> None:
    groups = [[n for n in group if f"{prefix}.{n}" in plan] for group in adapter.groups]
    groups = [names for names in groups if names]

    def statistics(names: list[str]) -> tuple[torch.Tensor | None, PairedStatistics | None]:
        if fp is not None:
            assert inputs is not None and fp.block is not None
            source = fp.residual_source(adapter, names)
            stats = collect_paired_statistics(block, names[0], fp.block, inputs, fp.inputs, index, device, source, fp.cache)
            return stats.hessian, stats
        if inputs is not None:
            return collect_input_hessian(block, block.get_submodule(names[0]), inputs, index, device), None
        return None, None

    if fp is not None:
        fp.start_block(adapter, groups, index, device)
    # true-sequential: a group's statistics come after the groups before it were quantized
    upfront = None if true_sequential else [statistics(names) for names in groups]
    for g, names in enumerate(groups):
        modules = [block.get_submodule(n) for n in names]
        hessian, stats = statistics(names) if upfront is None else upfront[g]
        for name, module in zip(names, modules):
            full = f"{prefix}.{name}"
            t0 = time.perf_counter()
            w32 = weight32(f"{full}.weight")
            target, extra = w32, {}
            try:
                if stats is not None:
                    alpha, damp = fp.settings.for_layer(full)
                    corrected = qep_corrected_weight(w32, stats.hessian, stats.cross, alpha, damp, stats.residual)
                    target, extra = corrected.weight, {"qep_alpha": alpha}
                    extra.update(damping_record(corrected.damping, "qep_damp", "QEP", "the correction"))
                packed, deq, spec, error, info = quantize_weight(target, hessian, plan[full], method, options, (grad_sq or {}).get(full))
            except (HessianError, QEPError) as exc:
                raise OneCompError(f"layer {full}: {exc}; its calibration statistics are unusable (inf/NaN activations?)") from None
            module.weight.data = deq.to(compute_dtype)
            out.packed[full] = {k: v.cpu() for k, v in packed.items()}
            out.records.append(LayerRecord(full, tuple(module.weight.shape), spec, error, time.perf_counter() - t0, _merge_records(extra, info)))
            if progress:
                progress(index, full, error)
        del hessian, stats
        if upfront is not None:
            upfront[g] = (None, None)


def _restore_block(block: nn.Module, prefix: str, packed: dict[str, dict[str, torch.Tensor]], formats: dict[str, FormatSpec]) -> None:
    """Put a stored block's dequantized weights back, exactly as they were computed."""
    for full, tensors in packed.items():
        linear = block.get_submodule(full[len(prefix) + 1 :])
        module = formats[full].make_module(linear.in_features, linear.out_features, bias=False)
        module.load_state_dict(tensors, strict=False)
        linear.weight.data = module.dequantize().to(device=linear.weight.device, dtype=linear.weight.dtype)


def _record_to_json(r: LayerRecord) -> dict:
    return {"name": r.name, "shape": list(r.shape), "error": r.error, "seconds": r.seconds, "info": r.info}


def _record_from_json(d: dict, fmt: FormatSpec) -> LayerRecord:
    return LayerRecord(d["name"], tuple(d["shape"]), fmt, d["error"], d["seconds"], d["info"])


def run_layerwise(
    model: StreamedModel,
    adapter: ArchAdapter,
    plan: dict[str, FormatSpec],
    method: Method,
    options: MethodOptions,
    input_ids: torch.Tensor | None,
    batch_size: int,
    progress: ProgressFn | None = None,
    store: BlockStore | None = None,
    on_block_done: Callable[[int, list[LayerRecord]], None] | None = None,
    qep: QEPSettings | None = None,
    true_sequential: bool = True,
    grad_sq: dict[str, torch.Tensor] | None = None,
) -> LayerwiseResult:
    """Quantize every linear named in ``plan`` (full names) block by block.

    Only the current block's weights are present (two copies with QEP: the
    original beside the one being quantized), read in the model's compute
    dtype onto its device; each weight is quantized from its stored values in
    float32, so the result does not depend on the forward dtype.
    With a ``store``, each finished block is saved durably (then
    ``on_block_done`` gets its records) and its packed tensors are left there,
    not kept in memory; blocks already in the store are restored and replayed
    (not recomputed) to rebuild inputs. Without one, ``packed`` holds every layer.
    With ``qep`` enabled, each layer is corrected toward the full-precision output
    before it is quantized. ``grad_sq`` (full name -> E[g^2] per output channel)
    weights the rows of methods that use it.
    """
    device, compute_dtype = model.device, model.dtype
    blocks = adapter.blocks(model.model)
    inputs: BlockInputs | None = None
    use_qep = qep is not None and qep.enabled
    if method.needs_hessian or use_qep:
        if input_ids is None:
            raise ValueError(f"method {method.name!r}{' with QEP' if use_qep else ''} needs calibration data")
        with model.loaded(model.module_name(model.model.get_input_embeddings())):
            inputs = capture_block_inputs(model.model, blocks, input_ids, batch_size, device)
    fp = None
    if use_qep:
        assert inputs is not None and qep is not None
        fp = FullPrecisionPath(qep, BlockInputs(hidden=[h.clone() for h in inputs.hidden], calls=inputs.calls))
    out = LayerwiseResult()
    resumed = store.finished() if store is not None else 0

    def weight32(name: str) -> torch.Tensor:
        return model.read(name, torch.float32)

    for index in range(len(blocks)):
        prefix = adapter.block_prefix(index)
        block = model.load(prefix)
        if fp is not None:
            fp.block = model.load_copy(prefix)
        first = len(out.records)
        if index < resumed:
            assert store is not None
            packed, formats, records = store.load(index)
            _restore_block(block, prefix, packed, formats)
            out.records.extend(_record_from_json(r, formats[r["name"]]) for r in records)
        else:
            _quantize_block(
                block, index, prefix, adapter, plan, method, options, inputs, device, compute_dtype, weight32, out, progress,
                fp, true_sequential, grad_sq,
            )
            new = out.records[first:]
            if store is not None:
                store.save(index, {r.name: out.packed.pop(r.name) for r in new}, {r.name: r.fmt for r in new}, [_record_to_json(r) for r in new])
            if on_block_done:
                on_block_done(index, new)
        if inputs is not None and index + 1 < len(blocks):
            propagate(block, inputs, index, device)
            if fp is not None and fp.cache is None:  # a cached block already propagated its stream
                assert fp.block is not None
                propagate(fp.block, fp.inputs, index, device)
        if fp is not None:
            fp.block, fp.cache = None, None
        model.release(prefix)
    return out
