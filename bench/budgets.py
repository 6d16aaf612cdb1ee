"""The best method here for each budget (about 8, 4, 3, 2.5, 2 and 1.5 bits per
weight) on the built-in model: the table that opens docs/benchmarks.md.

    .venv/bin/python bench/budgets.py [--out bench-out/budgets] [--only 8,4]

Each row is one full `onecomp compress smollm2-135m OPTIONS` job in its own
process, with the project's defaults (calibration 128 x 512 of the built-in
text, QEP on, layer-wise stage only) and only the built-in held-out perplexity
scored (job YAML `eval: {tasks: []}`). The mixed-precision rows share one
sensitivity measurement: the first mixed job measures, the others re-plan from
its measurement.json (`--measurement`). Every pivot is then scored on an unlike
text, the built-in Python documentation (`onecomp eval PIVOT --ppl pydoc
--max-windows 32`), and so is the original, once. Finished jobs and scores in
--out are reused, so a second run reprints the table in seconds; an interrupted
job is resumed. After every finished job the table so far (unfinished rows
marked pending) is written to OUT/table.md. Prints a markdown table, the
original's PPLs, the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import other_text  # noqa: E402  (bench/ is not a package)

PIVOT = "1-layerwise"
PYDOC_WINDOWS = 32


@dataclass(frozen=True)
class Budget:
    """One row: a budget and the compress options of the best method for it here."""

    label: str
    options: tuple[str, ...]
    mixed: bool = False

    @property
    def job(self) -> str:
        return "bpw" + self.label


# The best method per budget, chosen from the evidence in docs/notes/ (see
# docs/benchmarks.md, "Why these methods").
BUDGETS = (
    Budget("8", ("--method", "gptq", "--bits", "8", "--group-size", "128")),
    Budget("4", ("--method", "gptq", "--bits", "4", "--group-size", "128")),
    Budget("3", ("--bpw", "3.0"), mixed=True),
    Budget("2.5", ("--bpw", "2.5"), mixed=True),
    Budget("2", ("--method", "mdbf", "--bits", "2.0")),
    Budget("1.5", ("--method", "mdbf", "--bits", "1.5")),
)


class BenchError(SystemExit):
    """A failure the user can act on: one line, non-zero exit."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench/budgets.py: {message}")


def _complete(job: Path) -> bool:
    state, results = job / "state.json", job / "eval" / "results.json"
    return results.is_file() and state.is_file() and bool(json.loads(state.read_text()).get("complete"))


def _onecomp(args: list[str], what: str, log: Path | None = None) -> str:
    cmd = [sys.executable, "-m", "onecomp.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        where = f"; full output in {log}" if log is not None else ""
        raise BenchError(f"{what} failed (exit {res.returncode}): {tail}{where}; rerun to resume")
    return res.stdout


def shared_measurement(b: Budget, out: Path) -> Path | None:
    """The measurement a mixed row re-plans from: the first mixed budget's, once
    that job has made it (None for the first one itself, which measures)."""
    first = next(x for x in BUDGETS if x.mixed)
    path = out / first.job / "measurement.json"
    return path if b.mixed and b != first and path.is_file() else None


def run_job(model: str, b: Budget, out: Path, measurement: Path | None) -> dict:
    """Run (or resume, or reuse) the compress job of one budget; its results.json."""
    job = out / b.job
    if not _complete(job):
        config = out / f"{b.job}.yaml"
        config.write_text(yaml.safe_dump({"model": model, "output": str(job), "eval": {"tasks": []}}))
        extra = ["--measurement", str(measurement)] if measurement is not None else []
        again = "--resume" if (job / "state.json").is_file() else "--overwrite"
        print(f"running: onecomp compress {model} {' '.join(b.options)} (job {job})", file=sys.stderr, flush=True)
        _onecomp(["compress", "--config", str(config), *b.options, *extra, again], f"job {job}", out / f"{b.job}.log")
    return json.loads((job / "eval" / "results.json").read_text())


def original_pydoc(model: str, out: Path) -> float:
    """The original's PPL on pydoc under the same protocol (cached in OUT)."""
    cache = out / f"original-ppl-pydoc-{PYDOC_WINDOWS}.json"
    if not cache.is_file():
        stdout = _onecomp(["eval", model, "--ppl", "pydoc", "--max-windows", str(PYDOC_WINDOWS)], f"scoring {model} on pydoc")
        cache.write_text(stdout[stdout.index("{"):])
    return float(json.loads(cache.read_text())["metrics"]["ppl_pydoc"])


def row(b: Budget, res: dict, pydoc: float, orig_pydoc: float, measure_s: float | None, shared: bool) -> dict:
    """One table row from a job's results.json and its pydoc score."""
    p = res["pivots"][PIVOT]
    return {
        "budget": b.label,
        "options": " ".join(b.options),
        "bpw": p["bits_per_weight"],
        "MiB": p["weight_bytes"] / 2**20,
        "ppl": p["metrics"]["ppl_builtin"],
        "ratio": p["ratios"]["ppl_builtin"],
        "pydoc": pydoc,
        "pydoc_ratio": pydoc / orig_pydoc,
        "stage_min": p["stage_seconds"] / 60,
        "measure_min": None if measure_s is None else measure_s / 60,
        "shared": shared,
    }


def format_time(r: dict) -> str:
    """Minutes of the layer-wise stage, plus the planner's measurement for mixed rows."""
    text = f"{r['stage_min']:.0f}"
    if r["measure_min"] is not None:
        text += f" + {r['measure_min']:.0f} measuring" + (" (reused)" if r["shared"] else "")
    return text


HEADER = (
    "| budget | method (`onecomp compress smollm2-135m ...`) | bits/weight | weights MiB "
    "| PPL built-in | x original | PPL pydoc | x original | minutes |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def table(budgets: tuple[Budget, ...], rows: dict[str, dict]) -> str:
    """The markdown table; budgets without a row yet are marked pending."""
    lines = [HEADER]
    for b in budgets:
        r = rows.get(b.label)
        if r is None:
            lines.append(f"| ~{b.label} | `{' '.join(b.options)}` | pending | | | | | | |")
            continue
        lines.append(
            f"| ~{r['budget']} | `{r['options']}` | {r['bpw']:.3f} | {r['MiB']:.1f} | {r['ppl']:.2f} | {r['ratio']:.3f} "
            f"| {r['pydoc']:.2f} | {r['pydoc_ratio']:.3f} | {format_time(r)} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """CPU model name and logical CPUs, as /proc/cpuinfo gives them, and the GPU
    the jobs ran on if there is one (they run with --device auto)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    import torch

    gpu = f"GPU {torch.cuda.get_device_name(0)} (the jobs ran on it)" if torch.cuda.is_available() else "no GPU"
    return f"{name}, {os.cpu_count()} logical CPUs, {gpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("bench-out/budgets"))
    ap.add_argument("--only", default=None, help="comma-separated budgets to run, e.g. 8,4 (default: all)")
    args = ap.parse_args()
    budgets = BUDGETS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {b.label for b in BUDGETS})
        if unknown:
            raise BenchError(f"unknown budget {', '.join(unknown)}: choose from {', '.join(b.label for b in BUDGETS)}")
        budgets = tuple(b for b in BUDGETS if b.label in wanted)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    orig_pydoc = original_pydoc(args.model, out)
    rows: dict[str, dict] = {}
    orig = None
    # Cheaper uniform jobs first (a partial table is useful sooner); the mixed
    # ones keep their order, the first one measuring for the rest.
    for b in sorted(budgets, key=lambda b: b.mixed):
        measurement = shared_measurement(b, out)
        shared = measurement is not None
        res = run_job(args.model, b, out, measurement)
        job = out / b.job
        measure_s = None
        if b.mixed:
            measurement = measurement or job / "measurement.json"
            if not measurement.is_file():
                raise BenchError(f"job {job} made no measurement.json; remove {job} and rerun")
            measure_s = float(json.loads(measurement.read_text())["info"]["seconds"])
        try:
            pydoc = other_text(job, "pydoc", PYDOC_WINDOWS)
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or "").strip().splitlines() or ["(no output)"]
            raise BenchError(f"scoring {job}/pivots/{PIVOT} on pydoc failed (exit {exc.returncode}): {tail[-1]}") from None
        orig = res["original"]["metrics"]["ppl_builtin"]
        rows[b.label] = row(b, res, pydoc, orig_pydoc, measure_s, shared)
        (out / "table.md").write_text(table(budgets, rows) + "\n")
    print(table(budgets, rows))
    print(f"\noriginal ({args.model}): PPL built-in {orig:.3f}, PPL pydoc {orig_pydoc:.3f}")
    print(f"machine: {machine()}")
    print(f"command: python bench/budgets.py{' --only ' + args.only if args.only else ''}")


if __name__ == "__main__":
    main()
