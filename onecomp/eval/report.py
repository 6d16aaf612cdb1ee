"""The job's report: ``report.md``, a self-contained ``report.html`` (plots
embedded, no external resources, so it can be mailed or archived) and the PNG
plots beside them, all from ``results.json`` alone."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from onecomp.eval.headline import headline_metrics, short_name
from onecomp.io import atomic_write_bytes, atomic_write_text

__all__ = ["headline_metrics", "short_name", "table", "write_report"]


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Original, input pivot (refinement jobs) and pivots, in stage order."""
    orig = results["original"]
    rows = [{"name": "original", "stage": "original", **orig, "ratios": {k: 1.0 for k in orig["metrics"]}}]
    if "input" in results:
        inp = results["input"]
        ref = orig["metrics"]
        rows.append({"name": "input pivot", "stage": "input", **inp, "ratios": {k: v / ref[k] for k, v in inp.get("metrics", {}).items() if ref.get(k)}})
    rows += [{"name": name, **p} for name, p in results["pivots"].items()]
    return rows


def metric_columns(results: dict[str, Any]) -> list[str]:
    """Perplexities first, then task accuracies, in the order they were computed."""
    keys = list(results["original"]["metrics"])
    for p in results["pivots"].values():
        keys += [k for k in p.get("metrics", {}) if k not in keys]
    return [k for k in keys if k.startswith("ppl_")] + [k for k in keys if not k.startswith("ppl_")]


def _fmt(key: str, value: float | None, err: float | None = None) -> str:
    if value is None:
        return "-"
    if key.startswith("ppl_"):
        return f"{value:.3f}"
    return f"{100 * value:.1f}" + (f" ± {100 * err:.1f}" if err is not None else "")


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: each metric with its ratio to the original (PPL ratio; accuracy recovery)."""
    cols = metric_columns(results)
    header = ["checkpoint", "bits/weight", "weights MiB"]
    for k in cols:
        header += [k.replace("_", " ") + (" (%)" if not k.startswith("ppl_") else ""), "x original" if k.startswith("ppl_") else "recovery"]
    header += ["stage s", "note"]
    body = []
    for r in _rows(results):
        m, err, ratios = r.get("metrics", {}), r.get("stderr", {}), r.get("ratios", {})
        bpw = r.get("bits_per_weight")
        cells = [r["name"], f"{bpw:.3f}" if bpw is not None else "-", f"{r.get('weight_bytes', 0) / 2**20:.1f}"]
        for k in cols:
            ratio = ratios.get(k)
            cells += [_fmt(k, m.get(k), err.get(k)), f"{ratio:.3f}" if ratio is not None else "-"]
        secs = r.get("stage_seconds")
        cells += [f"{secs:.0f}" if secs is not None else "-", str(r.get("note", ""))]
        body.append(cells)
    return header, body


def _plot(results: dict[str, Any], keys: list[str], ylabel: str, log: bool) -> bytes | None:
    """PNG of one marker per checkpoint at its bits per weight, the stages joined in order; None if no metric to plot."""
    rows = _rows(results)
    keys = [k for k in keys if any(k in r.get("metrics", {}) for r in rows)]
    if not keys:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key in keys:
        pts = [(r["bits_per_weight"], r["metrics"][key], r["name"]) for r in rows if key in r.get("metrics", {}) and r.get("bits_per_weight")]
        label = key.removeprefix("ppl_").replace("_", " ") if log else key.replace("_", " ")
        pivots = [p for p in pts if p[2] != "original"]
        line = ax.plot([p[0] for p in pivots], [p[1] for p in pivots], marker="o", label=label)[0]
        for x, y, name in pts:
            if name == "original":  # a star at its own width, and a dotted line to compare against
                ax.plot([x], [y], marker="*", markersize=11, color=line.get_color(), linestyle="none")
                ax.axhline(y, color=line.get_color(), linestyle=":", linewidth=1)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log:
        from matplotlib.ticker import ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers, not 1.5 x 10^1
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("bits per weight (everything stored counted)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} per checkpoint (star and dotted line: the original)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in body)])


def html_table(header: list[str], body: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    rows = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _protocol_lines(results: dict[str, Any]) -> list[str]:
    proto = results.get("protocol", {})
    out = []
    for spec, rec in proto.get("ppl", {}).items():
        out.append(f"perplexity on {spec}: {rec.get('nwindows')} windows of {rec.get('seqlen')} tokens, BOS {rec.get('bos')}, tokens sha256 {str(rec.get('sha256'))[:12]}")
    for task, rec in proto.get("tasks", {}).items():
        out.append(f"task {task}: {rec.get('items')} of {rec.get('items_total')} items, {rec.get('num_fewshot')}-shot, version {rec.get('version')}, lm-eval {rec.get('lm_eval')}")
    return out


def write_report(eval_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Write the report files; returns their paths."""
    eval_dir = Path(eval_dir)
    cols = metric_columns(results)
    written = []
    plots = {
        "ppl_vs_bpw.png": ([k for k in cols if k.startswith("ppl_")], "perplexity", True),
        "acc_vs_bpw.png": ([k for k in headline_metrics(cols) if not k.startswith("ppl_")], "accuracy", False),
    }
    images = {name: png for name, (keys, label, log) in plots.items() if (png := _plot(results, keys, label, log)) is not None}
    for name, png in images.items():
        atomic_write_bytes(eval_dir / name, png)
        written.append(eval_dir / name)
    made = list(images)
    header, body = table(results)
    protocol = _protocol_lines(results)
    best = results.get("best")
    md = ["# Compression report", "", f"Best pivot: {best or '-'}", "", markdown_table(header, body), ""]
    md += ["Ratios: perplexity / the original's (lower is better); recovery: accuracy / the original's. "
           "Accuracies are percent ± one standard error.", "", "## Protocol", ""] + [f"- {line}" for line in protocol]
    md += ["", *[f"![{n}]({n})" for n in made], ""]
    atomic_write_text(eval_dir / "report.md", "\n".join(md))
    written.append(eval_dir / "report.md")
    atomic_write_text(eval_dir / "report.html", _html(header, body, protocol, best, images))
    written.append(eval_dir / "report.html")
    return written


def _html(header: list[str], body: list[list[str]], protocol: list[str], best: str | None, images: dict[str, bytes]) -> str:
    esc = html.escape
    imgs = "".join(
        f'<figure><img alt="{esc(name)}" src="{png_data_uri(data)}"><figcaption>{esc(name)}</figcaption></figure>'
        for name, data in images.items()
    )
    items = "".join(f"<li>{esc(p)}</li>" for p in protocol)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>onecomp report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 1em; }}
img {{ max-width: 640px; }}
</style>
</head>
<body>
<h1>Compression report</h1>
<p>Best pivot: {esc(best or "-")}</p>
{html_table(header, body)}
<p>Ratios: perplexity / the original's (lower is better); recovery: accuracy / the original's. Accuracies are percent &plusmn; one standard error.</p>
<h2>Plots</h2>
{imgs or "<p>no metrics to plot</p>"}
<h2>Protocol</h2>
<ul>{items}</ul>
</body>
</html>
"""
