"""Mixed-precision jobs end to end on a tiny model: `compress --bpw`, `--memory`,
`onecomp plan` and re-planning from a saved measurement, `compress --plan`,
and a killed measurement that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import onecomp
from onecomp.config import build_job_config
from onecomp.errors import OneCompError
from onecomp.pipeline import compress
from onecomp.plan.measure import Measurement
from tests.test_cli import run_cli

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer

CANDIDATES = ["w2g32", "w3g32", "w4g32", "w8g32", "w4ch"]


def _config(model_dir: Path, out: Path, **plan) -> dict:
    return {
        "model": str(model_dir),
        "output": str(out),
        "calib": {"nsamples": 8, "seqlen": 64},
        "eval": {"ppl": [], "tasks": []},
        "plan": {"candidates": CANDIDATES, "grad_samples": 4, **plan},
    }


@pytest.fixture(scope="module")
def bpw_job(tiny_smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpw") / "out"
    compress(build_job_config(_config(tiny_smollm_dir, out, bpw=3.2)))
    return out


def test_bpw_job_meets_its_budget_and_loads(bpw_job: Path) -> None:
    plan = json.loads((bpw_job / "plan.json").read_text())
    meta = json.loads((bpw_job / "pivots" / "1-layerwise" / "onecomp.json").read_text())
    assert meta["bits_per_weight"] <= 3.2
    assert meta["bits_per_weight"] == pytest.approx(plan["achieved"]["bits_per_weight"])
    formats = {json.dumps(f, sort_keys=True) for f in plan["layers"].values()}
    assert len(formats) > 1  # mixed: 3.2 bpw is between the candidates
    layers = json.loads((bpw_job / "pivots" / "1-layerwise" / "config.json").read_text())["quantization_config"]["layers"]
    assert {n: f["bits"] for n, f in layers.items()} == {n: f["bits"] for n, f in plan["layers"].items()}
    m = Measurement.load(bpw_job / "measurement.json")
    assert sorted(m.candidates) == sorted(CANDIDATES) and len(m.layers) == len(plan["layers"])
    assert not (bpw_job / "work").exists()
    model = onecomp.load(bpw_job / "pivots" / "1-layerwise")
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_memory_job_fits_on_disk(tiny_smollm_dir: Path, bpw_job: Path, tmp_path: Path) -> None:
    # the tiny model is mostly embeddings: a budget just above the 3.2 bpw plan's size leaves the
    # planner a few kilobytes to spend, after its (conservative) allowance for the file header
    weights = (bpw_job / "pivots" / "1-layerwise" / "model.safetensors").stat().st_size
    budget_gb = (weights + 20_000) / 1e9
    out = tmp_path / "mem"
    cfg = _config(tiny_smollm_dir, out, memory_gb=budget_gb, measurement=str(bpw_job / "measurement.json"))
    compress(build_job_config(cfg))
    size = (out / "pivots" / "1-layerwise" / "model.safetensors").stat().st_size
    assert size <= budget_gb * 1e9
    assert json.loads((out / "plan.json").read_text())["achieved"]["weight_bytes"] <= budget_gb * 1e9


def test_plan_command_replans_from_a_measurement_and_compress_uses_the_plan(tiny_smollm_dir: Path, bpw_job: Path, tmp_path: Path, capsys) -> None:
    code, out = run_cli(
        ["plan", str(tiny_smollm_dir), "--bpw", "4.2", "--measurement", str(bpw_job / "measurement.json"), "-o", str(tmp_path / "p"), "--pin", "*.down_proj=w8g32"],
        capsys,
    )
    assert code == 0, out
    assert "bits per weight by block" in out and "planned" in out
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["achieved"]["bits_per_weight"] <= 4.2
    assert all(f["bits"] == 8 for n, f in plan["layers"].items() if n.endswith("down_proj"))
    # a hand edit is honoured by compress --plan
    plan["layers"]["model.layers.0.self_attn.o_proj"] = "w2g32"
    (tmp_path / "p" / "plan.json").write_text(json.dumps(plan))
    job = tmp_path / "job"
    code, out = run_cli(["compress", str(tiny_smollm_dir), "--plan", str(tmp_path / "p" / "plan.json"), "-o", str(job), "--nsamples", "8", "--seqlen", "64", "--eval", "none"], capsys)
    assert code == 0, out
    layers = json.loads((job / "pivots" / "1-layerwise" / "config.json").read_text())["quantization_config"]["layers"]
    assert layers["model.layers.0.self_attn.o_proj"]["bits"] == 2 and layers["model.layers.0.mlp.down_proj"]["bits"] == 8


def test_measurement_of_another_model_is_refused(bpw_job: Path, tmp_path: Path) -> None:
    from tests.conftest import tiny_model

    other = tmp_path / "other"
    tiny_model("llama", layers=4, seed=3).save_pretrained(other)
    cfg = _config(other, tmp_path / "o", bpw=3.0, measurement=str(bpw_job / "measurement.json"))
    with pytest.raises(OneCompError, match="measurement was made on a different model"):
        compress(build_job_config(cfg))
    assert not (tmp_path / "o").exists()


def test_killed_measurement_resumes_from_its_blocks(tiny_smollm_dir: Path, bpw_job: Path, tmp_path: Path, monkeypatch) -> None:
    import onecomp.plan.measure as measure

    out = tmp_path / "out"
    cfg = build_job_config(_config(tiny_smollm_dir, out, bpw=3.2))
    real = measure.forward_with_input_hessians
    calls = {"n": 0}

    def crash_in_block_two(block, modules, inputs, index, device):
        calls["n"] += 1
        if index == 2:
            raise RuntimeError("simulated crash")
        return real(block, modules, inputs, index, device)

    monkeypatch.setattr(measure, "forward_with_input_hessians", crash_in_block_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compress(cfg)
    assert (out / "work" / "measure" / "blocks.json").is_file()
    monkeypatch.setattr(measure, "forward_with_input_hessians", lambda *a: (calls.__setitem__("n", calls["n"] + 1), real(*a))[1])
    calls["n"] = 0
    compress(cfg, resume=True)
    assert calls["n"] == 2  # blocks 2 and 3 only
    assert json.loads((out / "plan.json").read_text())["layers"] == json.loads((bpw_job / "plan.json").read_text())["layers"]
