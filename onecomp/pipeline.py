"""The executor: resolve, inspect, check, calibrate, run the stages, write the
pivot, evaluate. Each step records what it did in the job directory."""

from __future__ import annotations

import errno
import hashlib
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
from onecomp.checkpoint import META_FILE, check_checkpoint, load, pivot_formats, read_config, storage_dtype
from onecomp.config import RESULT_NEUTRAL, JobConfig
from onecomp.data import build_calibration, load_documents
from onecomp.data.evaltext import selection_windows
from onecomp.errors import OneCompError
from onecomp.eval.lm_tasks import check_tasks
from onecomp.eval.report import write_report
from onecomp.eval.headline import headline_map
from onecomp.eval.provenance import job_record, selection_record
from onecomp.eval.suite import Scores, evaluate, reference_scores, score_selection
from onecomp.fingerprint import hash_json, model_fingerprint
from onecomp.hardware import detect_hardware, peak_rss_bytes, reset_peak_rss
from onecomp.inspect import ModelProfile, profile_model
from onecomp.methods import get_method
from onecomp.plan.planner import Budget, ModelFacts, build_plan, fixed_bytes, load_plan_layers, make_budget, plan_summary_line
from onecomp.plan.measure import Measurement
from onecomp.preflight import job_memory_estimate
from onecomp.plan.run import check_measurement, check_reachable, model_facts, obtain_measurement
from onecomp.io import atomic_write_json, atomic_write_text, read_json
from onecomp.describe import stage_line
from onecomp.joblog import open_job_log
from onecomp.jobdir import discard_replaced, foreign_entries, is_onecomp_job, restore_replaced, set_aside_job
from onecomp.models.weights import check_weights
from onecomp.formats.base import FormatSpec
from onecomp.models.adapters import adapter_for
from onecomp.models.resolve import ResolvedModel, resolve_model
from onecomp.reporter import NullReporter, Reporter
from onecomp.stages.context import JobWarning, StageContext, StageOutcome, job_warnings, read_state, record_warning, write_state
from onecomp.stages.registry import STAGES

log = logging.getLogger("onecomp")



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
    note: str = ""


@dataclass
class JobSummary:
    output: Path
    rows: list[Row]
    best: str | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)  # stage, layer (where relevant), message

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "rows": [r.__dict__ for r in self.rows], "warnings": self.warnings}

    def warning_lines(self, limit: int = 10) -> list[str]:
        """The job's warnings for the final summary, the first ``limit`` of them and a count of the rest."""
        lines = [JobWarning(w["stage"], w["message"], w.get("layer")).line() for w in self.warnings[:limit]]
        if len(self.warnings) > limit:
            lines.append(f"and {len(self.warnings) - limit} more (eval/results.json)")
        return lines


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
    """Refuse to mix two jobs in one directory; never delete without --overwrite,
    and with it only a verified onecomp job that holds nothing else."""
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
    if not is_onecomp_job(out):
        raise OneCompError(f"refusing to overwrite {out}: it is not empty and is not a onecomp job directory")
    foreign = foreign_entries(out)
    if foreign:
        raise OneCompError(
            f"refusing to overwrite {out}: besides the job it holds {', '.join(foreign[:3])}"
            f"{' and more' if len(foreign) > 3 else ''}; move them away or choose another --output"
        )


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make the job directory; with ``overwrite``, first set the old job's own
    entries aside (checked by :func:`_check_output_free`), nothing else: they are
    removed once the new job's preflight has passed, and restored if it fails."""
    _check_output_free(out, overwrite)
    if out.is_dir():
        set_aside_job(out)
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OneCompError(f"cannot create output directory {out}: {exc.strerror}") from None


def _check_plan_fits(plan: dict[str, FormatSpec], shapes: dict[str, tuple[int, int]]) -> None:
    """Every layer's format can store that layer's shape (e.g. a rate too low for a
    binary factorization's float vectors), checked before any work."""
    problems = []
    for name, fmt in plan.items():
        if name in shapes:
            try:
                fmt.storage_bits(*shapes[name])
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise OneCompError("; ".join(problems[:3]) + more)


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


def _dir_weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


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
    neutral = {f"config.{k}" for k in RESULT_NEUTRAL}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in neutral)


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
    resolved = resolve_model(config.model, reporter)
    profile = profile_model(resolved.path)
    adapter_for(profile.model_type)
    check_weights(resolved.path)  # a truncated or corrupt weight file ends here, not inside a stage
    if config.from_pivot is not None:
        check_source_pivot(Path(config.from_pivot), resolved, force)
    shapes = {li.name: (li.out_features, li.in_features) for li in profile.linears}
    if config.from_pivot is not None:
        _check_pivot_layers(Path(config.from_pivot), shapes)
    if config.plan.file is not None:
        _check_plan_fits(load_plan_layers(Path(config.plan.file), shapes), shapes)
    elif config.from_pivot is None and not config.plan.mixed:
        uniform = config.quant.format()
        _check_plan_fits({name: uniform for name in shapes}, shapes)
    if config.plan.mixed:
        mixed_budget(config, model_facts(profile, json.loads((resolved.path / "config.json").read_text())))
    if config.plan.measurement is not None:
        check_measurement(Measurement.load(Path(config.plan.measurement)), resolved.path, force)
    if config.plan.mixed or any(STAGES[s].needs_calibration(config) for s in config.stages):
        load_documents(config.calib.source, "calib")
    for spec in config.eval.ppl:
        load_documents(spec, "eval")
    check_tasks(config.eval.tasks)
    if not resuming:
        prepare_output(out, overwrite)
    elif read_state(out).get("complete"):
        stored = read_state(out).get("fingerprint", {})
        _check_fingerprint(stored, _fingerprint(_normalize(config, device), resolved, stored.get("calibration")), force)
        reporter.info(f"the job in {out} is already complete")
        return summary_from_results(out)
    handler = open_job_log(out, config, device)
    reset_peak_rss()  # the peaks recorded in results.json are this job's own
    try:
        try:
            return _compress(config, out, reporter, device, resolved, profile, resuming, force)
        except BaseException:
            if not resuming:
                restore_replaced(out)  # a job refused by its preflight gives back the job it would replace
            raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OneCompError(f"no space left while writing to {out}; files written so far are kept") from None
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def mixed_budget(config: JobConfig, facts: ModelFacts) -> Budget:
    """The job's bit or memory budget, refused at once if no plan can meet it."""
    names = list(facts.shapes)
    budget = make_budget(config.plan, facts, names, detect_hardware().to_dict())
    check_reachable(config.plan, budget, facts, names, get_method(config.quant.method), config.quant.method_options())
    return budget


def _normalize(config: JobConfig, device: torch.device) -> JobConfig:
    """Fill the defaults that depend on the machine, so job.yaml is complete."""
    seqlen = config.calib.seqlen or (2048 if device.type == "cuda" else 512)
    update: dict[str, Any] = {"calib": config.calib.model_copy(update={"seqlen": seqlen}), "device": device.type}
    if config.from_pivot is not None:  # so `onecomp resume` works from any directory
        update["from_pivot"] = str(Path(config.from_pivot).resolve())
    files = {k: str(Path(v).resolve()) for k in ("file", "measurement") if (v := getattr(config.plan, k)) is not None}
    if files:
        update["plan"] = config.plan.model_copy(update=files)
    return config.model_copy(update=update)


def _fingerprint(config: JobConfig, resolved: ResolvedModel, calib_sha: str | None) -> dict[str, Any]:
    """Everything the result depends on; a resume compares it key by key."""
    fp = {"config": config.result_fingerprint_fields(), "model": model_fingerprint(resolved.path), "version": __version__}
    if config.from_pivot is not None:
        fp["from_pivot"] = model_fingerprint(Path(config.from_pivot))
    for key in ("file", "measurement"):
        path = getattr(config.plan, key)
        if path is not None and Path(path).is_file():
            fp[f"plan_{key}"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    if calib_sha is not None:
        fp["calibration"] = calib_sha
    return fp


def read_pivot_meta(pivot: Path) -> dict[str, Any]:
    """The onecomp.json of a pivot, or a clear error if ``pivot`` is not one."""
    cfg = pivot / "config.json"
    meta = pivot / META_FILE
    if not cfg.is_file() or not meta.is_file() or "quantization_config" not in read_config(pivot):
        raise OneCompError(f"{pivot} is not a onecomp pivot (expected config.json with a quantization_config and {META_FILE})")
    data = read_json(meta, "pivot metadata")
    if not isinstance(data, dict):
        raise OneCompError(f"pivot metadata {meta} is not a JSON mapping")
    return data


def check_source_pivot(pivot: Path, resolved: ResolvedModel, force: bool) -> None:
    """A pivot can only be refined against the model it was made from, and only
    an intact one (config, formats, weight files and tensor shapes checked)."""
    meta = read_pivot_meta(pivot)
    check_checkpoint(pivot)
    made_from = meta.get("source", {}).get("fingerprint")
    if made_from is not None and made_from != model_fingerprint(resolved.path) and not force:
        raise OneCompError(
            f"{pivot} was made from {meta.get('source', {}).get('spec')!r}, whose files differ from {resolved.spec!r}; "
            "pass the original model as MODEL, or --force to refine against this one anyway"
        )


def pivot_plan(pivot: Path) -> dict[str, FormatSpec]:
    return pivot_formats(read_config(pivot).get("quantization_config"), pivot)


def _check_pivot_layers(pivot: Path, shapes: dict[str, tuple[int, int]]) -> None:
    """The pivot's quantized layers are linear layers of the model it refines."""
    unknown = sorted(set(pivot_plan(pivot)) - set(shapes))
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise OneCompError(f"{pivot}: layer {unknown[0]}{more} in its quantization_config is not a linear layer of the model; pass the model the pivot was made from")


def _pivot_row(out: Path, name: str, info: dict[str, Any], ref: dict[str, float]) -> dict[str, Any]:
    metrics = info.get("metrics", {})
    return {
        "path": str(out / "pivots" / name),
        "stage": info["stage"],
        "metrics": metrics,
        "stderr": info.get("stderr", {}),
        "ratios": {k: metrics[k] / ref[k] for k in metrics if ref.get(k)},
        "bits_per_weight": info["bits_per_weight"],
        "weight_bytes": info["weight_bytes"],
        "stage_seconds": info.get("seconds"),
        "peak_rss_bytes": info.get("peak_rss_bytes"),
        "accepted": info.get("accepted", True),
        "note": info.get("note", ""),
    }


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
    source_pivot = Path(config.from_pivot).resolve() if config.from_pivot else None
    if resuming:
        stored = read_state(out).get("fingerprint", {})
        _check_fingerprint(stored, _fingerprint(config, resolved, stored.get("calibration")), force)
        log.info("resuming the job in %s", out)
    else:
        atomic_write_text(out / "job.yaml", config.to_yaml())
        write_state(
            out, version=__version__, job=_job_identity(config), stages=config.stages, done=[], current=None,
            best=None, stages_info={}, fingerprint=_fingerprint(config, resolved, None),
        )

    adapter = adapter_for(profile.model_type)
    raw_cfg = json.loads((resolved.path / "config.json").read_text())
    facts = model_facts(profile, raw_cfg)
    shapes, names = facts.shapes, list(facts.shapes)
    method, options = get_method(config.quant.method), config.quant.method_options()
    mixed: Budget | None = None
    plan: dict[str, FormatSpec] | None
    if source_pivot is not None:
        plan = pivot_plan(source_pivot)
        budget: dict[str, Any] = {"kind": "from_pivot", "pivot": str(source_pivot)}
    elif config.plan.file is not None:
        plan = load_plan_layers(Path(config.plan.file), shapes)
        budget = {"kind": "file", "path": config.plan.file}
    elif config.plan.mixed:
        mixed = mixed_budget(config, facts)
        plan, budget = None, mixed.to_json()
    else:
        fmt = config.quant.format()
        plan = {name: fmt for name in names}
        budget = {"kind": "uniform", "format": fmt.to_json()}
    if resuming and plan is None and (out / "plan.json").is_file():  # the plan this job already solved
        plan = load_plan_layers(out / "plan.json", shapes)
    needs_calib = mixed is not None or any(STAGES[s].needs_calibration(config) for s in config.stages)
    estimate = job_memory_estimate(config, profile, raw_cfg, device.type == "cuda", plan, mixed is not None)
    if plan is not None:
        packed_bytes = sum(f.storage_bytes(*shapes[n]) for n, f in plan.items() if n in shapes)
        qparams = sum(shapes[n][0] * shapes[n][1] for n in plan if n in shapes)
        pivot_bytes = int(packed_bytes + (profile.total_params - qparams) * facts.dtype_bytes)
    else:
        assert mixed is not None
        pivot_bytes = mixed.capacity // 8 + fixed_bytes(facts, names) if mixed.kind == "bpw" else int(mixed.target)
    hardware = _check_fits(out, estimate.host_peak_bytes, estimate.device_peak_bytes, pivot_bytes * len(config.stages), device)
    discard_replaced(out)  # the preflight passed: the job this one replaces goes now
    atomic_write_json(out / "inspect.json", {"model": profile.to_dict(), "hardware": hardware, "estimate": estimate.to_dict(), "source": {"spec": resolved.spec, "path": str(resolved.path), "kind": resolved.source}})
    if plan is not None and not (resuming and (out / "plan.json").is_file()):
        atomic_write_json(out / "plan.json", {"budget": budget, "layers": {n: f.to_json() for n, f in plan.items()}})

    compute_dtype = resolve_compute_dtype(config.calib.dtype, device, hardware)
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path)
    input_ids = None
    calib_record: dict[str, Any] = {}
    if needs_calib:
        calib = build_calibration(tokenizer, config.calib.source, config.calib.nsamples, seqlen, config.calib.seed)
        atomic_write_json(out / "logs" / "calibration.json", calib.record)
        input_ids, calib_record = calib.input_ids, calib.record
        stored_sha = read_state(out).get("fingerprint", {}).get("calibration")
        if resuming and stored_sha not in (None, calib.record["sha256"]) and not force:
            raise OneCompError("cannot resume: the calibration tokens differ from the job's (calibration); pass --force to resume anyway")
        write_state(out, fingerprint=_fingerprint(config, resolved, calib.record["sha256"]))

    if plan is None:
        assert mixed is not None and input_ids is not None
        measurement = obtain_measurement(
            config.plan, method, options, out, resolved.path, profile, adapter, names, input_ids, calib_record["sha256"],
            config.calib.batch_size, device, compute_dtype, reporter, force, facts,
        )
        solved = build_plan(measurement, names, adapter.fused_units(names), config.plan, mixed, shapes)
        solved.save(out / "plan.json")
        plan = solved.layers
        reporter.info(plan_summary_line(solved))
        for warning in solved.warnings:
            record_warning(out, JobWarning("plan", warning), config.strict, reporter)

    evaluates = bool(config.eval.ppl or config.eval.tasks)
    ref = reference_scores(resolved.path, tokenizer, config.eval, device, reporter, resolved.spec) if evaluates else Scores()
    ref_metrics = ref.metrics
    ctx = StageContext(
        config, out, reporter, device, resolved, profile, adapter, plan, input_ids, compute_dtype,
        storage_dtype(raw_cfg),
        meta={
            "source": {"spec": resolved.spec, "fingerprint": model_fingerprint(resolved.path)},
            "calibration": {"source": config.calib.source, "nsamples": config.calib.nsamples, "seqlen": seqlen, "seed": config.calib.seed, "sha256": calib_record.get("sha256"), "dtype": str(compute_dtype).removeprefix("torch.")},
        },
    )
    # the best pivot is chosen on the built-in selection split, never on the text it is reported on
    # (with evaluation off nothing is scored: each stage's pivot is kept, as the selection record says)
    candidates_count = len(config.stages) + (source_pivot is not None)
    selects = evaluates and candidates_count > 1
    protocol: dict[str, Any] = ref.protocol if evaluates else {}

    def score(path: Path, label: str) -> dict[str, Any]:
        if not (evaluates or selects):
            return {"metrics": {}, "stderr": {}}
        model = load(path, device=device, dtype=torch.float32)
        scores = evaluate(model, tokenizer, config.eval, device, reporter, label) if evaluates else Scores()
        got: dict[str, Any] = {"metrics": scores.metrics, "stderr": scores.stderr}
        if selects:
            got["selection"] = score_selection(model, tokenizer, config.eval.batch_size, device, reporter, label)[0]
        return got

    state = read_state(out)
    results_input: dict[str, Any] | None = None
    if source_pivot is not None:
        info = state.get("input_info")
        if info is None:
            meta = read_pivot_meta(source_pivot)
            info = {**score(source_pivot, "the input pivot"), "bits_per_weight": meta.get("bits_per_weight"), "weight_bytes": _dir_weight_bytes(source_pivot)}
            state = write_state(out, input_info=info)
        results_input = {**info, "path": str(source_pivot)}
    stages_info: dict[str, Any] = state.get("stages_info", {})
    best: str | None = state.get("best")
    best_metric = (stages_info[best] if best else (results_input or {})).get("selection")

    for number, name in enumerate(config.stages, 1):
        stage = STAGES[name]
        reporter.info(stage_line(config, number, name))
        pivot_dir = out / "pivots" / stage.pivot
        source = out / "pivots" / best if best else source_pivot
        info = stages_info.get(stage.pivot)
        if info is None:
            if (pivot_dir / META_FILE).is_file():  # killed after the pivot was written, before it was recorded
                meta = json.loads((pivot_dir / META_FILE).read_text())
                progress = read_state(out).get("progress", {}).get(name, {})
                outcome = StageOutcome(meta["bits_per_weight"], float(progress.get("seconds", 0.0)), peak_rss_bytes())
            else:
                write_state(out, current=name)
                outcome = stage.run(ctx, source, pivot_dir)
            info = {
                "stage": name, "bits_per_weight": outcome.bits_per_weight, "seconds": outcome.seconds,
                "peak_rss_bytes": outcome.peak_rss_bytes, "weight_bytes": _dir_weight_bytes(pivot_dir), "details": outcome.info,
            }
            stages_info[stage.pivot] = info
            write_state(out, stages_info=stages_info, done=[s for s in config.stages if STAGES[s].pivot in stages_info], current=None)
            shutil.rmtree(ctx.work_dir(name), ignore_errors=True)  # the pivot now holds the stage's result
            if (out / "work").is_dir() and not any((out / "work").iterdir()):
                (out / "work").rmdir()
        else:
            reporter.info(f"stage {name} already done: using pivot {stage.pivot}")
        if "accepted" not in info:
            info.update(score(pivot_dir, f"pivot {stage.pivot}"))
            value = info.get("selection")
            info["accepted"] = value is None or best_metric is None or value <= best_metric
            if info["accepted"]:
                best, best_metric = stage.pivot, value
            else:
                previous = best or "the input pivot"
                info["note"] = f"worse than {previous} on the selection text ({value:.3f} > {best_metric:.3f}); not the best"
                reporter.info(f"{name}: selection perplexity {value:.3f} is worse than {previous}'s {best_metric:.3f}; the next stage starts from {previous}")
            stages_info[stage.pivot] = info
            write_state(out, stages_info=stages_info, best=best)
    if best is not None:
        stages_info[best]["note"] = "best"
        write_state(out, stages_info=stages_info)

    original = {"metrics": ref_metrics, "stderr": ref.stderr, "path": str(resolved.path), "weight_bytes": _dir_weight_bytes(resolved.path), "bits_per_weight": 16.0 if profile.dtype in ("bfloat16", "float16") else 32.0}
    results: dict[str, Any] = {
        "schema": 3,
        "protocol": protocol or read_state(out).get("protocol", {}),
        "original": original,
        "pivots": {STAGES[n].pivot: _pivot_row(out, STAGES[n].pivot, stages_info[STAGES[n].pivot], ref_metrics) for n in config.stages},
        "best": best,
        "peak_rss_bytes": peak_rss_bytes(),
        "estimate_host_peak_bytes": estimate.host_peak_bytes,
        "total_seconds": time.perf_counter() - t_start,
        "warnings": job_warnings(out),
    }
    if results_input is not None:
        results["input"] = results_input
    candidates = {**({"input": results_input} if results_input else {}), **{STAGES[n].pivot: stages_info[STAGES[n].pivot] for n in config.stages}}
    values = {k: v["selection"] for k, v in candidates.items() if v.get("selection") is not None}
    results["selection"] = selection_record(values, best, selection_windows(tokenizer).record if selects else None, candidates_count)
    results["headline"] = headline_map([k for row in (ref_metrics, *(c.get("metrics", {}) for c in candidates.values())) for k in row], config.eval.tasks)
    results["job"] = job_record(config, resolved.spec, budget, needs_calib)
    planned = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    results["plan"] = {k: planned[k] for k in ("budget", "achieved", "predicted") if k in planned}
    if protocol:
        write_state(out, protocol=protocol)
    atomic_write_json(out / "eval" / "results.json", results)
    write_report(out / "eval", results)
    write_state(out, complete=True)
    return summary_from_results(out)


def summary_from_results(out: Path) -> JobSummary:
    results = json.loads((out / "eval" / "results.json").read_text())
    orig = results["original"]
    rows = [Row("original", orig.get("bits_per_weight"), orig.get("weight_bytes", 0), orig["metrics"], path=orig.get("path"))]
    if "input" in results:
        p = results["input"]
        rows.append(Row("input pivot", p["bits_per_weight"], p["weight_bytes"], p["metrics"], path=p["path"]))
    for name, p in results["pivots"].items():
        rows.append(
            Row(name, p["bits_per_weight"], p["weight_bytes"], p["metrics"], p.get("stage_seconds"), p.get("peak_rss_bytes"), p["path"], p.get("note", ""))
        )
    return JobSummary(out, rows, results.get("best"), results.get("warnings", []))


