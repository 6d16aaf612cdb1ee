"""Runner of the layer-wise stage: durable per-block progress, then pivot 1."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from onecomp.checkpoint import write_streamed_pivot
from onecomp.fingerprint import hash_json
from onecomp.hardware import peak_rss_bytes
from onecomp.io import atomic_write_json, remove_partials
from onecomp.methods import Method, MethodOptions, get_method, weights_rows
from onecomp.runtime.skeleton import StreamedModel, release
from onecomp.plan.fisher import load_moments, output_grad_moments, save_moments
from onecomp.stages.block_store import BlockStore
from onecomp.stages.context import StageContext, StageOutcome
from onecomp.stages.layerwise import LayerRecord, run_layerwise

log = logging.getLogger("onecomp")


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
    # the gradient pass does not stream yet: it holds the whole model in float32 while it runs
    whole = model.fill(model.model, "", torch.float32)
    try:
        with ctx.reporter.task("loss gradients (row weights)", -(-ids.shape[0] // batch)) as task:
            grad_sq, info = output_grad_moments(
                whole, ctx.adapter, names, ids, batch, ctx.device, ctx.compute_dtype, on_batch=lambda: task.advance(1)
            )
    finally:
        release(whole)
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
