"""Terminal rendering with rich: progress (bars in a terminal, plain lines in a log or pipe) and the summary tables."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing these pulls in transformers
    from onecomp.estimate import MemoryEstimate
    from onecomp.inspect import ModelProfile
    from onecomp.pipeline import JobSummary
    from onecomp.plan.planner import Plan

console = Console(stderr=False)
err_console = Console(stderr=True)
log = logging.getLogger("onecomp")
PLAIN_EVERY_S = 5.0  # at most one plain progress line per task this often (plus the last)


def gib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def mib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


class PlainProgress:
    """Progress as plain lines for a log or a pipe, where a bar's columns get cut:
    the first line, then a line per step but at most one per ``every`` seconds, and the last."""

    def __init__(self, description: str, total: int | None, emit: Callable[[str], None], every: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total, self.emit, self.every, self.clock = description, total, emit, every, clock
        self.done, self.status = 0, ""
        self.start = clock()
        self.emitted_at: float | None = None
        self.emitted_done: int | None = None

    def line(self) -> str:
        elapsed = timedelta(seconds=int(self.clock() - self.start))
        if self.total:
            text = f"{self.description}: {self.done}/{self.total} ({100 * self.done // self.total}%) {elapsed} elapsed"
        else:
            text = f"{self.description}: {self.done} done, {elapsed} elapsed"
        return f"{text}, {self.status}" if self.status else text

    def _emit(self) -> None:
        self.emit(self.line())
        self.emitted_at, self.emitted_done = self.clock(), self.done

    def begin(self) -> None:
        self._emit()

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        if status is not None:
            self.status = status
        if n and (self.emitted_at is None or self.clock() - self.emitted_at >= self.every):
            self._emit()

    def set_total(self, total: int) -> None:
        self.total = total

    def finish(self) -> None:
        if self.emitted_done != self.done:
            self._emit()


class _RichTask:
    """A bar in the terminal; the same progress goes to the job log as plain lines."""

    def __init__(self, progress: Progress, task_id: Any, plain: PlainProgress) -> None:
        self.progress, self.task_id, self.plain = progress, task_id, plain

    def advance(self, n: int = 1, status: str | None = None) -> None:
        kwargs = {"status": status} if status is not None else {}
        self.progress.update(self.task_id, advance=n, **kwargs)
        self.plain.advance(n, status)

    def set_total(self, total: int) -> None:
        self.progress.update(self.task_id, total=total)
        self.plain.set_total(total)


def _log_line(text: str) -> None:
    log.info("%s", text)


def _plain_line(text: str) -> None:
    """To stderr whole (never cropped to a width) and to the job log."""
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)
    log.info("%s", text)


class RichReporter:
    """Bars in a terminal, plain throttled lines otherwise; every line also goes to the job log."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[PlainProgress | _RichTask]:
        if not err_console.is_terminal:
            plain = PlainProgress(description, total, _plain_line)
            plain.begin()
            yield plain
            plain.finish()
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=err_console,
            transient=False,
        )
        logged = PlainProgress(description, total, _log_line)
        logged.begin()
        with progress:
            task_id = progress.add_task(description, total=total, status="")
            yield _RichTask(progress, task_id, logged)
        logged.finish()

    def info(self, message: str) -> None:
        console.print(message)
        log.info("%s", Text.from_markup(message).plain)


def wide_console() -> Console:
    """The console itself in a terminal; for a log or a pipe, one wide enough that tables are not cropped to 80 columns."""
    return console if console.is_terminal else Console(width=max(console.width, 160))


def summary_table(summary: JobSummary, caption: str | None = None) -> Table:
    """The original and every pivot; ``caption`` says what the pivots were made with."""
    table = Table(title=f"onecomp: {summary.output}", caption=caption, caption_justify="left")
    from onecomp.eval.report import headline_metrics, short_name

    metric_names = headline_metrics([k for row in summary.rows for k in row.metrics])
    for col in ["checkpoint", "bpw", "weights"]:
        table.add_column(col, no_wrap=True)
    for m in metric_names:
        table.add_column(short_name(m), justify="right", no_wrap=True)
        table.add_column("x orig" if m.startswith("ppl_") else "recov.", justify="right", no_wrap=True)
    table.add_column("stage time", justify="right", no_wrap=True)
    table.add_column("peak RSS", justify="right", no_wrap=True)
    table.add_column("note")
    ref = summary.rows[0].metrics
    for row in summary.rows:
        cells = [row.name, "-" if row.bpw is None else f"{row.bpw:.3f}", mib(row.size_bytes)]
        for m in metric_names:
            v = row.metrics.get(m)
            cells.append("-" if v is None else f"{v:.3f}" if m.startswith("ppl_") else f"{100 * v:.1f}%")
            cells.append("-" if v is None or not ref.get(m) else f"{v / ref[m]:.3f}x")
        cells.append("-" if row.seconds is None else f"{row.seconds:.0f} s")
        cells.append(gib(row.peak_rss_bytes))
        cells.append(row.note)
        table.add_row(*cells, style="bold" if row.note == "best" else None)
    return table


def profile_tables(profile: ModelProfile, hardware: dict[str, Any]) -> list[Table]:
    model = Table(title="model", show_header=False)
    for k, v in [
        ("architecture", f"{profile.architecture} ({profile.model_type})"),
        ("supported", "yes" if profile.supported else "no"),
        ("blocks", profile.num_blocks),
        ("hidden / intermediate", f"{profile.hidden_size} / {profile.intermediate_size}"),
        ("vocabulary", profile.vocab_size),
        ("tied lm_head", "yes" if profile.tied_head else "no"),
        ("dtype", profile.dtype),
        ("parameters", f"{profile.total_params / 1e6:.1f} M"),
        ("size", mib(profile.size_bytes)),
        ("linear parameters in blocks", f"{profile.block_linear_params / 1e6:.1f} M"),
    ]:
        model.add_row(k, str(v))
    linears = Table(title="linear layers (per block; every block alike)" if profile.linears else "linear layers")
    for col in ["name", "out", "in", "params"]:
        linears.add_column(col, justify="left" if col == "name" else "right")
    per_block = [li for li in profile.linears if li.name.split(".")[2] == "0"] if profile.linears else []
    for li in per_block:
        linears.add_row(li.name.split(".", 3)[-1], str(li.out_features), str(li.in_features), f"{li.params:,}")
    hw = Table(title="hardware", show_header=False)
    hw.add_row("CPU", f"{hardware.get('cpu_model') or '?'} ({hardware.get('cpu_count')} cores)")
    hw.add_row("RAM", f"{gib(hardware.get('ram_total_bytes'))} total, {gib(hardware.get('ram_available_bytes'))} available")
    hw.add_row("bf16 on CPU", "yes" if hardware.get("bf16_cpu") else "no")
    gpus = hardware.get("gpus") or []
    hw.add_row("GPU", ", ".join(f"{g['name']} ({gib(g['total_memory_bytes'])})" for g in gpus) or "none")
    return [model, linears, hw]


def fit_table(estimate: MemoryEstimate, fits: dict[str, bool], machine: dict[str, Any]) -> Table:
    """Each phase's host and device peaks (the process's own memory included in the host's) and whether they fit."""
    where = "the given machine" if machine.get("given") else "this machine"
    gpu = machine.get("gpu_bytes")
    limits = f"host {gib(machine['host_bytes'])}" + (f", GPU {gib(gpu)}" if gpu else ", no GPU")
    table = Table(title=f"memory estimate per phase, for {where} ({limits})")
    for col in ("phase", "host peak", "device peak", "fits"):
        table.add_column(col, justify="left" if col in ("phase", "fits") else "right")
    for phase, peak in estimate.phases.items():
        ok = fits[phase]
        table.add_row(phase, gib(estimate.host_of(phase)), gib(peak.device) if gpu else "-", "yes" if ok else "no", style=None if ok else "red")
    return table


def _bar(value: float, top: float, width: int = 24) -> str:
    filled = 0 if top <= 0 else max(0, min(width, round(width * value / top)))
    return "█" * filled + "·" * (width - filled)


def plan_tables(plan: Plan, shapes: dict[str, tuple[int, int]]) -> list[Any]:
    """The per-layer table, a bar per block (its bits per weight), and the totals."""
    from rich.text import Text

    from onecomp.plan.planner import GB
    layers = Table(title="plan: format of every linear layer")
    for col, just in [("layer", "left"), ("shape", "right"), ("format", "left"), ("bpw", "right"), ("pred. loss +", "right"), ("rel. out err", "right")]:
        layers.add_column(col, justify=just, no_wrap=True)
    for name, d in plan.details.items():
        n, m = shapes[name]
        layers.add_row(name.removeprefix("model.layers."), f"{n}x{m}", d["format"], f"{d['bpw']:.3f}", f"{d['weighted']:.2e}", f"{d['relative']:.4f}")
    blocks = Table(title="bits per weight by block", show_header=True)
    for col in ("block", "bpw", "", "formats"):
        blocks.add_column(col, no_wrap=col != "formats")
    per_block: dict[str, list[str]] = {}
    for name in plan.details:
        per_block.setdefault(name.rsplit(".", 2)[0], []).append(name)
    top = max(f.bits_per_weight(*shapes[n]) for n, f in plan.layers.items())
    for prefix, names in per_block.items():
        params = sum(shapes[n][0] * shapes[n][1] for n in names)
        bits = sum(plan.layers[n].storage_bits(*shapes[n]) for n in names)
        short = ", ".join(f"{n.rsplit('.', 1)[-1].removesuffix('_proj')}:{plan.details[n]['format']}" for n in names)
        blocks.add_row(prefix.rsplit(".", 1)[-1], f"{bits / params:.2f}", Text(_bar(bits / params, top), style="cyan"), short)
    totals = Table(title="budget", show_header=False)
    b, a, p = plan.budget, plan.achieved, plan.predicted
    if b["kind"] == "bpw":
        totals.add_row("target", f"{b['target']:g} bits per weight")
    else:
        totals.add_row("target", f"{b['target'] / GB:.3f} GB of weights" + (f" ({b['note']})" if b.get("note") else ""))
    totals.add_row("planned", f"{a['bits_per_weight']:.4f} bits per weight" + (f", {a['weight_bytes'] / GB:.4f} GB of weights" if "weight_bytes" in a else ""))
    totals.add_row("predicted", f"mean token loss +{p['delta_nll']:.4f} nats, perplexity x{p['ppl_ratio']:.3f} ({p['note']})")
    totals.add_row("fused groups", "one format per q/k/v and gate/up group" if plan.fused_groups else "off")
    for w in plan.warnings:
        totals.add_row("[yellow]warning[/]", w)
    return [layers, blocks, totals]
