"""Runners of the two refinement stages. Each starts from a pivot (the job's
best so far, or one given with --from-pivot), keeps the integer codes, and
writes its own pivot."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from onecomp.checkpoint import load, open_pivot, packed_layers, save_pivot, write_refined_pivot
from onecomp.estimate import BF16, F32, HEAD_CHUNK, JobShape, Peak
from onecomp.hardware import peak_rss_bytes
from onecomp.io import remove_partials
from onecomp.models.weights import drop_damaged
from onecomp.refine.blockwise import capture_streams, refine_block, teacher_outputs
from onecomp.refine.global_kd import PROGRESS_FILE, TEACHER_FILE, cache_teacher, distill
from onecomp.refine.trainable import untrained_layers
from onecomp.runtime.block_io import BlockInputs, run_block
from onecomp.runtime.forward import autocast
from onecomp.runtime.memory import release_freed_memory
from onecomp.runtime.skeleton import StreamedModel
from onecomp.stages.block_store import BlockStore
from onecomp.stages.context import StageContext, StageOutcome

log = logging.getLogger("onecomp")


def estimate_blockwise(shape: JobShape) -> Peak:
    """The larger of capturing the first block's inputs (the student's float32
    embedding and two streams) and training one block: five float32 streams
    (quantized inputs, original inputs, targets, outputs before and after
    training), one teacher block and one student block in float32 with the
    student's starting values, its training views and one block's training
    activations for three batches. Depth does not count: one block of each
    model is present at a time. On a GPU the streams stay on the host."""
    p, settings = shape.profile, shape.config.blockwise
    nsamples, seqlen, batch = shape.calibration_rows(settings.nsamples), shape.seqlen, settings.batch_size
    blocks, train = max(p.num_blocks, 1), shape.train
    stream = nsamples * seqlen * p.hidden_size * F32
    embedding = p.vocab_size * p.hidden_size * F32
    acts = 3 * batch * seqlen * shape.act_per_token
    views = (train.view + 3 * (train.saved + batch * seqlen * train.saved_per_token)) // blocks
    work = 3 * shape.block32 + acts + views
    if shape.on_gpu:
        return Peak(host=5 * stream, device=max(embedding, work + 2 * batch * seqlen * p.hidden_size * F32))
    return Peak(host=max(embedding + 2 * stream, 5 * stream + work))


def estimate_global(shape: JobShape) -> Peak:
    """The larger of its two phases. Teacher caching (streamed block by block):
    every row's hidden states in float32, one float32 block (the embedding or
    the head and final norm when larger), one row's logits in bfloat16 and
    float32 plus their log-softmax, and the cached top-k. Training: the
    student, its training views and twice one step's saved tensors (what the
    views' backward keeps, and every block's activations for the batch: the
    allocator does not hand a step's freed tensors back to the next step in
    full, measured 1.87x one step's on SmolLM2), plus the checkpointed
    vocabulary-projection chunk (logits, log-softmax and gradient)."""
    p, settings = shape.profile, shape.config.global_
    seqlen, train = shape.seqlen, shape.train
    rows = shape.calibration_rows(settings.nsamples)
    hidden = rows * seqlen * p.hidden_size * F32
    topk = rows * seqlen * settings.topk * (2 + 4)
    module = shape.module32
    logits = seqlen * p.vocab_size * (BF16 + 2 * F32)
    tokens = settings.batch_size * seqlen
    saved_step = train.saved + tokens * train.saved_per_token + p.num_blocks * tokens * shape.act_per_token
    head_chunk = 3 * settings.batch_size * HEAD_CHUNK * p.vocab_size * F32
    training = train.view + 2 * saved_step + head_chunk
    if shape.on_gpu:
        return Peak(host=max(hidden + topk, shape.pivot_model), device=max(module + logits, shape.pivot_model + training))
    return Peak(host=max(hidden + topk + module + logits, training))


def bits_per_weight(model: torch.nn.Module) -> float:
    bits = params = 0
    for name, spec in packed_layers(model).items():
        mod = model.get_submodule(name)
        bits += spec.storage_bits(mod.out_features, mod.in_features)
        params += mod.out_features * mod.in_features
    return bits / max(params, 1)


def _calibration(ctx: StageContext, nsamples: int | None) -> torch.Tensor:
    if ctx.input_ids is None:
        raise RuntimeError("refinement needs calibration tokens")
    return ctx.input_ids[: nsamples or ctx.input_ids.shape[0]]


def _write(ctx: StageContext, stage: str, model: torch.nn.Module, source: Path, pivot_dir: Path, info: dict) -> float:
    bpw = bits_per_weight(model)
    meta = {**ctx.meta, "stage": stage, "from": str(source), "bits_per_weight": bpw, "settings": info.get("settings", {})}
    remove_partials(pivot_dir.parent)
    save_pivot(pivot_dir, model, None, None, ctx.resolved.path, meta, dtype=ctx.storage_dtype)
    return bpw


def warn_untrained(ctx: StageContext, stage: str) -> list[str]:
    """Warn for each layer this stage cannot train (its format has no training
    view), before any work; returns their names."""
    shapes = {li.name: (li.out_features, li.in_features) for li in ctx.profile.linears}
    untrained = untrained_layers({n: f for n, f in ctx.plan.items() if n in shapes}, shapes)
    for name, label in untrained.items():
        ctx.warn(stage, f"format {label} has no training view: this layer was not trained", name)
    return list(untrained)


def _replay_block(block: torch.nn.Module, stream: BlockInputs, index: int, ctx: StageContext) -> list[torch.Tensor]:
    """A finished block's outputs on the quantized stream, recomputed from its stored values."""
    with torch.no_grad(), autocast(ctx.device, ctx.compute_dtype):
        return [run_block(block, h, stream.calls[index][b], ctx.device).to(h.device, h.dtype) for b, h in enumerate(stream.hidden)]


def run_blockwise_stage(ctx: StageContext, source: Path | None, pivot_dir: Path) -> StageOutcome:
    """One block of the student (read packed from the source pivot) and one of
    the teacher (read from the original's files) are present at a time; each
    trained block goes to the stage's block store, and the pivot is written
    from there tensor by tensor."""
    assert source is not None
    settings = ctx.config.blockwise
    store = BlockStore(ctx.work_dir("blockwise"))
    already = store.finished()
    for note in store.dropped:
        ctx.reporter.info(f"warning: {note}")
    nblocks = ctx.profile.num_blocks
    seconds_before = float(ctx.progress("blockwise").get("seconds", 0.0)) if already else 0.0
    if already:
        ctx.reporter.info(f"resuming the block-wise stage at block {already} of {nblocks}")
    t0 = time.perf_counter()
    untrained = warn_untrained(ctx, "blockwise")
    student = open_pivot(source, ctx.device, torch.float32)
    teacher = StreamedModel.open(ctx.resolved.path, ctx.device, torch.float32)
    s_blocks = ctx.adapter.blocks(student.model)
    ids = _calibration(ctx, settings.nsamples)
    with student.loaded(student.module_name(student.model.get_input_embeddings())):
        q_stream, fp_stream = capture_streams(student.model, s_blocks, ids, settings.batch_size, ctx.device)
    stats_all: list[dict] = []
    steps_per_block = settings.epochs * len(q_stream.hidden)
    with ctx.reporter.task("block-wise refinement", nblocks) as task:
        task.advance(already)
        for i in range(nblocks):
            prefix = ctx.adapter.block_prefix(i)
            targets = teacher_outputs(teacher.load_copy(prefix), fp_stream, i, ctx.device, ctx.compute_dtype)
            block = student.load(prefix)
            if i < already:  # replay a finished block from disk
                packed, _formats, records = store.load(i)
                block.load_state_dict(packed["block"])
                outs = _replay_block(block, q_stream, i, ctx)
                stats_all.extend(records)
            else:
                def on_step(step: int, loss: float, i: int = i) -> None:
                    task.advance(0, status=f"block {i} step {step}/{steps_per_block} loss={loss:.5f}")

                stats, outs = refine_block(block, q_stream, i, targets, settings, ctx.device, ctx.compute_dtype, ctx.storage_dtype, on_step)
                record = dataclasses.asdict(stats)
                store.save(i, {"block": block.state_dict()}, {}, [record])
                stats_all.append(record)
                ctx.set_progress("blockwise", blocks_done=i + 1, seconds=seconds_before + time.perf_counter() - t0)
                log.info("block-wise block %d done: loss %.6f -> %.6f%s", i, stats.loss_before, stats.loss_after, "" if stats.kept else " (kept the start values)")
                task.advance(1, status=f"block {i} loss {stats.loss_before:.5f} -> {stats.loss_after:.5f}")
            student.release(prefix)
            q_stream.hidden, fp_stream.hidden = outs, targets
    del q_stream, fp_stream
    release_freed_memory()
    info = {"settings": settings.model_dump(), "blocks": stats_all}
    replaced = {f"{ctx.adapter.block_prefix(i)}.{k}": t for i in range(nblocks) for k, t in store.pending(i)["block"].items()}
    bpw = bits_per_weight(student.model)
    meta = {**ctx.meta, "stage": "blockwise", "from": str(source), "bits_per_weight": bpw, "settings": info["settings"]}
    remove_partials(pivot_dir.parent)
    write_refined_pivot(pivot_dir, student, replaced, source, meta, ctx.storage_dtype)
    return StageOutcome(bpw, seconds_before + time.perf_counter() - t0, peak_rss_bytes(), {"blocks": stats_all, "untrained": untrained})


def run_global_stage(ctx: StageContext, source: Path | None, pivot_dir: Path) -> StageOutcome:
    assert source is not None
    settings = ctx.config.global_
    work = ctx.work_dir("global")
    seconds_before = float(ctx.progress("global").get("seconds", 0.0))
    t0 = time.perf_counter()
    ids = _calibration(ctx, settings.nsamples)
    untrained = warn_untrained(ctx, "global")
    for name in (TEACHER_FILE, PROGRESS_FILE):
        note = drop_damaged(work / name)
        if note is not None:
            ctx.reporter.info(f"warning: {note}")
    if not (work / TEACHER_FILE).is_file():
        teacher = StreamedModel.open(ctx.resolved.path, ctx.device, torch.float32)
        with ctx.reporter.task("teacher distribution (cached once)", ctx.profile.num_blocks + 1) as task:
            cache_teacher(teacher, ctx.adapter, ids, settings.topk, ctx.compute_dtype, work / TEACHER_FILE, task.advance)
        del teacher
        release_freed_memory()
    student = load(source, device="cpu", dtype=torch.float32)
    total = settings.epochs * -(-ids.shape[0] // settings.batch_size)
    done = int(ctx.progress("global").get("steps_done", 0))
    if done:
        ctx.reporter.info(f"resuming the global stage after step {done} of {total}")
    with ctx.reporter.task("global distillation", total) as task:
        task.advance(done)

        def on_step(step: int, steps: int, loss: float) -> None:
            task.advance(1, status=f"loss={loss:.4f}")
            if step % settings.checkpoint_every == 0 or step == steps:
                ctx.set_progress("global", steps_done=step, seconds=seconds_before + time.perf_counter() - t0)
                log.info("global step %d saved, loss %.5f", step, loss)

        result = distill(student, ids, work, settings, ctx.device, ctx.compute_dtype, ctx.storage_dtype, on_step)
    log.info("global distillation: %s", result)
    info = {"settings": settings.model_dump(), **result}
    bpw = _write(ctx, "global", student, source, pivot_dir, info)
    return StageOutcome(bpw, seconds_before + time.perf_counter() - t0, peak_rss_bytes(), {**result, "untrained": untrained})
