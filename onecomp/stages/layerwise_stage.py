"""Runner of the layer-wise stage: durable per-block progress, then pivot 1."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from onecomp.checkpoint import write_streamed_pivot
from onecomp.estimate import F32, JobShape, Peak
from onecomp.inspect import ModelProfile
from onecomp.fingerprint import hash_json
from onecomp.hardware import peak_rss_bytes
from onecomp.io import atomic_write_json, remove_partials
from onecomp.methods import Method, MethodOptions, get_method, weights_rows
from onecomp.runtime.skeleton import StreamedModel
from onecomp.plan.fisher import load_moments, output_grad_moments, save_moments
from onecomp.stages.block_store import BlockStore
from onecomp.stages.context import StageContext, StageOutcome
from onecomp.stages.layerwise import LayerRecord, run_layerwise

log = logging.getLogger("onecomp")


def _group_input_width(profile: ModelProfile, adapter_groups: tuple[tuple[str, ...], ...], prefix: str) -> int:
    """Features per token of the inputs of one block's linear groups (one input per group)."""
    first = {li.name.removeprefix(prefix + "."): li.in_features for li in profile.linears if li.name.startswith(prefix + ".")}
    return sum(first.get(group[0], 0) for group in adapter_groups)


def block_peak(shape: JobShape) -> Peak:
    """Bytes the streaming layer-wise stage holds at its peak, beyond the process's own.

    Only one block is present (two with QEP: the original beside the one being
    quantized), so depth does not count; what does is the calibration streams
    (one per path, in the compute dtype, on the host), the embedding while the
    first block's inputs are captured, and the widest layer's working set: its
    statistics (H, and QEP's C and R in float32), the batch temporaries of
    their accumulation (float32 inputs, the low-precision product: freed, but
    the allocator keeps them resident), then the larger of QEP's float64 solve
    (one factor and the weight's float64 copies) and GPTQ's (a permuted H and
    its inverse factor, four float32 copies of the weight). On
    Qwen2.5-Coder-1.5B (128 x 512, GPTQ+QEP) this gave 2.47 GiB for a
    measured 2.59 GiB above the process's start (2026-12-07). On a GPU the
    streams (and QEP's input cache) stay on the host, the rest is on the device.
    """
    from onecomp.models.adapters import adapter_for

    p, cfg, cb = shape.profile, shape.config, shape.compute_bytes
    qep, f64 = cfg.quant.qep.enabled, 8
    nsamples, seqlen, batch = shape.calibration_rows(None), shape.seqlen, cfg.calib.batch_size
    hidden, nblocks = p.hidden_size, max(p.num_blocks, 1)
    block_params = shape.qparams // nblocks + 4 * hidden
    max_in = max((li.in_features for li in p.linears), default=hidden)
    max_w = max((li.params for li in p.linears), default=0)
    streams = (2 if qep else 1) * nsamples * seqlen * hidden * cb
    embedding = p.vocab_size * hidden * cb
    blocks = (2 if qep else 1) * block_params * cb
    stats = max_in * max_in * F32 * (2 if qep else 1)
    accumulate = 3 * batch * seqlen * max_in * F32
    gptq = 2 * max_in * max_in * F32 + 4 * max_w * F32
    solve = max_in * max_in * f64 + 3 * max_w * f64 if qep else 0
    adapter = adapter_for(p.model_type)
    cache = nsamples * seqlen * _group_input_width(p, adapter.groups, adapter.block_prefix(0)) * cb if qep else 0
    cache = cache if cache <= cfg.quant.qep.cache_gb * 1e9 else 0
    work = blocks + stats + accumulate + max(gptq, solve)
    if shape.on_gpu:
        return Peak(host=streams + cache, device=max(embedding, work + shape.forward_buffers(batch, seqlen, cb)))
    return Peak(host=max(embedding + streams, streams + cache + work))


def estimate(shape: JobShape) -> Peak:
    """The stage's peak: its blocks, or before them the loss-gradient pass of a
    method that weights rows (streamed: one float32 block, or the embedding or
    head, at a time)."""
    peak = block_peak(shape)
    if not shape.weights_rows:
        return peak
    grads = shape.module32 + shape.grad_pass(shape.config.plan.grad_samples)
    if shape.on_gpu:
        return Peak(peak.host, max(peak.device, grads))
    return Peak(max(peak.host, grads))


def row_gradients(ctx: StageContext, model: StreamedModel, method: Method, options: MethodOptions) -> dict[str, torch.Tensor] | None:
    """E[g^2] per output channel of the layers whose method weights its rows by
    it, from the original model before any layer changes, over the first
    ``plan.grad_samples`` calibration sequences; kept in the stage's work
    directory, so a resumed stage weights its rows exactly as before."""
    names = [n for n, f in ctx.plan.items() if weights_rows(f, method, options)]
    if not names or ctx.input_ids is None:
        return None
    path = ctx.work_dir("layerwise") / "row_gradients.safetensors"
    saved = load_moments(path, names)
    if saved is not None:
        return saved
    ids = ctx.input_ids[: ctx.config.plan.grad_samples]
    batch = ctx.config.calib.batch_size
    with ctx.reporter.task("loss gradients (row weights)", -(-ids.shape[0] // batch)) as task:
        grad_sq, info = output_grad_moments(model, ctx.adapter, names, ids, batch, ctx.compute_dtype, on_batch=lambda: task.advance(1))
    log.info("row-weight gradient pass: mean loss %.4f over %d tokens", info["mean_loss"], info["tokens"])
    save_moments(path, grad_sq)
    return grad_sq


def warn_layers(ctx: StageContext, records: list[LayerRecord]) -> None:
    """Record each layer's warnings (already recorded ones are kept once)."""
    for rec in records:
        for message in rec.warnings:
            ctx.warn("layerwise", message, rec.name)


def run_layerwise_stage(ctx: StageContext, source: Path | None, pivot_dir: Path) -> StageOutcome:
    config = ctx.config
    method = get_method(config.quant.method)
    options = config.quant.method_options()
    store = BlockStore(ctx.work_dir("layerwise"))
    already = store.finished()
    for note in store.dropped:
        ctx.reporter.info(f"warning: {note}")
    nblocks = ctx.profile.num_blocks
    if already:
        ctx.reporter.info(f"resuming the layer-wise stage at block {already} of {nblocks}")
    seconds_before = float(ctx.progress("layerwise").get("seconds", 0.0)) if already else 0.0
    t0 = time.perf_counter()
    model = StreamedModel.open(ctx.resolved.path, ctx.device, ctx.compute_dtype)
    grad_sq = row_gradients(ctx, model, method, options)
    labels = sorted({f.label() for f in ctx.plan.values()})
    what = labels[0] if len(labels) == 1 else f"mixed ({len(labels)} formats)"
    with ctx.reporter.task(f"layer-wise {method.name} {what}", nblocks) as task:
        task.advance(already)

        def progress(block: int, name: str, error: float) -> None:
            log.info("block %d %s relative error %.5f", block, name, error)
            task.advance(0, status=f"{name.split('.', 3)[-1]} err={error:.4f}")

        def block_done(block: int, records: list[LayerRecord]) -> None:
            ctx.set_progress("layerwise", blocks_done=block + 1, seconds=seconds_before + time.perf_counter() - t0)
            log.info("layer-wise block %d done", block)
            task.advance(1)
            warn_layers(ctx, records)  # after the block is durable: a strict stop loses nothing

        result = run_layerwise(
            model, ctx.adapter, ctx.plan, method, options, ctx.input_ids, config.calib.batch_size,
            progress, store, block_done, config.quant.qep, config.quant.true_sequential, grad_sq,
        )
    warn_layers(ctx, result.records)  # blocks restored from an earlier run too
    formats = {rec.name: rec.fmt for rec in result.records}
    bits = sum(rec.fmt.storage_bits(*rec.shape) for rec in result.records)
    bpw = bits / sum(rec.shape[0] * rec.shape[1] for rec in result.records)
    atomic_write_json(
        ctx.out / "logs" / "layers.json",
        [{"name": r.name, "shape": r.shape, "format": r.fmt.label(), "error": r.error, "seconds": r.seconds, **r.info} for r in result.records],
    )
    meta = {
        **ctx.meta,
        "stage": "layerwise",
        "method": method.name,
        "options": options.model_dump(),
        "qep": config.quant.qep.model_dump(),
        "bits_per_weight": bpw,
        "plan_hash": hash_json({n: f.to_json() for n, f in formats.items()}),
    }
    remove_partials(pivot_dir.parent)
    packed = {layer: tensors for index in range(nblocks) for layer, tensors in store.pending(index).items()}
    write_streamed_pivot(pivot_dir, model, packed, formats, ctx.resolved.path, meta, ctx.storage_dtype)
    return StageOutcome(bpw, seconds_before + time.perf_counter() - t0, peak_rss_bytes())
