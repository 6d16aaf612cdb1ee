"""The evaluation suite inside a job: tasks for the original and each pivot,
the original's scores cached one metric at a time, bad task names refused
before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onecomp.config import build_job_config
from onecomp.errors import OneCompError
from onecomp.eval import suite
from onecomp.pipeline import compress
from tests.test_cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer


def _config(model: Path, out: Path, **eval_cfg) -> dict:
    return {
        "model": str(model), "output": str(out), "quant": {"bits": 4, "group_size": 32, "qep": {"enabled": False}},
        "calib": {"nsamples": 4, "seqlen": 32}, "device": "cpu",
        "eval": {"ppl": ["builtin"], "max_windows": 1, "seqlen": 32, "tasks": ["onecomp_wiki_title"], "limit": 8, **eval_cfg},
    }


def test_job_scores_tasks_and_caches_the_original_per_metric(tiny_smollm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    real = suite.run_tasks

    def counting(lm, names, limit, reporter, label):
        calls.append(label)
        return real(lm, names, limit, reporter, label)

    monkeypatch.setattr(suite, "run_tasks", counting)
    compress(build_job_config(_config(tiny_smollm_dir, tmp_path / "a")))
    assert calls == ["the original model", "pivot 1-layerwise"]
    res = json.loads((tmp_path / "a" / "eval" / "results.json").read_text())
    key = "acc_onecomp_wiki_title"
    for row in (res["original"], res["pivots"]["1-layerwise"]):
        assert 0 <= row["metrics"][key] <= 1 and "acc_norm_onecomp_wiki_title" in row["metrics"] and key in row["stderr"]
    assert res["protocol"]["tasks"]["onecomp_wiki_title"]["items"] == 8
    assert (tmp_path / "a" / "eval" / "report.html").is_file()
    assert res["headline"] == {"onecomp_wiki_title": "acc"}  # one metric per task, fixed and recorded
    assert res["selection"]["text"] is None and res["selection"]["chosen"] == "1-layerwise"  # one pivot: nothing to choose
    job = res["job"]
    assert job["model"] == str(tiny_smollm_dir) and job["calibration"] == {"source": "builtin", "nsamples": 4, "seqlen": 32, "seed": 0}
    assert job["stages"] == ["layerwise"] and job["method"] == "gptq" and job["version"] and job["date"]

    calls.clear()  # a second job on the same model adds a text: the cached task score is reused
    compress(build_job_config(_config(tiny_smollm_dir, tmp_path / "b", ppl=["builtin", "pydoc"])))
    assert calls == ["pivot 1-layerwise"]
    calls.clear()  # another limit is another protocol: scored again
    compress(build_job_config(_config(tiny_smollm_dir, tmp_path / "c", limit=4)))
    assert calls == ["the original model", "pivot 1-layerwise"]


def test_unknown_task_is_refused_before_any_work(tiny_smollm_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, text = run_cli(["compress", str(tiny_smollm_dir), "-o", str(out), "--eval", "builtin,no_such_task_xyz"], capsys)
    assert_one_line_error(code, text, "unknown lm-eval task(s) no_such_task_xyz")
    assert not out.exists()


def test_hub_task_without_hub_is_one_line(tiny_smollm_dir, tmp_path, monkeypatch):
    from onecomp.eval import lm_tasks

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(lm_tasks, "hub_unreachable", lambda: "huggingface.co:443: no route")
    with pytest.raises(OneCompError, match="arc_easy need their datasets from the Hugging Face hub"):
        lm_tasks.check_tasks(["onecomp_wiki_title", "arc_easy"])


def test_eval_option_splits_texts_and_tasks():
    from onecomp.cli import _eval_selection

    assert _eval_selection("none") == ([], [])
    assert _eval_selection("builtin, pydoc,arc_easy,notes.txt") == (["builtin", "pydoc", "notes.txt"], ["arc_easy"])


def test_two_evaluations_of_one_model_give_identical_scores(tiny_smollm_dir, tmp_path, monkeypatch):
    """The same model under the same protocol scores the same, bit for bit: a difference between two runs is never noise of ours."""
    import torch
    import transformers

    from onecomp.checkpoint import load
    from onecomp.config import EvalConfig
    from onecomp.eval.builtin_tasks import BUILTIN_TASKS
    from onecomp.reporter import NullReporter

    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(ppl=["builtin"], max_windows=2, seqlen=32, tasks=list(BUILTIN_TASKS), limit=8)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_smollm_dir)
    runs = []
    for label in ("first", "second"):  # a fresh model each time, as two jobs would load it
        model = load(tiny_smollm_dir, device=torch.device("cpu"), dtype=torch.float32)
        runs.append(suite.evaluate(model, tokenizer, cfg, torch.device("cpu"), NullReporter(), label))
    first, second = runs
    assert first.metrics == second.metrics and first.stderr == second.stderr  # float equality: bit for bit
    assert set(first.metrics) >= {"ppl_builtin", "acc_onecomp_wiki_title", "acc_norm_onecomp_wiki_title"}
    headline = {t: rec["headline"] for t, rec in first.protocol["tasks"].items()}
    assert headline == {t: BUILTIN_TASKS[t].primary for t in BUILTIN_TASKS} == {t: rec["headline"] for t, rec in second.protocol["tasks"].items()}
