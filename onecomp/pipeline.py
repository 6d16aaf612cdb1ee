"""The executor: resolve, inspect, check, calibrate, run the stages, write the
pivot, evaluate. Each step records what it did in the job directory."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from onecomp import __version__
from onecomp.checkpoint import load, save_pivot
from onecomp.config import JobConfig
from onecomp.data import build_calibration, eval_windows, load_documents
from onecomp.errors import OneCompError
from onecomp.eval.perplexity import perplexity
from onecomp.fingerprint import hash_json, model_fingerprint
from onecomp.hardware import detect_hardware, peak_rss_bytes
from onecomp.inspect import ModelProfile, estimate_compress_memory, profile_model
from onecomp.io import atomic_write_json, atomic_write_text, remove_partials
from onecomp.methods import get_method
from onecomp.formats.base import FormatSpec
from onecomp.models.adapters import ArchAdapter, adapter_for
from onecomp.models.resolve import ResolvedModel, resolve_model
from onecomp.paths import cache_dir
from onecomp.reporter import NullReporter, Reporter
from onecomp.stages.block_store import BlockStore
from onecomp.stages.layerwise import run_layerwise

log = logging.getLogger("onecomp")

PIVOT_DIRS = {"layerwise": "1-layerwise"}


@dataclass
class Row:
    """One line of the final summary: the original model or a pivot."""

    name: str
    bpw: float | None
    size_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    peak_rss_bytes: int | None = None
    path: str | None = None


@dataclass
class JobSummary:
    output: Path
    rows: list[Row]
    reference: str = "builtin"

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "rows": [r.__dict__ for r in self.rows]}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OneCompError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def resolve_compute_dtype(name: str, device: torch.device, hardware: dict[str, Any]) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if hardware.get("bf16_cpu") else torch.float32


def _job_identity(config: JobConfig) -> str:
    return hash_json(config.result_fingerprint_fields())


def _check_output_free(out: Path, overwrite: bool) -> None:
    """Refuse to mix two jobs in one directory; never delete without --overwrite."""
    if out.exists() and not out.is_dir():
        raise OneCompError(f"output {out} exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return
    is_job = (out / "job.yaml").is_file() or (out / "state.json").is_file()
    if not overwrite:
        if is_job:
            raise OneCompError(
                f"output directory {out} already holds a job; pass --resume to continue it, --overwrite to replace it, or choose another --output"
            )
        raise OneCompError(f"output directory {out} is not empty; choose another --output")
    if not is_job:
        raise OneCompError(f"refusing to overwrite {out}: it is not empty and is not a onecomp job directory")


def prepare_output(out: Path, overwrite: bool) -> None:
    _check_output_free(out, overwrite)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OneCompError(f"cannot create output directory {out}: {exc.strerror}") from None


def _check_fits(out: Path, host_needed: int, device_needed: int, pivot_bytes: int, device: torch.device) -> dict[str, Any]:
    hw = detect_hardware()
    if host_needed > hw.ram_available_bytes:
        raise OneCompError(
            f"this job needs about {host_needed / 2**30:.1f} GiB of host memory but only "
            f"{hw.ram_available_bytes / 2**30:.1f} GiB is available; lower --nsamples/--seqlen or use a larger machine"
        )
    if device.type == "cuda" and hw.gpus:
        have = hw.gpus[torch.cuda.current_device()]["total_memory_bytes"]
        if device_needed > have:
            raise OneCompError(
                f"this job needs about {device_needed / 2**30:.1f} GiB of GPU memory but the GPU has {have / 2**30:.1f} GiB"
            )
    free = shutil.disk_usage(out).free
    if free < 2 * pivot_bytes:
        raise OneCompError(
            f"not enough disk space in {out}: about {2 * pivot_bytes / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free"
        )
    return hw.to_dict()


def _write_state(out: Path, **state: Any) -> None:
    path = out / "state.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(state)
    atomic_write_json(path, current)


def _dir_weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def evaluate_model(
    model: torch.nn.Module, tokenizer: Any, config: JobConfig, device: torch.device, reporter: Reporter, label: str
) -> tuple[dict[str, float], dict[str, Any]]:
    metrics: dict[str, float] = {}
    protocol: dict[str, Any] = {}
    for spec in config.eval.ppl:
        windows = eval_windows(tokenizer, spec, config.eval.seqlen, config.eval.max_windows)
        with reporter.task(f"perplexity of {label} on {spec}", windows.input_ids.shape[0]) as task:
            res = perplexity(model, windows.input_ids, config.eval.batch_size, device, on_batch=task.advance)
        metrics[f"ppl_{spec}"] = res["ppl"]
        protocol[spec] = {**windows.record, "scored_tokens": res["tokens"], "dtype": "float32"}
    return metrics, protocol


def reference_metrics(
    resolved: ResolvedModel, tokenizer: Any, config: JobConfig, device: torch.device, reporter: Reporter
) -> dict[str, float]:
    """The original model's scores, cached per model content and evaluation protocol."""
    protocol = config.eval.model_dump(exclude={"batch_size"})  # batching does not change the scores
    key = hash_json({"model": model_fingerprint(resolved.path), "eval": protocol, "v": 1})
    cache_file = cache_dir() / "reference" / f"{key}.json"
    if cache_file.is_file():
        return json.loads(cache_file.read_text())["metrics"]
    model = transformers.AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).to(device).eval()
    metrics, protocol = evaluate_model(model, tokenizer, config, device, reporter, "the original model")
    atomic_write_json(cache_file, {"metrics": metrics, "protocol": protocol, "model": str(resolved.spec)})
    return metrics


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _read_state(out: Path) -> dict[str, Any]:
    path = out / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_fingerprint(stored: dict[str, Any], current: dict[str, Any], force: bool) -> None:
    """Refuse to resume a job whose inputs changed, naming what changed."""
    changed = _changed(stored, current)
    if changed and not force:
        raise OneCompError(
            "cannot resume: the job's inputs changed since it started (" + ", ".join(changed) + "); "
            "pass --force to resume anyway or --overwrite to start over"
        )


def compress(
    config: JobConfig,
    reporter: Reporter | None = None,
    overwrite: bool = False,
    resume: bool = False,
    force: bool = False,
) -> JobSummary:
    """Run a job. With ``resume``, an interrupted job in ``config.output`` continues
    from its last durable state: finished blocks and stages are not redone."""
    reporter = reporter or NullReporter()
    out = Path(config.output)
    resuming = resume and (out / "state.json").is_file()
    if not resuming:
        _check_output_free(out, overwrite)
    # cheap checks first, so bad input never leaves a half-made job directory
    device = resolve_device(config.device)
    resolved = resolve_model(config.model)
    profile = profile_model(resolved.path)
    adapter_for(profile.model_type)
    if get_method(config.quant.method).needs_hessian:
        load_documents(config.calib.source, "calib")
    for spec in config.eval.ppl:
        load_documents(spec, "eval")
    if not resuming:
        prepare_output(out, overwrite)
    elif _read_state(out).get("complete"):
        stored = _read_state(out).get("fingerprint", {})
        _check_fingerprint(stored, _fingerprint(_normalize(config, device), resolved, stored.get("calibration")), force)
        reporter.info(f"the job in {out} is already complete")
        return summary_from_results(out)
    handler = logging.FileHandler(out / "logs" / "onecomp.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _compress(config, out, reporter, device, resolved, profile, resuming, force)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OneCompError(f"no space left while writing to {out}; files written so far are kept") from None
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _normalize(config: JobConfig, device: torch.device) -> JobConfig:
    """Fill the defaults that depend on the machine, so job.yaml is complete."""
    seqlen = config.calib.seqlen or (2048 if device.type == "cuda" else 512)
    return config.model_copy(update={"calib": config.calib.model_copy(update={"seqlen": seqlen}), "device": device.type})


def _fingerprint(config: JobConfig, resolved: ResolvedModel, calib_sha: str | None) -> dict[str, Any]:
    """Everything the result depends on; a resume compares it key by key."""
    fp = {"config": config.result_fingerprint_fields(), "model": model_fingerprint(resolved.path), "version": __version__}
    if calib_sha is not None:
        fp["calibration"] = calib_sha
    return fp


def summary_from_results(out: Path) -> JobSummary:
    results = json.loads((out / "eval" / "results.json").read_text())
    rows = [Row("original", None, 0, results["original"]["metrics"])]
    for name, p in results["pivots"].items():
        rows.append(Row(name, p["bits_per_weight"], p["weight_bytes"], p["metrics"], p.get("stage_seconds"), None, str(out / "pivots" / name)))
    return JobSummary(out, rows)


def _run_layerwise_stage(
    config: JobConfig,
    out: Path,
    reporter: Reporter,
    device: torch.device,
    resolved: ResolvedModel,
    profile: ModelProfile,
    adapter: ArchAdapter,
    plan: dict[str, FormatSpec],
    input_ids: torch.Tensor | None,
    compute_dtype: torch.dtype,
    pivot_dir: Path,
    state: dict[str, Any],
) -> tuple[float, float, int]:
    """The layer-wise stage with durable per-block progress; writes pivot 1."""
    method = get_method(config.quant.method)
    options = config.quant.method_options()
    store = BlockStore(out / "work" / "layerwise")
    already = store.finished()
    if already:
        reporter.info(f"resuming the layer-wise stage at block {already} of {profile.num_blocks}")
    seconds_before = float(state.get("progress", {}).get("layerwise", {}).get("seconds", 0.0)) if already else 0.0
    _write_state(out, current="layerwise")
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    with reporter.task(f"layer-wise {method.name} {config.quant.format().label()}", profile.num_blocks) as task:
        task.advance(already)

        def progress(block: int, name: str, error: float) -> None:
            log.info("block %d %s relative error %.5f", block, name, error)
            task.advance(0, status=f"{name.split('.', 3)[-1]} err={error:.4f}")

        def block_done(block: int) -> None:
            elapsed = seconds_before + time.perf_counter() - t0
            _write_state(out, progress={"layerwise": {"blocks_done": block + 1, "seconds": elapsed}})
            task.advance(1)

        result = run_layerwise(
            model, adapter, plan, method, options, input_ids, config.calib.batch_size, device, progress, compute_dtype,
            store, block_done,
        )
    formats = {rec.name: rec.fmt for rec in result.records}
    bits = sum(rec.fmt.storage_bits(*rec.shape) for rec in result.records)
    params = sum(rec.shape[0] * rec.shape[1] for rec in result.records)
    bpw = bits / params
    atomic_write_json(out / "logs" / "layers.json", [{"name": r.name, "shape": r.shape, "format": r.fmt.label(), "error": r.error, "seconds": r.seconds, **r.info} for r in result.records])
    meta = {
        "stage": "layerwise",
        "method": method.name,
        "options": options.model_dump(),
        "bits_per_weight": bpw,
        "plan_hash": hash_json({n: f.to_json() for n, f in formats.items()}),
        "source": {"spec": resolved.spec, "fingerprint": model_fingerprint(resolved.path)},
        "calibration": {"source": config.calib.source, "nsamples": config.calib.nsamples, "seqlen": config.calib.seqlen, "seed": config.calib.seed, "dtype": str(compute_dtype).removeprefix("torch.")},
    }
    remove_partials(pivot_dir.parent)
    save_pivot(pivot_dir, model, result.packed, formats, resolved.path, meta)
    stage_seconds = seconds_before + time.perf_counter() - t0
    stage_rss = peak_rss_bytes()
    info = {"bits_per_weight": bpw, "seconds": stage_seconds, "peak_rss_bytes": stage_rss}
    _write_state(out, done=["layerwise"], current=None, stages_info={"layerwise": info})
    shutil.rmtree(out / "work" / "layerwise", ignore_errors=True)  # the pivot now holds every block
    if (out / "work").is_dir() and not any((out / "work").iterdir()):
        (out / "work").rmdir()
    return bpw, stage_seconds, stage_rss


def _compress(
    config: JobConfig,
    out: Path,
    reporter: Reporter,
    device: torch.device,
    resolved: ResolvedModel,
    profile: ModelProfile,
    resuming: bool = False,
    force: bool = False,
) -> JobSummary:
    t_start = time.perf_counter()
    config = _normalize(config, device)
    seqlen = config.calib.seqlen
    assert seqlen is not None
    if resuming:
        state = _read_state(out)
        stored = state.get("fingerprint", {})
        _check_fingerprint(stored, _fingerprint(config, resolved, stored.get("calibration")), force)
        log.info("resuming the job in %s", out)
    else:
        state = {"done": []}
        atomic_write_text(out / "job.yaml", config.to_yaml())
        _write_state(
            out, version=__version__, job=_job_identity(config), stages=config.stages, done=[], current=None,
            fingerprint=_fingerprint(config, resolved, None),
        )

    adapter = adapter_for(profile.model_type)
    fmt = config.quant.format()
    method = get_method(config.quant.method)
    raw_cfg = json.loads((resolved.path / "config.json").read_text())
    estimate = estimate_compress_memory(
        profile,
        config.calib.nsamples if method.needs_hessian else 0,
        seqlen,
        config.calib.batch_size,
        config.eval.seqlen,
        config.eval.batch_size,
        device.type == "cuda",
        raw_cfg.get("num_attention_heads", 0),
    )
    qparams = profile.block_linear_params
    packed_bits = sum(fmt.storage_bits(li.out_features, li.in_features) for li in profile.linears)
    pivot_bytes = int(packed_bits / 8 + (profile.total_params - qparams) * 2)
    hardware = _check_fits(out, estimate.host_peak_bytes, estimate.device_peak_bytes, pivot_bytes, device)
    atomic_write_json(out / "inspect.json", {"model": profile.to_dict(), "hardware": hardware, "estimate": estimate.to_dict(), "source": {"spec": resolved.spec, "path": str(resolved.path), "kind": resolved.source}})

    compute_dtype = resolve_compute_dtype(config.calib.dtype, device, hardware)
    plan = {li.name: fmt for li in profile.linears}
    atomic_write_json(out / "plan.json", {"budget": {"kind": "uniform", "format": fmt.to_json()}, "layers": {n: f.to_json() for n, f in plan.items()}})

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path)
    input_ids = None
    if method.needs_hessian:
        calib = build_calibration(tokenizer, config.calib.source, config.calib.nsamples, seqlen, config.calib.seed)
        atomic_write_json(out / "logs" / "calibration.json", calib.record)
        input_ids = calib.input_ids
        stored_sha = state.get("fingerprint", {}).get("calibration")
        if resuming and stored_sha not in (None, calib.record["sha256"]) and not force:
            raise OneCompError("cannot resume: the calibration tokens differ from the job's (calibration); pass --force to resume anyway")
        _write_state(out, fingerprint=_fingerprint(config, resolved, calib.record["sha256"]))

    ref_metrics = reference_metrics(resolved, tokenizer, config, device, reporter) if config.eval.ppl else {}

    pivot_dir = out / "pivots" / PIVOT_DIRS["layerwise"]
    if "layerwise" in state.get("done", []) and (pivot_dir / "onecomp.json").is_file():
        info = state["stages_info"]["layerwise"]
        bpw, stage_seconds, stage_rss = info["bits_per_weight"], info["seconds"], info["peak_rss_bytes"]
        reporter.info("layer-wise stage already done: using its pivot")
    else:
        bpw, stage_seconds, stage_rss = _run_layerwise_stage(
            config, out, reporter, device, resolved, profile, adapter, plan, input_ids, compute_dtype, pivot_dir, state
        )

    rows = [Row("original", 16.0 if profile.dtype in ("bfloat16", "float16") else 32.0, _dir_weight_bytes(resolved.path), ref_metrics, path=str(resolved.path))]
    pivot_metrics: dict[str, float] = {}
    protocol: dict[str, Any] = {}
    if config.eval.ppl:
        pivot_model = load(pivot_dir, device=device, dtype=torch.float32)
        pivot_metrics, protocol = evaluate_model(pivot_model, tokenizer, config, device, reporter, "pivot 1-layerwise")
        del pivot_model
    rows.append(Row("1-layerwise", bpw, _dir_weight_bytes(pivot_dir), pivot_metrics, stage_seconds, stage_rss, str(pivot_dir)))
    results = {
        "protocol": protocol,
        "original": {"metrics": ref_metrics},
        "pivots": {
            "1-layerwise": {
                "metrics": pivot_metrics,
                "ratios": {k: pivot_metrics[k] / ref_metrics[k] for k in pivot_metrics if k in ref_metrics},
                "bits_per_weight": bpw,
                "weight_bytes": rows[-1].size_bytes,
                "stage_seconds": stage_seconds,
            }
        },
        "peak_rss_bytes": peak_rss_bytes(),
        "estimate_host_peak_bytes": estimate.host_peak_bytes,
        "total_seconds": time.perf_counter() - t_start,
    }
    atomic_write_json(out / "eval" / "results.json", results)
    _write_state(out, complete=True)
    return JobSummary(out, rows)
