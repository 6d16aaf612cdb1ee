"""The job's report: ``report.md``, a self-contained ``report.html`` (plots
embedded, no external resources, so it can be mailed or archived) and the PNG
plots beside them, all from ``results.json`` alone."""

from __future__ import annotations

import base64
import html
import io
import re
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
    """Every perplexity, then each task's one headline metric (results.json keeps every metric)."""
    keys = list(results["original"]["metrics"])
    for p in [results.get("input", {}), *results["pivots"].values()]:
        keys += [k for k in p.get("metrics", {}) if k not in keys]
    return headline_metrics(keys, results.get("protocol", {}).get("tasks", {}))


def _fmt(key: str, value: float | None, err: float | None = None) -> str:
    if value is None:
        return "-"
    if key.startswith("ppl_"):
        return f"{value:.3f}"
    return f"{100 * value:.1f}" + (f" ± {100 * err:.1f}" if err is not None else "")


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The quality table: each headline metric, named, with its ratio to the original (PPL ratio; accuracy recovery)."""
    cols = metric_columns(results)
    header = ["checkpoint"]
    for k in cols:
        header += [short_name(k) + ("" if k.startswith("ppl_") else " %"), "x original" if k.startswith("ppl_") else "recovery"]
    body = []
    for r in _rows(results):
        m, err, ratios = r.get("metrics", {}), r.get("stderr", {}), r.get("ratios", {})
        cells = [r["name"]]
        for k in cols:
            ratio = ratios.get(k)
            cells += [_fmt(k, m.get(k), err.get(k)), f"{ratio:.3f}" if ratio is not None else "-"]
        body.append(cells)
    return header, body


def size_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The cost table: size, time and memory of each checkpoint, and which one is the best."""
    header = ["checkpoint", "bits/weight", "weights MiB", "stage s", "peak RSS GiB", "note"]
    body = []
    for r in _rows(results):
        bpw, secs, rss = r.get("bits_per_weight"), r.get("stage_seconds"), r.get("peak_rss_bytes")
        body.append([
            r["name"], f"{bpw:.3f}" if bpw is not None else "-", f"{r.get('weight_bytes', 0) / 2**20:.1f}",
            f"{secs:.0f}" if secs is not None else "-", f"{rss / 2**30:.2f}" if rss else "-", str(r.get("note", "")),
        ])
    return header, body


NOISE_SE = 2.0  # a difference within this many standard errors (of the difference) is read as noise


def noise_lines(results: dict[str, Any]) -> list[str]:
    """One sentence per task metric and checkpoint: its difference to the original, and whether that is within noise.

    The standard error of a difference is sqrt(se_a^2 + se_b^2); both runs score the same items, so this errs
    towards "within noise", never towards a compressed model that beats the original by chance."""
    rows = _rows(results)
    orig = rows[0]
    out = []
    for key in [k for k in metric_columns(results) if not k.startswith("ppl_")]:
        ref, ref_err = orig.get("metrics", {}).get(key), orig.get("stderr", {}).get(key)
        if ref is None or ref_err is None:
            continue
        for r in rows[1:]:
            value, err = r.get("metrics", {}).get(key), r.get("stderr", {}).get(key)
            if value is None or err is None:
                continue
            diff, se = 100 * (value - ref), 100 * (ref_err**2 + err**2) ** 0.5
            verdict = "within noise" if abs(diff) <= NOISE_SE * se else ("better than the original" if diff > 0 else "worse than the original")
            out.append(f"{short_name(key)}: {r['name']} {diff:+.1f} points against the original ({NOISE_SE:g} standard errors = {NOISE_SE * se:.1f}): {verdict}")
    return out


def job_lines(results: dict[str, Any]) -> list[str]:
    """What was compressed, how, on which data, by which command and version."""
    job = results.get("job")
    if not job:
        return ["job: not recorded (results.json written before onecomp recorded it)"]
    calib = job.get("calibration")
    lines = [
        f"model: {job.get('model')}",
        f"method: {job.get('method')}; format: {job.get('format')}",
        f"stages: {', '.join(job.get('stages', [])) or '-'}",
        "calibration: " + (f"{calib['source']}, {calib['nsamples']} samples x {calib['seqlen']} tokens, seed {calib['seed']}" if calib else "none (no stage needed it)"),
        f"command: {job.get('command') or '-'}",
        f"date: {job.get('date')}; onecomp {job.get('version')}; device {job.get('device')}",
    ]
    return lines


def selection_line(results: dict[str, Any]) -> str:
    """How the best pivot was chosen, with each candidate's selection perplexity."""
    best = results.get("best") or "-"
    sel = results.get("selection")
    if not sel:
        return f"Best pivot: {best}."
    if not sel.get("text"):
        return f"Best pivot: {best} ({sel.get('rule', 'nothing was chosen')})."
    proto = sel.get("protocol", {})
    values = ", ".join(f"{k} {v:.3f}" for k, v in sel.get("values", {}).items())
    return (
        f"Best pivot: {best}, chosen by perplexity on the built-in selection text ({proto.get('nwindows')} windows of "
        f"{proto.get('seqlen')} tokens from held-out leads that are never calibrated on, never reported and not asked about "
        f"by the built-in tasks), not on the text reported here: {values}."
    )


def _figure(results: dict[str, Any], keys: list[str], ylabel: str, log: bool):  # noqa: ANN202 - a matplotlib Figure
    """One marker per checkpoint at its bits per weight, the stages joined in order, +- 1 standard error
    where the metric has one; None if no metric to plot."""
    rows = _rows(results)
    keys = [k for k in keys if any(k in r.get("metrics", {}) for r in rows)]
    if not keys:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    with_errors = False
    for key in keys:
        pts = [(r["bits_per_weight"], r["metrics"][key], r.get("stderr", {}).get(key), r["name"]) for r in rows if key in r.get("metrics", {}) and r.get("bits_per_weight")]
        label = short_name(key)
        pivots = [p for p in pts if p[3] != "original"]
        line = ax.plot([p[0] for p in pivots], [p[1] for p in pivots], marker="o", label=label)[0]
        for x, y, err, name in pts:
            if name == "original":  # a star at its own width, and a dotted line to compare against
                ax.plot([x], [y], marker="*", markersize=11, color=line.get_color(), linestyle="none")
                ax.axhline(y, color=line.get_color(), linestyle=":", linewidth=1)
            if err is not None:
                bars = ax.errorbar([x], [y], yerr=[err], color=line.get_color(), capsize=4, linestyle="none")
                for part in bars.lines[2]:
                    part.set_gid(f"stderr-{key}-{name}".replace(" ", "_"))
                with_errors = True
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log:
        from matplotlib.ticker import ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers, not 1.5 x 10^1
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("bits per weight (everything stored counted)")
    ax.set_ylabel(ylabel)
    bars_note = "; bars: ± 1 standard error" if with_errors else ""
    ax.set_title(f"{ylabel} per checkpoint (star and dotted line: the original{bars_note})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot(results: dict[str, Any], keys: list[str], ylabel: str, log: bool) -> tuple[bytes, str] | None:
    """The plot as PNG (a file beside report.md) and as SVG (inline in report.html); None if nothing to plot."""
    fig = _figure(results, keys, ylabel, log)
    if fig is None:
        return None
    import matplotlib

    png, svg = io.BytesIO(), io.StringIO()
    fig.savefig(png, format="png")
    # text as text (no glyph definitions) and ids salted per plot: two plots inline in one page share no id
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": ylabel}):
        fig.savefig(svg, format="svg", metadata={"Date": None})
    text = svg.getvalue()
    return png.getvalue(), _prefix_ids(text[text.index("<svg"):], ylabel)  # inline: no XML prolog or DOCTYPE


def _prefix_ids(svg: str, prefix: str) -> str:
    """Every id of one inline SVG, and each reference to it, prefixed: ids must be unique in the whole page."""
    svg = re.sub(r'\bid="', f'id="{prefix}-', svg)
    svg = re.sub(r'href="#', f'href="#{prefix}-', svg)
    return re.sub(r"url\(#", f"url(#{prefix}-", svg)


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
    headline = results.get("headline", {})
    for task, rec in proto.get("tasks", {}).items():
        metric = headline.get(task) or rec.get("headline")
        quoted = f", quoted as {metric}" if metric else ""
        out.append(f"task {task}: {rec.get('items')} of {rec.get('items_total')} items, {rec.get('num_fewshot')}-shot, version {rec.get('version')}, lm-eval {rec.get('lm_eval')}{quoted}")
    sel = (results.get("selection") or {}).get("protocol")
    if sel:
        out.append(f"selection text: {sel.get('nwindows')} windows of {sel.get('seqlen')} tokens of the built-in selection split, tokens sha256 {str(sel.get('sha256'))[:12]}")
    return out


RATIOS_NOTE = (
    "Ratios: perplexity / the original's (lower is better); recovery: accuracy / the original's. "
    "Accuracies are percent ± one standard error; each task is quoted by one fixed metric, named in its column "
    "(every metric is in results.json)."
)


def write_report(eval_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Write the report files; returns their paths."""
    eval_dir = Path(eval_dir)
    cols = metric_columns(results)
    written = []
    plots = {
        "ppl_vs_bpw.png": ([k for k in cols if k.startswith("ppl_")], "perplexity", True),
        "acc_vs_bpw.png": ([k for k in cols if not k.startswith("ppl_")], "accuracy", False),
    }
    images = {name: made for name, (keys, label, log) in plots.items() if (made := _plot(results, keys, label, log)) is not None}
    for name, (png, _) in images.items():
        atomic_write_bytes(eval_dir / name, png)
        written.append(eval_dir / name)
    quality, cost = table(results), size_table(results)
    job, protocol, noise, selection = job_lines(results), _protocol_lines(results), noise_lines(results), selection_line(results)
    model = (results.get("job") or {}).get("model")
    title = f"Compression report: {model}" if model else "Compression report"
    md = [f"# {title}", "", *[f"- {line}" for line in job], "", selection, "", "## Quality", "", markdown_table(*quality), "", RATIOS_NOTE, ""]
    if noise:
        md += [f"Differences to the original (within {NOISE_SE:g} standard errors of the difference is noise, not a real change):", ""]
        md += [f"- {line}" for line in noise] + [""]
    md += ["## Size and time", "", markdown_table(*cost), "", "## Protocol", "", *[f"- {line}" for line in protocol]]
    md += ["", *[f"![{n}]({n})" for n in images], ""]
    atomic_write_text(eval_dir / "report.md", "\n".join(md))
    written.append(eval_dir / "report.md")
    svgs = {name: svg for name, (_, svg) in images.items()}
    atomic_write_text(eval_dir / "report.html", _html(title, job, selection, quality, noise, cost, protocol, svgs))
    written.append(eval_dir / "report.html")
    return written


def _html(
    title: str, job: list[str], selection: str, quality: tuple[list[str], list[list[str]]], noise: list[str],
    cost: tuple[list[str], list[list[str]]], protocol: list[str], svgs: dict[str, str],
) -> str:
    esc = html.escape
    figures = "".join(f'<figure id="{esc(name.removesuffix(".png"))}">{svg}<figcaption>{esc(name)}</figcaption></figure>' for name, svg in svgs.items())
    items = lambda lines: "".join(f"<li>{esc(line)}</li>" for line in lines)  # noqa: E731
    noise_html = (
        f"<p>Differences to the original (within {NOISE_SE:g} standard errors of the difference is noise, not a real change):</p><ul>{items(noise)}</ul>"
        if noise else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; max-width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; overflow-wrap: anywhere; }}
th {{ background: #f4f4f4; }}
th:first-child, td:first-child, td:last-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 1em 1em 1em 0; max-width: 100%; }}
figure svg {{ max-width: 100%; height: auto; }}
.job li, .protocol li {{ overflow-wrap: anywhere; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<ul class="job">{items(job)}</ul>
<p class="selection">{esc(selection)}</p>
<h2>Quality</h2>
{html_table(*quality)}
<p>{esc(RATIOS_NOTE)}</p>
{noise_html}
<h2>Size and time</h2>
{html_table(*cost)}
<h2>Plots</h2>
{figures or "<p>no metrics to plot</p>"}
<h2>Protocol</h2>
<ul class="protocol">{items(protocol)}</ul>
</body>
</html>
"""
