"""Measuring and planning for a job: the orchestration around ``measure`` and
``planner`` (model loading, durable progress, fingerprints, progress bars).

A killed measurement resumes: the gradient moments and every finished block's
errors are saved as they are made (under the job's ``work/measure``), and a
resumed pass only runs finished blocks forward.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from onecomp import __version__
from onecomp.errors import OneCompError
from onecomp.estimate import F32, JobShape, Peak
from onecomp.fingerprint import model_fingerprint
from onecomp.formats import FormatSpec, format_from_label
from onecomp.io import atomic_write_json
from onecomp.methods import Method, MethodOptions, method_for
from onecomp.models.adapters import ArchAdapter
from onecomp.plan.fisher import load_moments, output_grad_moments, save_moments
from onecomp.plan.measure import Measurement, RowSampling, measure_blocks
from onecomp.plan.planner import GB, Budget, ModelFacts, PlanSettings
from onecomp.reporter import Reporter
from onecomp.runtime.skeleton import StreamedModel

if TYPE_CHECKING:
    from onecomp.inspect import ModelProfile

log = logging.getLogger("onecomp")


def estimate_measurement(shape: JobShape) -> Peak:
    """The larger of its two passes, each streamed (one float32 block, or the
    embedding or head, present at a time): the gradient pass, and the
    measuring pass (two calibration streams, the four Hessians and the stacked
    candidates of the largest weight's sampled rows: 16 candidates x weights,
    grids, codes and errors)."""
    p, cfg = shape.profile, shape.config
    max_in = max((li.in_features for li in p.linears), default=p.hidden_size)
    max_w = max((li.params for li in p.linears), default=0)
    stream = cfg.calib.nsamples * shape.seqlen * p.hidden_size * F32
    stacked = 16 * 8 * max(128 * max_in, max_w // 8) * F32
    hessians = 4 * max_in * max_in * F32
    measure_pass = 2 * stream + hessians + stacked + shape.forward_buffers(cfg.calib.batch_size, shape.seqlen)
    work = max(shape.grad_pass(cfg.plan.grad_samples), measure_pass)
    if shape.on_gpu:
        return Peak(host=2 * stream, device=shape.module32 + work)
    return Peak(host=shape.module32 + work)


def candidate_specs(settings: PlanSettings, method: Method, options: MethodOptions) -> dict[str, FormatSpec]:
    """Label -> the exact spec the method stores for it (what the budget counts)."""
    labels = settings.candidate_labels(method.candidate_labels(options))
    out = {}
    for label in labels:
        try:
            spec = format_from_label(label)
            producer, opts = method_for(spec, method, options)
            out[label] = producer.stored_spec(spec, opts)
        except (TypeError, ValueError) as exc:
            raise OneCompError(f"candidate {label}: {exc}") from None
    return out


def measurement_fingerprint(
    model_dir: Path, method: Method, options: MethodOptions, labels: list[str], calib_sha: str, settings: PlanSettings
) -> dict[str, Any]:
    return {
        "model": model_fingerprint(model_dir),
        "method": method.name,
        "options": options.model_dump(),
        "candidates": sorted(labels),
        "calibration": calib_sha,
        "grad_samples": settings.grad_samples,
        "rows": [settings.row_fraction, settings.min_rows, settings.heavy_rows],
        "version": __version__,
    }


def check_measurement(measurement: Measurement, model_dir: Path, force: bool) -> None:
    """A measurement only plans the model it was measured on."""
    if measurement.fingerprint.get("model") != model_fingerprint(model_dir) and not force:
        raise OneCompError("the measurement was made on a different model (its files differ); measure this model, or pass --force")


def run_measurement(
    model_dir: Path,
    profile: "ModelProfile",
    adapter: ArchAdapter,
    names: list[str],
    candidates: dict[str, FormatSpec],
    method: Method,
    options: MethodOptions,
    input_ids: torch.Tensor,
    batch_size: int,
    settings: PlanSettings,
    device: torch.device,
    compute_dtype: torch.dtype,
    reporter: Reporter,
    work_dir: Path,
    fingerprint: dict[str, Any],
) -> Measurement:
    """Measure every layer in every candidate; durable progress in ``work_dir``.
    The model is read from ``model_dir`` one block at a time."""
    t0 = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    progress_file = work_dir / "blocks.json"
    done: dict[str, dict[str, Any]] = {}
    if progress_file.is_file():
        saved = json.loads(progress_file.read_text())
        if saved.get("fingerprint") == fingerprint:
            done = saved["layers"]
    model = StreamedModel.open(model_dir, device, compute_dtype)
    fisher_file = work_dir / "fisher.safetensors"
    grad_ids = input_ids[: settings.grad_samples]
    nbatches = -(-grad_ids.shape[0] // batch_size)
    fisher_info = work_dir / "fisher.json"
    saved_info = json.loads(fisher_info.read_text()) if fisher_info.is_file() else {}
    grad_info: dict[str, Any] = saved_info.get("summary", {})
    grad_sq = load_moments(fisher_file, names) if saved_info.get("fingerprint") == fingerprint else None
    if grad_sq is None:
        with reporter.task("sensitivity: gradient pass", nbatches) as task:
            grad_sq, grad_info = output_grad_moments(
                model, adapter, names, grad_ids, batch_size, compute_dtype, on_batch=lambda: task.advance(1)
            )
        save_moments(fisher_file, grad_sq)
        atomic_write_json(fisher_info, {"fingerprint": fingerprint, "summary": grad_info})
        log.info("gradient pass: mean loss %.4f over %d tokens", grad_info["mean_loss"], grad_info["tokens"])
    nblocks = profile.num_blocks
    finished = sum(all(n in done for n in names if n.startswith(adapter.block_prefix(b) + ".")) for b in range(nblocks))
    if finished:
        reporter.info(f"resuming the sensitivity measurement: {finished} of {nblocks} blocks already measured")
    with reporter.task(f"sensitivity: {len(candidates)} candidates x {len(names)} layers", nblocks) as task:
        task.advance(finished)

        def on_layer(block: int, name: str) -> None:
            task.advance(0, status=name.split(".", 3)[-1])

        def on_block(block: int, new: dict[str, dict[str, Any]]) -> None:
            done.update(new)
            atomic_write_json(progress_file, {"fingerprint": fingerprint, "layers": done})
            log.info("sensitivity block %d measured", block)
            task.advance(1)

        layers = measure_blocks(
            model, adapter, names, candidates, method, options, grad_sq, input_ids, batch_size,
            done=done, sampling=RowSampling(settings.row_fraction, settings.min_rows, settings.heavy_rows) if settings.row_fraction < 1 else None,
            on_layer=on_layer, on_block=on_block,
        )
    info = {
        "seconds": time.perf_counter() - t0,
        "calibration_tokens": int(input_ids.numel()),
        "gradient": grad_info,
        "dtype": str(compute_dtype).removeprefix("torch."),
    }
    return Measurement(fingerprint, {label: spec.to_json() for label, spec in candidates.items()}, layers, info)


def obtain_measurement(
    settings: PlanSettings,
    method: Method,
    options: MethodOptions,
    out: Path,
    model_dir: Path,
    profile: "ModelProfile",
    adapter: ArchAdapter,
    names: list[str],
    input_ids: torch.Tensor,
    calib_sha: str,
    batch_size: int,
    device: torch.device,
    compute_dtype: torch.dtype,
    reporter: Reporter,
    force: bool = False,
    facts: ModelFacts | None = None,
) -> Measurement:
    """The measurement a plan is solved from: the configured file, the one already
    in ``out`` if it was made from the same inputs, or a new one (saved in ``out``)."""
    if settings.measurement is not None:
        measurement = Measurement.load(Path(settings.measurement))
        check_measurement(measurement, model_dir, force)
        return measurement
    candidates = candidate_specs(settings, method, options)
    fingerprint = measurement_fingerprint(model_dir, method, options, list(candidates), calib_sha, settings)
    final = out / "measurement.json"
    if final.is_file():
        measurement = Measurement.load(final)
        if measurement.fingerprint == fingerprint:
            reporter.info(f"using the sensitivity measurement in {final}")
            return measurement
    work = out / "work" / "measure"
    measurement = run_measurement(
        model_dir, profile, adapter, names, candidates, method, options, input_ids, batch_size,
        settings, device, compute_dtype, reporter, work, fingerprint,
    )
    if facts is not None:
        measurement.info["model"] = {"model_type": profile.model_type, **facts.to_json()}
    measurement.save(final)
    shutil.rmtree(work, ignore_errors=True)
    return measurement


def kv_bytes_per_token(raw_config: dict[str, Any]) -> int:
    """Bytes of a 16-bit KV cache per token of context."""
    heads = int(raw_config.get("num_attention_heads") or 1)
    kv_heads = int(raw_config.get("num_key_value_heads") or heads)
    head_dim = int(raw_config.get("head_dim") or raw_config.get("hidden_size", 0) // heads)
    return 2 * int(raw_config.get("num_hidden_layers", 0)) * kv_heads * head_dim * 2


def model_facts(profile: "ModelProfile", raw_config: dict[str, Any]) -> ModelFacts:
    from onecomp.checkpoint import storage_dtype

    dtype_bytes = torch.tensor([], dtype=storage_dtype(raw_config)).element_size()
    shapes = {li.name: (li.out_features, li.in_features) for li in profile.linears}
    return ModelFacts(profile.total_params, profile.num_blocks, dtype_bytes, kv_bytes_per_token(raw_config), shapes)


def check_reachable(settings: PlanSettings, budget: Budget, facts: ModelFacts, names: list[str], method: Method, options: MethodOptions) -> None:
    """Refuse, before any measuring, a budget that no assignment of the candidates can meet."""
    candidates = candidate_specs(settings, method, options)
    shapes = facts.shapes
    size = (lambda f, s: f.storage_bits(*s)) if budget.kind == "bpw" else (lambda f, s: f.storage_bytes(*s))
    least = sum(min(size(f, shapes[n]) for f in candidates.values()) for n in names)
    if least > budget.capacity:
        params = sum(shapes[n][0] * shapes[n][1] for n in names)
        need = f"{least / params:.3f} bits per weight" if budget.kind == "bpw" else f"{(least + budget.fixed_bytes) / GB:.3f} GB"
        asked = f"{budget.target:g} bits per weight" if budget.kind == "bpw" else f"{budget.target / GB:.3f} GB"
        raise OneCompError(f"the budget ({asked}) is below what any plan can reach: even the smallest candidates need {need}")
