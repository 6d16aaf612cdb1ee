"""The batch's comparison: one row per job and pivot (plus each model's original),
written as Markdown, CSV, a Pareto plot and a self-contained HTML report.

Metrics are read generically from each job's ``eval/results.json``: every key
becomes a column with its ratio to the original, so new evaluation metrics
appear without changes here.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onecomp.eval.report import html_table, markdown_table, png_data_uri
from onecomp.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from rich.table import Table

    from onecomp.batch.expand import Batch
    from onecomp.batch.runner import JobRecord

ORIGINAL = "original"
_MARKERS = {"1-layerwise": "o", "2-blockwise": "s", "3-global": "^", "input": "D"}


@dataclass
class CompareRow:
    job: str
    model: str
    method: str
    format: str
    pivot: str
    bits_per_weight: float | None = None
    weight_mib: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    stage_seconds: float | None = None
    status: str = ""
    note: str = ""


def _ratios(metrics: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        r = ref.get(k)
        if isinstance(v, (int, float)) and isinstance(r, (int, float)) and r:
            out[k] = v / r
    return out


def _mib(n: Any) -> float | None:
    return n / 2**20 if isinstance(n, (int, float)) else None


def _float_label(bpw: Any) -> str:
    return f"{bpw:g}-bit float" if isinstance(bpw, (int, float)) else "float"


def comparison_rows(batch: Batch, records: dict[str, JobRecord]) -> list[CompareRow]:
    """Rows of every job of the batch: its pivots when it finished, else one row with its status."""
    rows: list[CompareRow] = []
    originals: set[str] = set()
    for job in batch.jobs:
        rec = records[job.name]
        results = job.dir / "eval" / "results.json"
        common = {"model": job.config.model, "method": job.method, "format": job.budget}
        if rec.status not in ("done", "skipped") or not results.is_file():
            rows.append(CompareRow(job.name, **common, pivot="-", status=rec.status, note=rec.error or ""))
            continue
        res = json.loads(results.read_text())
        orig = res.get("original", {})
        ref = orig.get("metrics", {})
        if job.config.model not in originals:
            originals.add(job.config.model)
            rows.append(CompareRow(
                ORIGINAL, job.config.model, "-", _float_label(orig.get("bits_per_weight")), ORIGINAL, orig.get("bits_per_weight"), _mib(orig.get("weight_bytes")),
                dict(ref), _ratios(ref, ref), status="reference",
            ))
        pivots = ({"input": res["input"]} if "input" in res else {}) | res.get("pivots", {})
        for name, p in pivots.items():
            metrics = p.get("metrics", {})
            rows.append(CompareRow(
                job.name, **common, pivot=name, bits_per_weight=p.get("bits_per_weight"), weight_mib=_mib(p.get("weight_bytes")),
                metrics=dict(metrics), ratios=_ratios(metrics, ref), stage_seconds=p.get("stage_seconds"),
                status=rec.status, note=p.get("note", ""),
            ))
    return rows


def metric_names(rows: list[CompareRow]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r.metrics))


def quality_metric(rows: list[CompareRow]) -> str | None:
    """The metric the Pareto plot uses: the first perplexity."""
    return next((m for m in metric_names(rows) if m.startswith("ppl_")), None)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _metric_cell(metric: str, value: Any) -> str:
    """Perplexities as numbers, accuracies (fractions in results.json) in percent."""
    if metric.startswith("ppl_") or not isinstance(value, (int, float)) or isinstance(value, bool):
        return _num(value)
    return f"{100 * value:.1f}%"


def table_cells(rows: list[CompareRow], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the Markdown and HTML tables: every perplexity and each task's
    headline metric (every metric is in the CSV); ``compact`` (the terminal) drops the columns
    that say the same for every row."""
    from onecomp.eval.report import headline_metrics, short_name

    metrics = headline_metrics(metric_names(rows))  # one fixed metric per task, named in its header
    one_model = len({r.model for r in rows}) == 1
    first = ["job", "model", "method", "format", "pivot", "bpw", "weights MiB"]
    drop = ({"model", "method", "weights MiB"} if one_model else {"method", "weights MiB"}) if compact else set()
    keep = [i for i, h in enumerate(first) if h not in drop]
    header = [first[i] for i in keep]
    for m in metrics:
        header += [short_name(m), "x orig"]
    header += ([] if compact else ["stage s"]) + ["status"] + ([] if compact else ["note"])
    body = []
    for r in rows:
        lead = [r.job, r.model, r.method, r.format, r.pivot, "" if r.bits_per_weight is None else f"{r.bits_per_weight:.3f}",
                "" if r.weight_mib is None else f"{r.weight_mib:.1f}"]
        cells = [lead[i] for i in keep]
        for m in metrics:
            cells += [_metric_cell(m, r.metrics.get(m)), "" if m not in r.ratios else f"{r.ratios[m]:.3f}x"]
        status = r.status if not compact or r.note != "best" else f"{r.status}, best"
        cells += ([] if compact else ["" if r.stage_seconds is None else f"{r.stage_seconds:.0f}"]) + [status] + ([] if compact else [r.note])
        body.append(cells)
    return header, body


def to_markdown(rows: list[CompareRow]) -> str:
    return markdown_table(*table_cells(rows)) + "\n"


def to_csv(rows: list[CompareRow]) -> str:
    metrics = metric_names(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["job", "model", "method", "format", "pivot", "bits_per_weight", "weight_mib", *[c for m in metrics for c in (m, f"{m}_ratio")], "stage_seconds", "status", "note"])
    for r in rows:
        values = [v for m in metrics for v in (r.metrics.get(m, ""), r.ratios.get(m, ""))]
        writer.writerow([r.job, r.model, r.method, r.format, r.pivot, "" if r.bits_per_weight is None else r.bits_per_weight,
                         "" if r.weight_mib is None else round(r.weight_mib, 4), *values,
                         "" if r.stage_seconds is None else round(r.stage_seconds, 2), r.status, r.note])
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both bits per weight and quality (lower is better on both)."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def pareto_png(rows: list[CompareRow]) -> bytes:
    """Quality (first perplexity, log scale) against bits per weight; the Pareto front as a step line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = quality_metric(rows)
    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [r for r in rows if r.pivot != ORIGINAL and metric and isinstance(r.metrics.get(metric), (int, float)) and r.bits_per_weight]
    if not points:
        ax.text(0.5, 0.5, "no perplexity scores yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(r.model for r in rows))}
        seen: set[str] = set()
        for r in points:
            label = r.pivot if r.pivot not in seen else None
            seen.add(r.pivot)
            ax.scatter(r.bits_per_weight, r.metrics[metric], marker=_MARKERS.get(r.pivot, "x"), color=colors[r.model], label=label, zorder=3)
            ax.annotate(r.job, (r.bits_per_weight, r.metrics[metric]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front([(r.bits_per_weight, r.metrics[metric]) for r in points])
        right = max(r.bits_per_weight for r in points)  # the best quality so far holds at every larger size
        xs, ys = [p[0] for p in front] + [right], [p[1] for p in front] + [front[-1][1]]
        ax.step(xs, ys, where="post", color="0.3", linewidth=1.2, label="Pareto front", zorder=2)
        for r in rows:
            if r.pivot == ORIGINAL and isinstance(r.metrics.get(metric), (int, float)):
                ax.axhline(r.metrics[metric], linestyle="--", color=colors[r.model], linewidth=1, label=f"original {r.model} ({r.metrics[metric]:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight")
        ax.set_ylabel(f"{metric} (log scale, lower is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax.set_title("quality vs size")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def to_html(batch: Batch, rows: list[CompareRow], png: bytes) -> str:
    """One self-contained HTML5 page: the plot as a data URI, the table, links to per-job reports that exist."""
    esc = html.escape
    links = [f'<li><a href="{esc(j.name)}/eval/report.html">{esc(j.name)}</a></li>' for j in batch.jobs if (j.dir / "eval" / "report.html").is_file()]
    more = f"<h2>Job reports</h2>\n<ul>\n{chr(10).join(links)}\n</ul>\n" if links else ""
    title = f"onecomp batch: {batch.output}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th {{ background: #f0f0f0; }}
td:nth-child(-n+5) {{ text-align: left; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>{len(batch.jobs)} jobs; ratios are to each model's original. Source: {esc(str(batch.source or "-"))}</p>
<img alt="quality against bits per weight, with the Pareto front" src="{png_data_uri(png)}">
<h2>Comparison</h2>
{html_table(*table_cells(rows))}
{more}</body>
</html>
"""


def rich_table(rows: list[CompareRow], title: str) -> Table:
    from rich.table import Table
    from rich.text import Text  # plain cells: an error message is not markup

    header, body = table_cells(rows, compact=True)
    table = Table(title=Text(title), caption="every metric and the notes: comparison.md")
    for h in header:
        table.add_column(h, no_wrap=h not in ("job", "status"), overflow="fold", min_width=10 if h == "job" else None, justify="left" if h in ("job", "model", "method", "format", "pivot", "status", "note") else "right")
    for r, cells in zip(rows, body):
        style = "red" if r.status == "failed" else ("bold" if r.note == "best" else None)
        table.add_row(*(Text(c) for c in cells), style=style)
    return table


def write_reports(batch: Batch, rows: list[CompareRow]) -> dict[str, Path]:
    """comparison.md, comparison.csv, pareto.png and report.html in the batch directory."""
    png = pareto_png(rows)
    out = batch.output
    paths = {k: out / n for k, n in (("md", "comparison.md"), ("csv", "comparison.csv"), ("png", "pareto.png"), ("html", "report.html"))}
    atomic_write_text(paths["md"], to_markdown(rows))
    atomic_write_text(paths["csv"], to_csv(rows))
    atomic_write_bytes(paths["png"], png)
    atomic_write_text(paths["html"], to_html(batch, rows, png))
    return paths
