"""bench/budgets.py: the table it prints, and that a finished job is reused
rather than run again (what lets a second `make bench` reprint in seconds)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "budgets.py"


@pytest.fixture(scope="module")
def budgets():
    spec = importlib.util.spec_from_file_location("bench_budgets", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _results(ppl: float, orig: float) -> dict:
    pivot = {"bits_per_weight": 4.169, "weight_bytes": 106.9 * 2**20, "metrics": {"ppl_builtin": ppl},
             "ratios": {"ppl_builtin": ppl / orig}, "stage_seconds": 600.0}
    return {"pivots": {"1-layerwise": pivot}, "original": {"metrics": {"ppl_builtin": orig}}}


def test_row_takes_the_pivot_and_divides_pydoc_by_the_original(budgets):
    b = budgets.Budget("4", ("--bits", "4"))
    r = budgets.row(b, _results(16.0, 15.0), pydoc=20.0, orig_pydoc=10.0, measure_s=None, shared=False)
    assert r["options"] == "--bits 4"
    assert r["ratio"] == pytest.approx(16.0 / 15.0)
    assert r["pydoc_ratio"] == pytest.approx(2.0)
    assert r["MiB"] == pytest.approx(106.9)
    assert r["stage_min"] == pytest.approx(10.0)


def test_time_names_the_measurement_and_whether_it_was_shared(budgets):
    b = budgets.Budget("3", ("--bpw", "3.0"), mixed=True)
    own = budgets.row(b, _results(21.0, 15.0), 30.0, 14.0, measure_s=1200.0, shared=False)
    reused = budgets.row(b, _results(21.0, 15.0), 30.0, 14.0, measure_s=1200.0, shared=True)
    assert budgets.format_time(own) == "10 + 20 measuring"
    assert budgets.format_time(reused) == "10 + 20 measuring (reused)"


def test_table_marks_budgets_without_a_row_pending(budgets):
    b8, b4 = budgets.Budget("8", ("--bits", "8")), budgets.Budget("4", ("--bits", "4"))
    r = budgets.row(b4, _results(16.0, 15.0), 20.0, 10.0, None, False)
    lines = budgets.table((b8, b4), {"4": r}).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| ~8 | `--bits 8` | pending |")
    assert lines[3].startswith("| ~4 | `--bits 4` | 4.169 | 106.9 | 16.00 | 1.067 | 20.00 | 2.000 | 10 |")


def test_a_finished_job_is_reused_without_running_anything(budgets, tmp_path, monkeypatch):
    b = budgets.Budget("4", ("--bits", "4"))
    job = tmp_path / b.job
    (job / "eval").mkdir(parents=True)
    (job / "state.json").write_text(json.dumps({"complete": True}))
    (job / "eval" / "results.json").write_text(json.dumps(_results(16.0, 15.0)))

    def refuse(*args, **kwargs):
        raise AssertionError("a finished job was run again")

    monkeypatch.setattr(subprocess, "run", refuse)
    assert budgets.run_job("smollm2-135m", b, tmp_path, None)["pivots"]["1-layerwise"]["metrics"]["ppl_builtin"] == 16.0
    (job / "state.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(AssertionError, match="run again"):
        budgets.run_job("smollm2-135m", b, tmp_path, None)


def test_a_failed_command_is_one_line_naming_its_log(budgets, tmp_path, monkeypatch):
    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 2, stdout="", stderr="progress\nerror: disk full\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(SystemExit) as exc:
        budgets.run_job("smollm2-135m", budgets.Budget("4", ("--bits", "4")), tmp_path, None)
    message = str(exc.value.code)
    assert "\n" not in message
    assert "error: disk full" in message and "bpw4.log" in message and "rerun to resume" in message


def test_later_mixed_rows_reuse_the_first_mixed_jobs_measurement(budgets, tmp_path):
    first, later = [b for b in budgets.BUDGETS if b.mixed][:2]
    uniform = next(b for b in budgets.BUDGETS if not b.mixed)
    assert budgets.shared_measurement(later, tmp_path) is None  # not measured yet: the job measures itself
    path = tmp_path / first.job / "measurement.json"
    path.parent.mkdir()
    path.write_text("{}")
    assert budgets.shared_measurement(later, tmp_path) == path
    assert budgets.shared_measurement(first, tmp_path) is None
    assert budgets.shared_measurement(uniform, tmp_path) is None
