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
from onecomp.estimate import MemoryEstimate
from onecomp.preflight import job_memory_estimate
from onecomp.plan.run import check_measurement, check_reachable, model_facts, obtain_measurement
from onecomp.io import atomic_write_json, atomic_write_text, read_json
from onecomp.describe import stage_line
from onecomp.devices import resolve_compute_dtype, resolve_device
from onecomp.joblog import open_job_log
from onecomp.jobdir import discard_replaced, foreign_entries, is_onecomp_job, restore_replaced, set_aside_job
from onecomp.models.weights import check_weights
from onecomp.formats.base import FormatSpec
from onecomp.models.adapters import adapter_for
from onecomp.models.resolve import ResolvedModel, resolve_model
from onecomp.reporter import NullReporter, Reporter
from onecomp.runtime.memory import release_freed_memory
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
        index = device.index if device.index is not None else torch.cuda.current_device()
        have = hw.gpus[index]["total_memory_bytes"]
        if device_needed > have:
            raise OneCompError(
                f"this job needs about {device_needed / 2**30:.1f} GiB of GPU memory but {device} has {have / 2**30:.1f} GiB"
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
        _check_fingerprint(stored, _fingerprint(config.for_device(str(device)), resolved, stored.get("calibration")), force)
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


@dataclass
class _Job:
    """What the steps of one job share: its settings (machine defaults filled
    in), where it writes, and the model it compresses."""

    config: JobConfig
    out: Path
    reporter: Reporter
    device: torch.device
    resolved: ResolvedModel
    profile: ModelProfile
    resuming: bool
    force: bool

    def __post_init__(self) -> None:
        self.raw_cfg = json.loads((self.resolved.path / "config.json").read_text())
        self.facts = model_facts(self.profile, self.raw_cfg)
        self.source_pivot = Path(self.config.from_pivot).resolve() if self.config.from_pivot else None

    @property
    def evaluates(self) -> bool:
        return bool(self.config.eval.ppl or self.config.eval.tasks)

    @property
    def selects(self) -> bool:
        """The best pivot is chosen on the built-in selection split (never on the
        text it is reported on) when there is more than one candidate; with
        evaluation off nothing is scored and each stage's pivot is kept."""
        return self.evaluates and self.candidates > 1

    @property
    def candidates(self) -> int:
        return len(self.config.stages) + (self.source_pivot is not None)


@dataclass
class _Plan:
    layers: dict[str, FormatSpec] | None  # None: a mixed-precision plan still to solve
    mixed: Budget | None
    budget: dict[str, Any]


def _record_start(job: _Job) -> None:
    """A new job writes its settings and inputs' fingerprint; a resumed one checks them."""
    out, config = job.out, job.config
    if job.resuming:
        stored = read_state(out).get("fingerprint", {})
        _check_fingerprint(stored, _fingerprint(config, job.resolved, stored.get("calibration")), job.force)
        log.info("resuming the job in %s", out)
        return
    atomic_write_text(out / "job.yaml", config.to_yaml())
    write_state(
        out, version=__version__, job=_job_identity(config), stages=config.stages, done=[], current=None,
        best=None, stages_info={}, fingerprint=_fingerprint(config, job.resolved, None),
    )


def _initial_plan(job: _Job) -> _Plan:
    """The layers' formats as far as they are known before calibration."""
    config, shapes = job.config, job.facts.shapes
    if job.source_pivot is not None:
        plan = _Plan(pivot_plan(job.source_pivot), None, {"kind": "from_pivot", "pivot": str(job.source_pivot)})
    elif config.plan.file is not None:
        plan = _Plan(load_plan_layers(Path(config.plan.file), shapes), None, {"kind": "file", "path": config.plan.file})
    elif config.plan.mixed:
        mixed = mixed_budget(config, job.facts)
        plan = _Plan(None, mixed, mixed.to_json())
    else:
        fmt = config.quant.format()
        plan = _Plan({name: fmt for name in shapes}, None, {"kind": "uniform", "format": fmt.to_json()})
    if job.resuming and plan.layers is None and (job.out / "plan.json").is_file():  # the plan this job already solved
        plan.layers = load_plan_layers(job.out / "plan.json", shapes)
    return plan


def _pivot_bytes(job: _Job, plan: _Plan) -> int:
    shapes = job.facts.shapes
    if plan.layers is not None:
        packed = sum(f.storage_bytes(*shapes[n]) for n, f in plan.layers.items() if n in shapes)
        qparams = sum(shapes[n][0] * shapes[n][1] for n in plan.layers if n in shapes)
        return int(packed + (job.profile.total_params - qparams) * job.facts.dtype_bytes)
    assert plan.mixed is not None
    mixed = plan.mixed
    return mixed.capacity // 8 + fixed_bytes(job.facts, list(shapes)) if mixed.kind == "bpw" else int(mixed.target)


def _preflight(job: _Job, plan: _Plan) -> tuple[MemoryEstimate, dict[str, Any]]:
    """Check memory and disk before any work; then the job this one replaces
    goes, and the profile, estimate and known plan are written."""
    out = job.out
    release_freed_memory()  # the baseline is what the job keeps, not what a first GGUF conversion left in the heap
    estimate = job_memory_estimate(job.config, job.profile, job.device.type == "cuda", plan.layers, plan.mixed is not None)
    pivots = _pivot_bytes(job, plan) * len(job.config.stages)
    hardware = _check_fits(out, estimate.host_peak_bytes, estimate.device_peak_bytes, pivots, job.device)
    discard_replaced(out)
    source = {"spec": job.resolved.spec, "path": str(job.resolved.path), "kind": job.resolved.source}
    atomic_write_json(out / "inspect.json", {"model": job.profile.to_dict(), "hardware": hardware, "estimate": estimate.to_dict(), "source": source})
    if plan.layers is not None and not (job.resuming and (out / "plan.json").is_file()):
        atomic_write_json(out / "plan.json", {"budget": plan.budget, "layers": {n: f.to_json() for n, f in plan.layers.items()}})
    return estimate, hardware


def _calibrate(job: _Job, tokenizer: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """The calibration tokens, recorded; a resumed job refuses different ones."""
    config, out = job.config, job.out
    assert config.calib.seqlen is not None
    calib = build_calibration(tokenizer, config.calib.source, config.calib.nsamples, config.calib.seqlen, config.calib.seed)
    atomic_write_json(out / "logs" / "calibration.json", calib.record)
    stored_sha = read_state(out).get("fingerprint", {}).get("calibration")
    if job.resuming and stored_sha not in (None, calib.record["sha256"]) and not job.force:
        raise OneCompError("cannot resume: the calibration tokens differ from the job's (calibration); pass --force to resume anyway")
    write_state(out, fingerprint=_fingerprint(config, job.resolved, calib.record["sha256"]))
    return calib.input_ids, calib.record


def _solve_plan(job: _Job, plan: _Plan, input_ids: torch.Tensor, calib_sha: str, compute_dtype: torch.dtype) -> dict[str, FormatSpec]:
    """Measure the layers (or reuse a measurement) and solve the mixed-precision plan."""
    config, shapes = job.config, job.facts.shapes
    assert plan.mixed is not None
    names = list(shapes)
    adapter = adapter_for(job.profile.model_type)
    measurement = obtain_measurement(
        config.plan, get_method(config.quant.method), config.quant.method_options(), job.out, job.resolved.path, job.profile, adapter,
        names, input_ids, calib_sha, config.calib.batch_size, job.device, compute_dtype, job.reporter, job.force, job.facts,
    )
    solved = build_plan(measurement, names, adapter.fused_units(names), config.plan, plan.mixed, shapes)
    solved.save(job.out / "plan.json")
    job.reporter.info(plan_summary_line(solved))
    for warning in solved.warnings:
        record_warning(job.out, JobWarning("plan", warning), config.strict, job.reporter)
    return solved.layers


def _stage_context(job: _Job, plan: dict[str, FormatSpec], input_ids: torch.Tensor | None, calib_record: dict[str, Any], compute_dtype: torch.dtype) -> StageContext:
    config, resolved = job.config, job.resolved
    calibration = {
        "source": config.calib.source, "nsamples": config.calib.nsamples, "seqlen": config.calib.seqlen, "seed": config.calib.seed,
        "sha256": calib_record.get("sha256"), "dtype": str(compute_dtype).removeprefix("torch."),
    }
    return StageContext(
        config, job.out, job.reporter, job.device, resolved, job.profile, adapter_for(job.profile.model_type), plan, input_ids, compute_dtype,
        storage_dtype(job.raw_cfg),
        meta={"source": {"spec": resolved.spec, "fingerprint": model_fingerprint(resolved.path)}, "calibration": calibration},
    )


def _score_pivot(job: _Job, tokenizer: Any, path: Path, label: str) -> dict[str, Any]:
    """A pivot's metrics, and its selection perplexity when the job chooses among pivots."""
    if not (job.evaluates or job.selects):
        return {"metrics": {}, "stderr": {}}
    config, device = job.config, job.device
    release_freed_memory()  # what the stage freed goes back before the pivot and its buffers arrive
    model = load(path, device=device, dtype=torch.float32)
    scores = evaluate(model, tokenizer, config.eval, device, job.reporter, label) if job.evaluates else Scores()
    got: dict[str, Any] = {"metrics": scores.metrics, "stderr": scores.stderr}
    if job.selects:
        got["selection"] = score_selection(model, tokenizer, config.eval.batch_size, device, job.reporter, label)[0]
    del model
    release_freed_memory()
    return got


def _input_pivot(job: _Job, tokenizer: Any) -> dict[str, Any] | None:
    """The row of the pivot a refinement job starts from, scored once."""
    if job.source_pivot is None:
        return None
    info = read_state(job.out).get("input_info")
    if info is None:
        meta = read_pivot_meta(job.source_pivot)
        scored = _score_pivot(job, tokenizer, job.source_pivot, "the input pivot")
        info = {**scored, "bits_per_weight": meta.get("bits_per_weight"), "weight_bytes": _dir_weight_bytes(job.source_pivot)}
        write_state(job.out, input_info=info)
    return {**info, "path": str(job.source_pivot)}


def _run_stage(job: _Job, ctx: StageContext, name: str, source: Path | None) -> dict[str, Any]:
    """Run one stage (or recover the pivot it wrote before it was recorded) and record it."""
    out, stage = job.out, STAGES[name]
    pivot_dir = out / "pivots" / stage.pivot
    if (pivot_dir / META_FILE).is_file():  # killed after the pivot was written, before it was recorded
        meta = json.loads((pivot_dir / META_FILE).read_text())
        progress = read_state(out).get("progress", {}).get(name, {})
        outcome = StageOutcome(meta["bits_per_weight"], float(progress.get("seconds", 0.0)), peak_rss_bytes())
    else:
        write_state(out, current=name)
        outcome = stage.run(ctx, source, pivot_dir)
        release_freed_memory()
    info = {
        "stage": name, "bits_per_weight": outcome.bits_per_weight, "seconds": outcome.seconds,
        "peak_rss_bytes": outcome.peak_rss_bytes, "weight_bytes": _dir_weight_bytes(pivot_dir), "details": outcome.info,
    }
    stages_info = {**read_state(out).get("stages_info", {}), stage.pivot: info}
    write_state(out, stages_info=stages_info, done=[s for s in job.config.stages if STAGES[s].pivot in stages_info], current=None)
    shutil.rmtree(ctx.work_dir(name), ignore_errors=True)  # the pivot now holds the stage's result
    if (out / "work").is_dir() and not any((out / "work").iterdir()):
        (out / "work").rmdir()
    return info


def _run_stages(job: _Job, ctx: StageContext, tokenizer: Any, input_row: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """Each stage in order from the best pivot so far; each new pivot is scored
    and kept as the best unless the selection text says it is worse."""
    out, reporter = job.out, job.reporter
    state = read_state(out)
    stages_info: dict[str, Any] = state.get("stages_info", {})
    best: str | None = state.get("best")
    best_metric = (stages_info[best] if best else (input_row or {})).get("selection")
    for number, name in enumerate(job.config.stages, 1):
        stage = STAGES[name]
        reporter.info(stage_line(job.config, number, name))
        info = stages_info.get(stage.pivot)
        if info is None:
            info = _run_stage(job, ctx, name, out / "pivots" / best if best else job.source_pivot)
        else:
            reporter.info(f"stage {name} already done: using pivot {stage.pivot}")
        if "accepted" not in info:
            info.update(_score_pivot(job, tokenizer, out / "pivots" / stage.pivot, f"pivot {stage.pivot}"))
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
    return stages_info, best


def _write_results(
    job: _Job, ref: Scores, stages_info: dict[str, Any], best: str | None, input_row: dict[str, Any] | None,
    estimate: MemoryEstimate, plan: _Plan, needs_calib: bool, tokenizer: Any, seconds: float,
) -> None:
    """eval/results.json and the report: every row against the original, the selection, the plan."""
    out, config, profile = job.out, job.config, job.profile
    ref_metrics = ref.metrics
    protocol: dict[str, Any] = ref.protocol if job.evaluates else {}
    original = {
        "metrics": ref_metrics, "stderr": ref.stderr, "path": str(job.resolved.path), "weight_bytes": _dir_weight_bytes(job.resolved.path),
        "bits_per_weight": 16.0 if profile.dtype in ("bfloat16", "float16") else 32.0,
    }
    pivots = [STAGES[n].pivot for n in config.stages]
    results: dict[str, Any] = {
        "schema": 3,
        "protocol": protocol or read_state(out).get("protocol", {}),
        "original": original,
        "pivots": {p: _pivot_row(out, p, stages_info[p], ref_metrics) for p in pivots},
        "best": best,
        "peak_rss_bytes": peak_rss_bytes(),
        "estimate_host_peak_bytes": estimate.host_peak_bytes,
        "total_seconds": seconds,
        "warnings": job_warnings(out),
    }
    if input_row is not None:
        results["input"] = input_row
    candidates = {**({"input": input_row} if input_row else {}), **{p: stages_info[p] for p in pivots}}
    values = {k: v["selection"] for k, v in candidates.items() if v.get("selection") is not None}
    results["selection"] = selection_record(values, best, selection_windows(tokenizer).record if job.selects else None, job.candidates)
    results["headline"] = headline_map([k for row in (ref_metrics, *(c.get("metrics", {}) for c in candidates.values())) for k in row], config.eval.tasks)
    results["job"] = job_record(config, job.resolved.spec, plan.budget, needs_calib)
    planned = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    results["plan"] = {k: planned[k] for k in ("budget", "achieved", "predicted") if k in planned}
    if protocol:
        write_state(out, protocol=protocol)
    atomic_write_json(out / "eval" / "results.json", results)
    write_report(out / "eval", results)


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
    """The job's steps in order; each records what it did in the job directory."""
    t_start = time.perf_counter()
    job = _Job(config.for_device(str(device)), out, reporter, device, resolved, profile, resuming, force)
    _record_start(job)
    plan = _initial_plan(job)
    estimate, hardware = _preflight(job, plan)
    compute_dtype = resolve_compute_dtype(job.config.calib.dtype, device, hardware)
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path)
    needs_calib = plan.mixed is not None or any(STAGES[s].needs_calibration(job.config) for s in job.config.stages)
    input_ids, calib_record = _calibrate(job, tokenizer) if needs_calib else (None, {})
    if plan.layers is None:
        assert input_ids is not None
        plan.layers = _solve_plan(job, plan, input_ids, calib_record["sha256"], compute_dtype)
    ref = reference_scores(resolved.path, tokenizer, job.config.eval, device, reporter, resolved.spec) if job.evaluates else Scores()
    ctx = _stage_context(job, plan.layers, input_ids, calib_record, compute_dtype)
    input_row = _input_pivot(job, tokenizer)
    stages_info, best = _run_stages(job, ctx, tokenizer, input_row)
    _write_results(job, ref, stages_info, best, input_row, estimate, plan, needs_calib, tokenizer, time.perf_counter() - t_start)
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


