"""The ``onecomp`` command line: thin; parses options into a JobConfig and
hands it to the pipeline. Bad input ends in one clear line, never a traceback."""

from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from onecomp.errors import OneCompError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Compress large language models after training: inspect, plan, quantize in stages, evaluate.",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from onecomp import __version__

        typer.echo(f"onecomp {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Options before the command; the app's help text is set on ``app``."""


def _overrides(**values: Any) -> dict[str, Any]:
    """Nested dict of the options the user actually gave ("quant.bits" -> {"quant": {"bits": ..}})."""
    out: dict[str, Any] = {}
    for dotted, value in values.items():
        if value is None:
            continue
        node = out
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _items(text: str) -> list[str]:
    """A comma-separated command-line list, blanks dropped."""
    return [s.strip() for s in text.split(",") if s.strip()]


def _items_or_none(text: str) -> list[str]:
    """Like :func:`_items`, with 'none' for the empty list."""
    return [] if text.strip().lower() == "none" else _items(text)


def _eval_selection(spec: str) -> tuple[list[str], list[str]]:
    """--eval items split into perplexity texts and lm-eval tasks; 'none' selects nothing."""
    from onecomp.data.sources import is_text_spec

    if spec.strip().lower() == "none":
        return [], []
    items = _items(spec)
    if not items:
        raise OneCompError("--eval takes perplexity texts and task names, comma-separated, or 'none'")
    return [s for s in items if is_text_spec(s)], [s for s in items if not is_text_spec(s)]


def _whole(value: float | None) -> int | float | None:
    """4.0 from the command line is the integer 4 (integer formats), 1.5 stays a rate."""
    return int(value) if value is not None and float(value).is_integer() else value


def _memory(value: str | None) -> float | str | None:
    """--memory GB or auto."""
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return float(value)
    except ValueError:
        raise OneCompError(f"--memory takes a number of GB or 'auto', not {value!r}") from None


def _one_budget(**given: Any) -> None:
    named = [f"--{k}" for k, v in given.items() if v is not None]
    if len(named) > 1:
        raise OneCompError(f"{' and '.join(named)} both set the formats; give one of --bits (uniform), --bpw, --memory or --plan")


@app.command()
def compress(
    model: Optional[str] = typer.Argument(None, help="Hub id, local model directory, .gguf file, or built-in alias (smollm2-135m). With --from-pivot: the original model (default: the one the pivot was made from)."),
    bits: Optional[float] = typer.Option(None, "--bits", help="Uniform bits: 2, 3, 4 or 8 for gptq/rtn/lords; bits per weight, every sign and float counted, for dbf/mdbf (e.g. 1.5). (default: 4; dbf/mdbf: 2)", rich_help_panel="Format"),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Columns per scale group; -1 for per-channel. A last group shorter than this is fine. (default: 128)", rich_help_panel="Format"),
    method: Optional[str] = typer.Option(None, "--method", help="Layer-wise method: gptq, rtn, dbf, mdbf or lords, each followed by QEP unless --no-qep (gptq + QEP, rtn + QEP, ...). QEP runs calibration passes, so rtn + QEP is far slower than plain rounding (--method rtn --no-qep, seconds). (default: gptq)", rich_help_panel="Method"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="Symmetric grid (no zero points) or asymmetric. (default: asym)", rich_help_panel="Format"),
    qep: Optional[bool] = typer.Option(None, "--qep/--no-qep", help="Quantization error propagation: correct each layer for the error earlier quantized layers left in its inputs. (default: on)", rich_help_panel="Method"),
    bpw: Optional[float] = typer.Option(None, "--bpw", help="Mixed precision: average bits per weight over the quantized layers, every scale and zero counted.", rich_help_panel="Format"),
    memory: Optional[str] = typer.Option(None, "--memory", help="Mixed precision: total weight memory of the compressed model in GB (10^9 bytes), or 'auto' to fit this machine.", rich_help_panel="Format"),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Use this plan.json (from `onecomp plan`, possibly edited) for the per-layer formats.", rich_help_panel="Format"),
    measurement: Optional[Path] = typer.Option(None, "--measurement", help="With --bpw/--memory: reuse this measurement.json instead of measuring.", rich_help_panel="Format"),
    stages: Optional[str] = typer.Option(None, "--stages", help="Comma-separated stages, in order: layerwise, blockwise, global. (default: layerwise)", rich_help_panel="Method"),
    from_pivot: Optional[str] = typer.Option(None, "--from-pivot", help="Refine this pivot (e.g. OUT/pivots/1-layerwise) instead of quantizing MODEL; use with --stages blockwise,global.", rich_help_panel="Method"),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration text: builtin (offline Wikipedia leads), pydoc, c4, wikitext2, or a .txt/.jsonl file. (default: builtin)", rich_help_panel="Calibration"),
    nsamples: Optional[int] = typer.Option(None, "--nsamples", help="Calibration sequences. (default: 128)", rich_help_panel="Calibration"),
    seqlen: Optional[int] = typer.Option(None, "--seqlen", help="Tokens per calibration sequence. (default: 512 on CPU, 2048 on GPU)", rich_help_panel="Calibration"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the calibration selection. (default: 0)", rich_help_panel="Calibration"),
    eval_spec: Optional[str] = typer.Option(None, "--eval", help="What to score, comma-separated: perplexity texts (builtin, pydoc, c4, wikitext2, a .txt/.jsonl file) and lm-eval tasks (onecomp_wiki_continuation, onecomp_wiki_title, or standard names such as arc_easy, which need the hub), or none. (default: builtin,onecomp_wiki_continuation,onecomp_wiki_title)", rich_help_panel="Evaluation"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Items per lm-eval task (the first ones). (default: all)", rich_help_panel="Evaluation"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (the GPU to use). (default: auto)", rich_help_panel="Job"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Job directory. (default: onecomp-out/<model>-<method>-<format>)", rich_help_panel="Job"),
    config: Optional[Path] = typer.Option(None, "--config", help="Job YAML (same keys as OUT/job.yaml); command-line options override it.", rich_help_panel="Job"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing job in the output directory.", rich_help_panel="Job"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted job in --output from its last durable state (finished blocks are kept).", rich_help_panel="Job"),
    force: bool = typer.Option(False, "--force", help="With --resume: continue even if the job's inputs changed.", rich_help_panel="Job"),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first warning (e.g. a damping raised to factor a Hessian, a layer refinement cannot train) instead of recording it; written pivots are kept.", rich_help_panel="Job"),
) -> None:
    """Compress MODEL and evaluate the result against the original."""
    if model or from_pivot or config:
        _banner(f"compressing {model or from_pivot or config}" + (f" -> {output}" if output else ""))
    _quiet_transformers()
    from onecomp.config import load_job_yaml, merge
    from onecomp.job_defaults import complete_job

    _one_budget(bits=bits, bpw=bpw, memory=memory, plan=plan_file)
    base: dict[str, Any] = load_job_yaml(config) if config else {}
    stage_list = _items(stages) if stages is not None else None
    ppl, tasks = _eval_selection(eval_spec) if eval_spec is not None else (None, None)
    given = _overrides(
        model=model, output=output, device=device, stages=stage_list, from_pivot=from_pivot,
        quant__method=method, quant__bits=_whole(bits), quant__group_size=group_size, quant__sym=sym, quant__qep__enabled=qep,
        calib__source=calib, calib__nsamples=nsamples, calib__seqlen=seqlen, calib__seed=seed, eval__ppl=ppl, eval__tasks=tasks, eval__limit=eval_limit,
        plan__bpw=bpw, plan__memory_gb=_memory(memory), plan__file=str(plan_file) if plan_file else None,
        plan__measurement=str(measurement) if measurement else None, strict=strict or None,
    )
    job = complete_job(merge(base, given), where=str(config) if config else "")

    from onecomp.pipeline import compress as run
    from onecomp.ui import RichReporter

    with _on_interrupt(lambda: _resume_hint(Path(job.output))):
        summary = run(job, RichReporter(), overwrite=overwrite, resume=resume, force=force)
    _print_summary(summary, job)


def _banner(what: str) -> None:
    """In a terminal, say at once what runs: importing torch and transformers takes seconds.
    (In a log the job's own lines follow soon enough, and a bad input stays a one-line error.)"""
    from onecomp import __version__
    from onecomp.ui import err_console

    if err_console.is_terminal:
        err_console.print(f"onecomp {__version__}: {what}", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C ends the command with exit 130 and one line on how to continue
    (typer, left to itself, turns it into a silent exit code)."""
    from onecomp.errors import Interrupted

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(hint()) from None


def _resume_hint(out: Path) -> str:
    from rich.markup import escape

    if not (out / "state.json").is_file():
        return "interrupted before the job started; nothing to resume"
    return escape(f"interrupted; work finished so far is kept in {out}; continue with: onecomp resume {shlex.quote(str(out))}")


def _print_summary(summary, job) -> None:  # noqa: ANN001 - JobSummary and JobConfig, imported lazily
    from onecomp.describe import job_caption
    from onecomp.ui import console, summary_table, wide_console

    wide_console().print(summary_table(summary, job_caption(job)))
    fallback = "input pivot" if any(r.name == "input pivot" for r in summary.rows) else summary.rows[-1].name
    best = next(r for r in summary.rows if r.name == (summary.best or fallback))
    console.print(f"best pivot: {best.path}\nresults: {summary.output / 'eval' / 'results.json'}")
    if summary.warnings:
        console.print(f"{len(summary.warnings)} warning(s), also in results.json:", style="yellow", highlight=False)
        for line in summary.warning_lines():
            console.print(f"  {line}", style="yellow", highlight=False, markup=False, soft_wrap=True)


@app.command("inspect")
def inspect_cmd(
    model: str = typer.Argument(..., help="Hub id, local directory (config.json alone is enough), .gguf file or alias."),
    stages: str = typer.Option("layerwise,blockwise,global", "--stages", help="Stages to estimate, in order. (default: all three)", show_default=False),
    nsamples: int = typer.Option(128, help="Calibration sequences assumed by the memory estimate. (default: 128)", show_default=False),
    seqlen: Optional[int] = typer.Option(None, help="Calibration length assumed by the estimate. (default: 512 on CPU, 2048 on GPU)"),
    eval_spec: Optional[str] = typer.Option(None, "--eval", help="What the job would score, as for compress (e.g. builtin, or none). (default: builtin and the built-in tasks)"),
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="Plan for a GPU with this much memory, in GiB (24 for a 24 GB card), instead of this machine's devices."),
    host_memory: Optional[float] = typer.Option(None, "--host-memory", help="Plan for this much host memory, in GiB, instead of what is available here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Profile MODEL and the machine, and estimate each stage's memory peaks and whether they fit."""
    _quiet_transformers()
    from onecomp.config import build_job_config
    from onecomp.hardware import detect_hardware
    from onecomp.inspect import profile_model
    from onecomp.models.resolve import resolve_model
    from onecomp.preflight import job_memory_estimate
    from onecomp.ui import RichReporter, console, fit_table, profile_tables

    for name, value in (("--gpu-memory", gpu_memory), ("--host-memory", host_memory)):
        if value is not None and not value > 0:
            raise OneCompError(f"{name} must be a positive number of GiB, not {value:g}")
    resolved = resolve_model(model, RichReporter(), need_weights=False)  # a first GGUF conversion shows its progress on stderr
    profile = profile_model(resolved.path)
    hardware = detect_hardware().to_dict()
    gpus = hardware.get("gpus") or []
    on_gpu = gpu_memory is not None or bool(gpus)
    gpu_bytes = int(gpu_memory * 2**30) if gpu_memory is not None else (gpus[0]["total_memory_bytes"] if gpus else None)
    host_bytes = int(host_memory * 2**30) if host_memory is not None else int(hardware["ram_available_bytes"])
    machine = {"host_bytes": host_bytes, "gpu_bytes": gpu_bytes, "given": gpu_memory is not None or host_memory is not None}
    estimate = None
    if profile.supported:
        job: dict[str, Any] = {"model": model, "output": "-", "stages": _items(stages), "calib": {"nsamples": nsamples, "seqlen": seqlen}, "device": "cuda" if on_gpu else "cpu"}
        if eval_spec is not None:
            texts, task_names = _eval_selection(eval_spec)
            job["eval"] = {"ppl": texts, "tasks": task_names}
        config = build_job_config(job, "inspect options")
        fmt = config.quant.format()
        estimate = job_memory_estimate(config, profile, on_gpu, {li.name: fmt for li in profile.linears}, False)
    if as_json:
        fits = {k: _phase_fits(estimate, k, machine) for k in estimate.phases} if estimate else {}
        data = {"model": profile.to_dict(), "hardware": hardware, "machine": machine, "estimate": estimate.to_dict() if estimate else None, "fits": fits}
        console.print_json(json.dumps(data))
        return
    for table in profile_tables(profile, hardware):
        console.print(table)
    if estimate is not None:
        console.print(fit_table(estimate, {k: _phase_fits(estimate, k, machine) for k in estimate.phases}, machine))
    if not profile.supported:
        console.print(f"[yellow]architecture {profile.model_type!r} is not supported for compression yet[/]")


def _phase_fits(estimate: Any, phase: str, machine: dict[str, Any]) -> bool:
    host_ok = estimate.host_of(phase) <= machine["host_bytes"]
    gpu = machine["gpu_bytes"]
    return host_ok and (gpu is None or estimate.phases[phase].device <= gpu)


@app.command("eval")
def eval_cmd(
    checkpoint: str = typer.Argument(..., help="A pivot directory, a model directory, a .gguf file or an alias."),
    eval_spec: Optional[str] = typer.Option(None, "--eval", help="What to score, comma-separated, as for compress: perplexity texts (builtin, pydoc, c4, wikitext2, a .txt/.jsonl file) and lm-eval tasks (onecomp_wiki_continuation, onecomp_wiki_title, or standard names such as arc_easy, which need the hub). (default: builtin)"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Items per lm-eval task (the first ones). (default: all)"),
    seqlen: int = typer.Option(512, help="Tokens per perplexity window. (default: 512)", show_default=False),
    max_windows: Optional[int] = typer.Option(64, help="Windows per text (the first ones). (default: 64)", show_default=False),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (the GPU to use). (default: auto)", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the scores to this JSON file."),
    ppl: Optional[str] = typer.Option(None, "--ppl", hidden=True),  # the older spelling: texts only
    tasks: Optional[str] = typer.Option(None, "--tasks", hidden=True),  # the older spelling: tasks only
    limit: Optional[int] = typer.Option(None, "--limit", hidden=True),  # the older spelling of --eval-limit
) -> None:
    """Score any checkpoint (pivot or plain model) under the fixed protocol."""
    _quiet_transformers()
    import torch
    import transformers

    from onecomp.checkpoint import check_checkpoint, load
    from onecomp.config import EvalConfig
    from onecomp.eval.lm_tasks import check_tasks
    from onecomp.eval.suite import evaluate, evaluate_streamed
    from onecomp.models.configs import read_config
    from onecomp.io import atomic_write_json
    from onecomp.models.resolve import resolve_model
    from onecomp.devices import resolve_device
    from onecomp.ui import RichReporter, console

    texts, task_names = _eval_items(eval_spec, ppl, tasks)
    if eval_limit is not None and limit is not None:
        raise OneCompError("--limit is the older name of --eval-limit; give one of them")
    limit = eval_limit if eval_limit is not None else limit
    cfg = _validated(EvalConfig, ppl=texts, tasks=task_names, limit=limit, seqlen=seqlen, max_windows=max_windows)
    if not cfg.ppl and not cfg.tasks:
        raise OneCompError("nothing to score: give --eval with perplexity texts and/or tasks")
    resolved = resolve_model(checkpoint, RichReporter())
    check_tasks(cfg.tasks)
    dev = resolve_device(device)
    check_checkpoint(resolved.path)  # config, formats and weight files, before anything is read
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path)
    if "quantization_config" in read_config(resolved.path):  # a pivot: loaded packed
        model = load(resolved.path, device=dev, dtype=torch.float32)
        scores = evaluate(model, tokenizer, cfg, dev, RichReporter(), checkpoint)
    else:  # a plain model is read block by block: it need not fit in memory
        scores = evaluate_streamed(resolved.path, tokenizer, cfg, dev, RichReporter(), checkpoint)
    result = {"checkpoint": checkpoint, **scores.to_json()}
    if output is not None:
        atomic_write_json(output, result)
    console.print_json(json.dumps(result))


def _eval_items(spec: str | None, ppl: str | None, tasks: str | None) -> tuple[list[str], list[str]]:
    """`eval`'s texts and tasks, from --eval or from the older --ppl/--tasks (texts: builtin unless given)."""
    if spec is not None:
        if ppl is not None or tasks is not None:
            raise OneCompError("--ppl and --tasks are the older spelling of --eval; give --eval alone")
        return _eval_selection(spec)
    return _items_or_none(ppl if ppl is not None else "builtin"), _items_or_none(tasks if tasks is not None else "none")


def _validated(model_cls, **values: Any):  # noqa: ANN001, ANN202 - a pydantic model class and its instance
    """Build a settings object from command-line values, bad values ending in one line."""
    from pydantic import ValidationError

    from onecomp.config import format_validation_error

    try:
        return model_cls(**values)
    except ValidationError as err:
        raise OneCompError(format_validation_error(err)) from None


@app.command()
def resume(
    job_dir: Path = typer.Argument(..., help="Job directory to continue."),
    force: bool = typer.Option(False, "--force", help="Continue even if the job's inputs changed."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Stop at the first warning, or record warnings and go on. (default: as the job was started)"),
) -> None:
    """Continue a job from its last durable state: finished blocks and stages are not redone."""
    _banner(f"resuming {job_dir}")
    _quiet_transformers()
    from onecomp.config import build_job_config, load_job_yaml
    from onecomp.pipeline import compress as run
    from onecomp.ui import RichReporter

    if not (job_dir / "job.yaml").is_file() or not (job_dir / "state.json").is_file():
        raise OneCompError(f"{job_dir} holds no onecomp job to resume (no job.yaml/state.json)")
    data = load_job_yaml(job_dir / "job.yaml")
    data["output"] = str(job_dir)
    if strict is not None:
        data["strict"] = strict
    job = build_job_config(data, where=str(job_dir / "job.yaml"))
    with _on_interrupt(lambda: _resume_hint(job_dir)):
        summary = run(job, RichReporter(), resume=True, force=force)
    _print_summary(summary, job)


@app.command()
def plan(
    model: str = typer.Argument(..., help="Hub id, local directory, .gguf file or alias."),
    bpw: Optional[float] = typer.Option(None, "--bpw", help="Average bits per weight over the quantized layers, every scale and zero counted."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Total weight memory of the compressed model in GB (10^9 bytes), or 'auto' to fit this machine. (default: auto)"),
    measurement: Optional[Path] = typer.Option(None, "--measurement", help="Re-plan from this measurement.json (seconds; the model is not run)."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated format labels to choose from, e.g. w2g64,w3g128,w4g128; other kinds (dbf2, lords3g128nf) are measured with their own method. (default: the method's own kind, for gptq all integer 2/3/4/8-bit at g32/g64/g128/per-channel plus lords2g128nf, lords3g128nf, lords4g128nf)"),
    pin: Optional[list[str]] = typer.Option(None, "--pin", help="PATTERN=FORMAT: force layers matching the pattern, e.g. '*.down_proj=w4g128'. Repeatable."),
    fused_groups: Optional[bool] = typer.Option(None, "--fused-groups/--no-fused-groups", help="Give layers that engines fuse (q/k/v, gate/up) one format. (default: on)"),
    method: Optional[str] = typer.Option(None, "--method", help="Layer-wise method whose errors are measured: gptq, rtn, dbf, mdbf or lords (candidates of other formats are measured with their own method). (default: gptq)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration text (as for compress). (default: builtin)"),
    nsamples: Optional[int] = typer.Option(None, "--nsamples", help="Calibration sequences. (default: 128)"),
    seqlen: Optional[int] = typer.Option(None, "--seqlen", help="Tokens per calibration sequence. (default: 512 on CPU, 2048 on GPU)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (the GPU to use). (default: auto)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Directory for plan.json (and measurement.json). (default: onecomp-out/<model>-plan)"),
    config: Optional[Path] = typer.Option(None, "--config", help="Job YAML; its plan: and calib: sections apply."),
    force: bool = typer.Option(False, "--force", help="Use a measurement made on other model files anyway."),
) -> None:
    """Plan a format for every linear layer to meet a budget, from measured sensitivity; writes plan.json for `compress --plan`."""
    from onecomp.config import build_job_config, load_job_yaml, merge
    from onecomp.plan_executor import plan_job
    from onecomp.ui import RichReporter, console, plan_tables

    _one_budget(bpw=bpw, memory=memory)
    if measurement is None:
        _quiet_transformers()
    base: dict[str, Any] = load_job_yaml(config) if config else {}
    pins = dict(_pin(p) for p in pin) if pin else None
    given = _overrides(
        model=model, device=device, quant__method=method, calib__source=calib, calib__nsamples=nsamples, calib__seqlen=seqlen,
        plan__bpw=bpw, plan__memory_gb=_memory(memory), plan__measurement=str(measurement) if measurement else None,
        plan__candidates=_items(candidates) if candidates else None,
        plan__pin=pins, plan__fused_groups=fused_groups,
    )
    data = merge(base, given)
    plan_cfg = data.setdefault("plan", {})
    if plan_cfg.get("bpw") is None and plan_cfg.get("memory_gb") is None:
        plan_cfg["memory_gb"] = "auto"
    out = output or Path(f"onecomp-out/{Path(model.rstrip('/')).name.removesuffix('.gguf')}-plan")
    data["output"] = str(out)
    job = build_job_config(data, where=str(config) if config else "")
    with _on_interrupt(lambda: "interrupted; measured blocks are kept; run the same command again to continue"):
        result, shapes = plan_job(job, out, RichReporter(), force=force)
    for table in plan_tables(result, shapes):
        console.print(table)
    console.print(f"plan: {out / 'plan.json'}  (compress with: onecomp compress {model} --plan {out / 'plan.json'})")


def _pin(text: str) -> tuple[str, str]:
    pattern, sep, label = text.partition("=")
    if not sep or not pattern.strip() or not label.strip():
        raise OneCompError(f"--pin takes PATTERN=FORMAT (e.g. '*.down_proj=w4g128'), not {text!r}")
    return pattern.strip(), label.strip()


@app.command()
def batch(
    batch_yaml: Path = typer.Argument(..., help="Batch YAML: output, defaults, and jobs and/or matrix (see docs/batch.md)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded jobs with estimated peak memory and a rough time, and run nothing."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated job names to run; the others are left as they are."),
) -> None:
    """Run many jobs from one YAML file (each in OUTPUT/<name>, resumable), then compare every pivot."""
    _quiet_transformers()
    from onecomp.batch import load_batch
    from onecomp.ui import console, err_console

    spec = load_batch(batch_yaml)  # every error of the file, before anything runs
    selected = spec.select(_items(only) if only else None)
    if dry_run:
        from onecomp.batch.dryrun import dry_run_rows, dry_run_table

        rows = dry_run_rows(selected)
        console.print(dry_run_table(spec, rows))
        for r in rows:
            if r.problem:
                err_console.print(f"warning: {r.job.name}: {r.problem}", style="yellow", highlight=False, markup=False)
        return
    from rich.markup import escape

    from onecomp.batch import run_batch
    from onecomp.batch.compare import rich_table
    from onecomp.ui import RichReporter, wide_console

    with _on_interrupt(lambda: escape(f"interrupted; finished jobs are kept; continue with: onecomp batch {shlex.quote(str(batch_yaml))}")):
        outcome = run_batch(spec, selected, RichReporter())
    # a log or a pipe has no width to respect: print the table whole rather than cropped to 80 columns
    wide_console().print(rich_table(outcome.rows, f"onecomp batch: {spec.output}"))
    console.print(f"comparison: {outcome.reports['md']}, {outcome.reports['csv']}\nreport: {outcome.reports['html']}\nstate: {spec.output / 'batch.json'}", markup=False)
    if outcome.failed:
        from onecomp.batch.runner import JobsFailed

        names = ", ".join(f"{r.name} ({r.error})" for r in outcome.failed)
        raise JobsFailed(escape(f"{len(outcome.failed)} of {len(selected)} jobs failed: {names}; tracebacks in {spec.output / 'batch-logs'}"))


def _quiet_libraries() -> None:
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("onecomp").setLevel(logging.INFO)


def _quiet_transformers() -> None:
    """Our progress bars replace transformers' own. Called by the commands that
    load models, so that re-planning, which never does, skips importing it."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


# typer vendors its own copy of click and raises that copy's exceptions; the
# base class of the public typer.BadParameter is the one actually raised
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_error_line(exc: Exception) -> tuple[str, int]:
    """A usage error as one line, with the command whose --help to read."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message()  # type: ignore[attr-defined]
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return f"{message.rstrip('.')}{hint}", int(getattr(exc, "exit_code", 2))


def main() -> None:
    """Entry point: usage errors and OneCompError end in one line, Ctrl-C in exit 130."""
    from onecomp.errors import Interrupted

    _quiet_libraries()
    try:
        code = app(standalone_mode=False)
    except Interrupted as exc:
        _print_line("stopped:", str(exc))
        sys.exit(exc.exit_code)
    except OneCompError as exc:
        _print_line("error:", str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # before or after typer runs the command
        code = 130
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed; exit as click does
            sys.exit(2)
        from rich.markup import escape

        line, code = _usage_error_line(exc)
        _print_line("error:", escape(line))
        sys.exit(code)
    if code == 130:  # typer turns Ctrl-C outside our jobs into a plain exit code
        _print_line("stopped:", "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _print_line(prefix: str, message: str) -> None:
    """``message`` is rich markup, as OneCompError messages are (batch escapes its own)."""
    from onecomp.ui import err_console

    err_console.print(f"[bold red]{prefix}[/] {message}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
