"""`onecomp batch`: matrix expansion with provenance, every YAML error in one
message, dry runs that run nothing, and batches that skip, resume and survive
a failing job, ending in a comparison (Markdown, CSV, Pareto plot, HTML)."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

import onecomp.stages.layerwise as layerwise
from onecomp.batch import derive_name, expand_batch, load_batch, run_batch
from onecomp.batch.compare import pareto_front
from onecomp.batch.provenance import Fragment, combine, locate
from onecomp.errors import OneCompError
from tests.test_cli import run_cli

pytestmark = pytest.mark.real  # the tiny model borrows the SmolLM2 tokenizer


def _eval() -> dict[str, Any]:
    """The lightest evaluation: two short windows, no lm-eval tasks."""
    return {"ppl": ["builtin"], "max_windows": 2, "seqlen": 64, "tasks": []}


def _defaults() -> dict[str, Any]:
    return {"calib": {"nsamples": 8, "seqlen": 64}, "eval": _eval(), "device": "cpu"}


def _two_jobs(model: Path, out: Path) -> dict[str, Any]:
    return {
        "output": str(out),
        "defaults": _defaults(),
        "jobs": [
            {"name": "a-rtn", "model": str(model), "quant": {"method": "rtn", "bits": 4, "group_size": 32}},
            {"name": "b-gptq", "model": str(model), "quant": {"bits": 3, "group_size": 32}},
        ],
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cache(tiny_smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A private onecomp cache (reference scores of the tiny model), set after the tiny model exists."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONECOMP_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# --- expansion, names, merge order, provenance ------------------------------------------


def test_matrix_is_the_cartesian_product_with_derived_names_and_merge_order() -> None:
    batch = expand_batch({
        "output": "bo",
        "defaults": {"calib": {"nsamples": 32}, "quant": {"group_size": 64, "bits": 8}},
        "jobs": [{"name": "mine", "model": "smollm2-135m", "calib": {"nsamples": 16}}],
        "matrix": {
            "models": ["smollm2-135m", "./models/other.gguf"],
            "methods": ["rtn", {"name": "gptq-noqep", "quant": {"method": "gptq", "qep": {"enabled": False}, "bits": 2}}],
            "budgets": [4, {"bpw": 3.0}],
            "stages": [["layerwise"], ["layerwise", "blockwise"]],
        },
    })
    names = [j.name for j in batch.jobs]
    assert len(names) == 1 + 2 * 2 * 2 * 2 == len(set(names))
    assert names[:4] == ["mine", "smollm2-135m-rtn-w4g64", "smollm2-135m-rtn-w4g64-lw+bw", "smollm2-135m-rtn-mixed3bpw"]
    assert "other-gptq-noqep-mixed3bpw-lw+bw" in names
    by = {j.name: j for j in batch.jobs}
    assert by["mine"].config.calib.nsamples == 16 and by["mine"].config.quant.bits == 8  # job entry over defaults
    noqep = by["smollm2-135m-gptq-noqep-w4g64"].config
    assert noqep.quant.bits == 4 and noqep.quant.group_size == 64 and not noqep.quant.qep.enabled  # budget over method over defaults
    assert noqep.calib.nsamples == 32 and noqep.output == str(Path("bo") / "smollm2-135m-gptq-noqep-w4g64")
    assert by["smollm2-135m-rtn-mixed3bpw"].config.plan.bpw == 3.0 and by["smollm2-135m-rtn-mixed3bpw"].budget == "mixed3bpw"
    assert by["smollm2-135m-rtn-w4g64-lw+bw"].config.stages == ["layerwise", "blockwise"]
    assert by["smollm2-135m-rtn-w4g64"].where == "matrix (models[0] x methods[0] x budgets[0] x stages[0])"


def test_derived_names() -> None:
    assert derive_name({"model": "org/Model-X", "plan": {"memory_gb": 0.08}}) == "Model-X-gptq-mixed0.08GB"
    assert derive_name({"model": "./m/a.gguf", "quant": {"method": "dbf", "bits": 1.5}, "stages": ["layerwise", "blockwise", "global"]}) == "a-dbf-dbf1.5-lw+bw+gl"
    assert derive_name({"model": "smollm2-135m", "quant": {"method": "rtn", "group_size": -1, "sym": True}}, "rtn-ch") == "smollm2-135m-rtn-ch-w4chs"


def test_provenance_follows_the_merge() -> None:
    data, where = combine([
        Fragment.at({"quant": {"bits": 3, "qep": {"alpha": 0.5}}, "calib": {"nsamples": 8}}, "defaults"),
        Fragment({"quant": {"bits": 4}}, {("quant", "bits"): "matrix.budgets[1]"}),
        Fragment.at({"quant": {"qep": None}, "stages": ["layerwise"]}, "jobs[0]"),
    ])
    assert data == {"quant": {"bits": 4, "qep": None}, "calib": {"nsamples": 8}, "stages": ["layerwise"]}
    assert where == {("quant", "bits"): "matrix.budgets[1]", ("quant", "qep"): "jobs[0].quant.qep",
                     ("calib", "nsamples"): "defaults.calib.nsamples", ("stages",): "jobs[0].stages"}
    assert locate(("stages", 0), where, "jobs[0]") == "jobs[0].stages[0]"
    assert locate(("quant",), where, "jobs[0]") == "matrix.budgets[1] and jobs[0].quant.qep"
    assert locate(("model",), where, "jobs[0]") == "jobs[0].model"


def test_three_mistakes_in_three_places_are_one_message(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    path = _write(tmp_path / "bad.yaml", {
        "output": str(out),
        "defaults": {"calib": {"nsamples": 0}},
        "jobs": [{"model": "smollm2-135m"}, {"model": "smollm2-135m", "name": "w5"}, {"model": "smollm2-135m", "name": "w7", "quant": {"bits": 7}}],
        "matrix": {"models": ["smollm2-135m"], "methods": [{"name": "typo", "quant": {"methd": "gptq"}}]},
    })
    with pytest.raises(OneCompError) as info:
        load_batch(path)
    message = str(info.value)
    for where in ("defaults.calib.nsamples", "jobs[2].quant.bits", "matrix.methods[0].quant.methd"):
        assert where in message, message
    assert message.count("defaults.calib.nsamples") == 1  # shared by every job, reported once
    code, printed = run_cli(["batch", str(path)], capsys)
    assert code == 2 and printed.strip().startswith("error:") and "Traceback" not in printed
    assert "jobs[2].quant.bits" in printed and "matrix.methods[0].quant.methd" in printed
    assert not out.exists()


def test_schema_errors_name_their_place() -> None:
    with pytest.raises(OneCompError) as info:
        expand_batch({
            "output": "o", "outptu": "x",
            "jobs": [{"model": "m", "output": "elsewhere"}, {"model": "m", "name": "a/b"}],
            "matrix": {"models": ["m"], "budgets": [4, {"bitz": 3}, {"bits": 5}], "stages": [["blockwise"]]},
        })
    message = str(info.value)
    for needle in ("outptu: Extra inputs", "jobs[0].output: not allowed", "jobs[1].name: 'a/b' is not a filesystem-safe name",
                   "matrix.budgets[1].bitz: Extra inputs", "matrix.budgets[2].bits: bits must be one of",
                   "matrix.stages[0]: refinement needs a quantized model"):
        assert needle in message, message
    with pytest.raises(OneCompError, match="a batch needs jobs: or matrix:"):
        expand_batch({"output": "o"})


def test_duplicate_names_name_both_places() -> None:
    with pytest.raises(OneCompError, match=r"jobs\[0\] and jobs\[2\] are both named 'same'"):
        expand_batch({"output": "o", "jobs": [{"name": "same", "model": "m"}, {"name": "other", "model": "m"}, {"name": "same", "model": "n"}]})
    with pytest.raises(OneCompError, match=r"jobs\[0\] and matrix \(models\[0\] x methods\[1\]\) are both named 'm-gptq-w4g128'"):
        expand_batch({"output": "o", "jobs": [{"model": "m"}], "matrix": {"models": ["m"], "methods": ["rtn", "gptq"]}})


def test_time_model_reproduces_its_reference() -> None:
    from onecomp.config import JobConfig
    from onecomp.timing import GPU_SPEEDUP, REF_PARAMS, estimate_job_seconds

    ev = {**_eval(), "max_windows": 64, "seqlen": 512}
    ref = JobConfig(model="m", output="o", calib={"nsamples": 128, "seqlen": 512}, eval=ev)
    est = estimate_job_seconds(ref, REF_PARAMS)
    assert est.parts["layerwise"] == pytest.approx(370 * 1.4) and est.parts["perplexity"] == pytest.approx(2 * 75)
    assert est.gpu_seconds == pytest.approx(est.cpu_seconds / GPU_SPEEDUP)
    assert estimate_job_seconds(ref, 2 * REF_PARAMS).cpu_seconds == pytest.approx(2 * est.cpu_seconds)
    assert estimate_job_seconds(ref, REF_PARAMS, evaluate_original=False).parts["perplexity"] == pytest.approx(75)
    rtn = ref.model_copy(update={"quant": ref.quant.model_copy(update={"method": "rtn", "qep": ref.quant.qep.model_copy(update={"enabled": False})})})
    assert estimate_job_seconds(rtn, REF_PARAMS).parts["layerwise"] == pytest.approx(5)
    staged = JobConfig(model="m", output="o", calib={"nsamples": 128, "seqlen": 512}, eval=ev, stages=["layerwise", "blockwise", "global"], plan={"bpw": 3})
    parts = estimate_job_seconds(staged, REF_PARAMS).parts
    assert parts["blockwise"] == pytest.approx(770) and parts["global"] == pytest.approx(420) and parts["measure"] == pytest.approx(740)


def test_pareto_front() -> None:
    assert pareto_front([(4.0, 20.0), (3.0, 30.0), (3.5, 35.0), (2.0, 80.0), (4.5, 21.0)]) == [(2.0, 80.0), (3.0, 30.0), (4.0, 20.0)]


# --- running -------------------------------------------------------------------------------


def test_dry_run_prints_the_jobs_and_runs_nothing(tiny_smollm_dir, tmp_path, capsys, monkeypatch) -> None:
    import onecomp.pipeline
    from onecomp import ui

    def never(*args, **kwargs):
        raise AssertionError("a dry run must not run a job")

    monkeypatch.setattr(onecomp.pipeline, "compress", never)
    monkeypatch.setattr(ui.console, "width", 250)
    out = tmp_path / "out"
    path = _write(tmp_path / "b.yaml", {"output": str(out), "defaults": _defaults(),
                                         "matrix": {"models": [str(tiny_smollm_dir)], "methods": ["rtn", "gptq"], "budgets": [4, {"bits": 3, "group_size": 32}]}})
    code, printed = run_cli(["batch", str(path), "--dry-run"], capsys)
    assert code == 0, printed
    for name in ("model-rtn-w4g128", "model-gptq-w3g32"):
        assert name in printed
    assert "rough estimate" in printed and "GiB" in printed and "total to run" in printed
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(tiny_smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache) -> Path:
    """A two-job batch run to the end."""
    out = tmp_path_factory.mktemp("batch") / "out"
    outcome = run_batch(expand_batch(_two_jobs(tiny_smollm_dir, out)))
    assert not outcome.failed
    return out


class _Checker(HTMLParser):
    """Balanced elements, and no resource from outside the page."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key == "src" and value and not value.startswith("data:"):
                self.external.append(value)
        if tag == "link":
            self.external.append(str(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag, tag


def test_batch_runs_and_writes_the_comparison(finished: Path) -> None:
    state = json.loads((finished / "batch.json").read_text())
    assert [(j["name"], j["status"]) for j in state["jobs"]] == [("a-rtn", "done"), ("b-gptq", "done")]
    assert all(j["seconds"] > 0 and j["error"] is None for j in state["jobs"])
    md = (finished / "comparison.md").read_text()
    assert sum(line.startswith("| original |") for line in md.splitlines()) == 1 and "| a-rtn |" in md and "| b-gptq |" in md and "1-layerwise" in md
    header, *rows = (finished / "comparison.csv").read_text().splitlines()
    cols = header.split(",")
    assert cols[:7] == ["job", "model", "method", "format", "pivot", "bits_per_weight", "weight_mib"]
    assert "ppl_builtin" in cols and "ppl_builtin_ratio" in cols and cols[-3:] == ["stage_seconds", "status", "note"]
    assert len(rows) == 3  # the original once, then one pivot per job
    assert (finished / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (finished / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and "<table>" in page
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.stack and not checker.external


def test_rerun_does_no_work(finished: Path, tiny_smollm_dir: Path, monkeypatch) -> None:
    import onecomp.pipeline
    from onecomp.stages.registry import STAGES

    def no_work(*args, **kwargs):
        raise AssertionError("a complete job was redone")

    monkeypatch.setattr(layerwise, "_quantize_block", no_work)
    monkeypatch.setitem(STAGES, "layerwise", dataclasses.replace(STAGES["layerwise"], run=no_work))
    for name in ("evaluate", "evaluate_model"):  # the executor's evaluation entry point
        if hasattr(onecomp.pipeline, name):
            monkeypatch.setattr(onecomp.pipeline, name, no_work)

    def files() -> list[Any]:
        job = finished / "b-gptq"
        return [(job / "pivots" / "1-layerwise" / "model.safetensors").stat().st_mtime_ns,
                (job / "eval" / "results.json").stat().st_mtime_ns, (job / "state.json").read_text()]

    before = files()
    outcome = run_batch(expand_batch(_two_jobs(tiny_smollm_dir, finished)))
    assert [r.status for r in outcome.records.values()] == ["skipped", "skipped"]
    assert files() == before
    assert "| b-gptq |" in (finished / "comparison.md").read_text()


def test_interrupted_job_resumes_where_it_stopped(tiny_smollm_dir, tmp_path, monkeypatch, cache) -> None:
    batch = expand_batch(_two_jobs(tiny_smollm_dir, tmp_path / "out"))
    run_batch(batch, batch.select(["a-rtn"]))
    original = layerwise._quantize_block
    calls: list[int] = []

    def interrupted(block, index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(block, index, *args, **kwargs)

    monkeypatch.setattr(layerwise, "_quantize_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(batch)
    assert calls == [0, 1, 2]  # a-rtn was complete: no block of it ran
    state = {j["name"]: j for j in json.loads((tmp_path / "out" / "batch.json").read_text())["jobs"]}
    assert state["a-rtn"]["status"] == "skipped" and state["b-gptq"]["status"] == "pending" and state["b-gptq"]["error"] == "interrupted"
    outcome = run_batch(batch)
    assert calls == [0, 1, 2, 2, 3]  # only the blocks that were left
    assert outcome.records["b-gptq"].status == "done" and outcome.records["b-gptq"].resumed


def test_a_failing_job_does_not_stop_the_batch(tiny_smollm_dir, tmp_path, capsys, cache) -> None:
    out = tmp_path / "out"
    data = _two_jobs(tiny_smollm_dir, out)
    data["jobs"][0]["model"] = str(tmp_path / "no-such-model")
    code, printed = run_cli(["batch", str(_write(tmp_path / "b.yaml", data))], capsys)
    assert code == 1 and "1 of 2 jobs failed" in printed and "a-rtn" in printed
    state = {j["name"]: j for j in json.loads((out / "batch.json").read_text())["jobs"]}
    assert state["a-rtn"]["status"] == "failed" and "no-such-model" in state["a-rtn"]["error"]
    assert Path(state["a-rtn"]["traceback"]).is_file() and state["b-gptq"]["status"] == "done"
    md = (out / "comparison.md").read_text()
    assert "| failed |" in md and "| b-gptq |" in md


def test_only_refuses_unknown_names(tiny_smollm_dir, tmp_path, capsys) -> None:
    path = _write(tmp_path / "b.yaml", _two_jobs(tiny_smollm_dir, tmp_path / "out"))
    code, printed = run_cli(["batch", str(path), "--only", "a-rtn,nope"], capsys)
    assert code == 2 and "--only names no job of this batch: nope" in printed
    assert not (tmp_path / "out").exists()


def test_comparison_tables_quote_one_named_metric_per_task() -> None:
    from onecomp.batch.compare import CompareRow, table_cells, to_csv

    metrics = {"ppl_builtin": 16.5, "acc_onecomp_wiki_title": 0.69, "acc_norm_onecomp_wiki_title": 0.53,
               "acc_onecomp_wiki_continuation": 0.70, "acc_norm_onecomp_wiki_continuation": 0.77}
    rows = [CompareRow("a", "m", "gptq", "w4 g128", "1-layerwise", 4.17, 106.9, metrics, {k: 1.0 for k in metrics}, status="done")]
    for compact in (False, True):
        header, body = table_cells(rows, compact=compact)
        assert "wiki title (acc)" in header and "wiki continuation (acc_norm)" in header
        assert "wiki title (acc_norm)" not in header and "wiki continuation (acc)" not in header
        assert "69.0%" in body[0] and "53.0%" not in body[0]  # the title task is never quoted by acc_norm
    assert "acc_norm_onecomp_wiki_title" in to_csv(rows)  # every metric stays in the CSV
