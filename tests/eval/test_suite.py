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
    real = suite.score_tasks

    def counting(model, tokenizer, names, eval_cfg, device, reporter, label):
        calls.append(label)
        return real(model, tokenizer, names, eval_cfg, device, reporter, label)

    monkeypatch.setattr(suite, "score_tasks", counting)
    compress(build_job_config(_config(tiny_smollm_dir, tmp_path / "a")))
    assert calls == ["the original model", "pivot 1-layerwise"]
    res = json.loads((tmp_path / "a" / "eval" / "results.json").read_text())
    key = "acc_onecomp_wiki_title"
    for row in (res["original"], res["pivots"]["1-layerwise"]):
        assert 0 <= row["metrics"][key] <= 1 and "acc_norm_onecomp_wiki_title" in row["metrics"] and key in row["stderr"]
    assert res["protocol"]["tasks"]["onecomp_wiki_title"]["items"] == 8
    assert (tmp_path / "a" / "eval" / "report.html").is_file()

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
