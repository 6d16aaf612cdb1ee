"""End to end on the real SmolLM2-135M (few samples): the job directory, the
pivot on disk, loading, generation and the score relative to the original."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import onecomp
from onecomp.config import build_job_config
from onecomp.pipeline import compress

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("job") / "out"
    config = build_job_config(
        {
            "model": "smollm2-135m",
            "output": str(out),
            "quant": {"method": "gptq", "bits": 4, "group_size": 128},
            "calib": {"nsamples": 16, "seqlen": 256},
            "eval": {"seqlen": 256, "max_windows": 8, "tasks": ["onecomp_wiki_title"], "limit": 40},
        }
    )
    compress(config)
    return out


def test_job_directory_contract(job: Path) -> None:
    for name in ("job.yaml", "state.json", "inspect.json", "plan.json", "eval/results.json", "logs/calibration.json"):
        assert (job / name).is_file(), name
    pivot = job / "pivots" / "1-layerwise"
    for name in ("config.json", "model.safetensors", "onecomp.json", "tokenizer.json"):
        assert (pivot / name).is_file(), name
    state = json.loads((job / "state.json").read_text())
    assert state["complete"] and state["done"] == ["layerwise"]
    qcfg = json.loads((pivot / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "onecomp" and len(qcfg["layers"]) == 30 * 7


def test_size_on_disk_matches_declared_bits(job: Path) -> None:
    pivot = job / "pivots" / "1-layerwise"
    meta = json.loads((pivot / "onecomp.json").read_text())
    profile = json.loads((job / "inspect.json").read_text())["model"]
    quantized = profile["block_linear_params"]
    other = profile["total_params"] - quantized
    expected = quantized * meta["bits_per_weight"] / 8 + other * 2  # unquantized tensors stay bf16
    actual = (pivot / "model.safetensors").stat().st_size
    assert abs(actual - expected) / expected < 0.05
    assert 4.15 < meta["bits_per_weight"] < 4.2


def test_quality_relative_to_original(job: Path) -> None:
    results = json.loads((job / "eval" / "results.json").read_text())
    ratio = results["pivots"]["1-layerwise"]["ratios"]["ppl_builtin"]
    # 16 x 256 calibration tokens only; the full setting reaches ~1.18x
    assert 1.0 < ratio < 1.45


def test_tasks_scored_with_protocol_and_report(job: Path) -> None:
    results = json.loads((job / "eval" / "results.json").read_text())
    assert results["schema"] == 3
    key = "acc_onecomp_wiki_title"
    original, pivot = results["original"], results["pivots"]["1-layerwise"]
    # 4 choices: chance is 0.25; with 40 items one standard error is at most 0.08
    assert original["metrics"][key] > 0.5 and 0 < original["stderr"][key] < 0.1
    assert pivot["ratios"][key] > 0.75  # 4-bit GPTQ keeps most of the accuracy
    task = results["protocol"]["tasks"]["onecomp_wiki_title"]
    assert task["items"] == 40 and task["items_total"] == 300 and task["num_fewshot"] == 0 and task["lm_eval"]
    assert results["protocol"]["ppl"]["builtin"]["nwindows"] == 8
    for name in ("report.md", "report.html", "ppl_vs_bpw.png", "acc_vs_bpw.png"):
        assert (job / "eval" / name).is_file(), name


def test_pivot_loads_and_generates(job: Path) -> None:
    pivot = job / "pivots" / "1-layerwise"
    model = onecomp.load(pivot, device="cpu")
    tok = transformers.AutoTokenizer.from_pretrained(pivot)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8
    assert isinstance(model, transformers.PreTrainedModel)


def test_eval_command_scores_a_pivot(job: Path, capsys) -> None:
    from tests.test_cli import run_cli

    args = ["eval", str(job / "pivots" / "1-layerwise"), "--seqlen", "128", "--max-windows", "2", "--tasks", "onecomp_wiki_continuation", "--limit", "4"]
    code, out = run_cli(args, capsys)
    assert code == 0, out
    data, _end = json.JSONDecoder().raw_decode(out[out.index("{"):])  # progress bars follow on stderr
    assert data["metrics"]["ppl_builtin"] > 1
    assert 0 <= data["metrics"]["acc_norm_onecomp_wiki_continuation"] <= 1
    assert data["protocol"]["tasks"]["onecomp_wiki_continuation"]["items"] == 4
