"""The seed formats end to end on a tiny model: DBF, MDBF and LoRDS jobs write
pivots that load back with their own modules, their float parameters train in
the refinement stages, and one plan mixes them with integer layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp.checkpoint import load
from onecomp.config import build_job_config
from onecomp.formats import IntQuantLinear, LoRDSLinear, SignFactorLinear
from onecomp.pipeline import compress

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer

FAST = {"dbf": {"iterations": 4}, "mdbf": {"iterations": 4, "envelope": 2, "paths": 2}, "lords": {"iterations": 2}}


def _job(model_dir: Path, out: Path, quant: dict, stages: list[str], **extra) -> dict:
    return {
        "model": str(model_dir), "output": str(out), "quant": quant, "stages": stages,
        "calib": {"nsamples": 16, "seqlen": 64}, "eval": {"ppl": [], "tasks": []},
        "blockwise": {"epochs": 1}, "global": {"epochs": 1}, **extra,
    }


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize(
    ("method", "bits", "module", "label"),
    [("dbf", 2.0, SignFactorLinear, "dbf2"), ("mdbf", 4.0, SignFactorLinear, "mdbf4e2p2"), ("lords", 3, LoRDSLinear, "lords3g32")],
)
def test_method_job_writes_loadable_pivots_and_refines_its_floats(tiny_smollm_dir: Path, tmp_path: Path, method: str, bits: float, module: type, label: str) -> None:
    quant = {"method": method, "bits": bits, "group_size": 32, "options": FAST[method], "qep": {"enabled": True}}
    out = tmp_path / method
    compress(build_job_config(_job(tiny_smollm_dir, out, quant, ["layerwise", "blockwise", "global"])))
    state = json.loads((out / "state.json").read_text())
    assert state["complete"]
    layer = load(out / "pivots" / "1-layerwise")
    refined = load(out / "pivots" / "3-global")
    linears = [m for m in layer.modules() if isinstance(m, module)]
    assert len(linears) == 4 * 7
    assert all(m.spec.label().startswith(label) for m in linears)
    config = json.loads((out / "pivots" / "1-layerwise" / "config.json").read_text())["quantization_config"]
    stored = next(iter(config["layers"].values()))
    assert stored.get("rank") is not None  # the resolved size is recorded per layer
    # sign factors weight their rows by loss gradients by default (one gradient pass); LoRDS does not yet
    assert ("row-weight gradient pass" in (out / "logs" / "onecomp.log").read_text()) == (method != "lords")
    # the refinement stages changed the float parameters, not the discrete ones
    a = dict(next(m for m in layer.modules() if isinstance(m, module)).state_dict())
    b = dict(next(m for m in refined.modules() if isinstance(m, module)).state_dict())
    for key in a:
        if a[key].dtype == torch.uint8:
            assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].dtype == torch.float16)
    assert torch.isfinite(_logits(refined)).all()


def test_a_rate_too_low_for_a_layer_is_refused_before_any_work(tiny_smollm_dir: Path, tmp_path: Path) -> None:
    from onecomp.errors import OneCompError

    quant = {"method": "mdbf", "bits": 1.5}
    with pytest.raises(OneCompError, match="k_proj: mdbf1.5e1p4: 1.5 bits per weight cannot hold"):
        compress(build_job_config(_job(tiny_smollm_dir, tmp_path / "low", quant, ["layerwise"])))
    assert not (tmp_path / "low" / "pivots").exists()


def test_one_plan_mixes_integer_binary_factor_and_low_rank_scaled_layers(tiny_smollm_dir: Path, tmp_path: Path) -> None:
    names = [f"model.layers.{i}.{s}" for i in range(4) for s in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    labels = {"q_proj": "lords4g32", "gate_proj": "dbf3", "up_proj": "dbf3", "down_proj": "mdbf2.5e2p1"}
    layers = {n: next((v for k, v in labels.items() if n.endswith(k)), "w4g32") for n in names}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": layers}))
    out = tmp_path / "mixed"
    compress(build_job_config(_job(tiny_smollm_dir, out, {"method": "gptq"}, ["layerwise"], plan={"file": str(plan)})))
    model = load(out / "pivots" / "1-layerwise")
    kinds = {n: type(m) for n, m in model.named_modules() if n in layers}
    assert kinds["model.layers.0.self_attn.q_proj"] is LoRDSLinear
    assert kinds["model.layers.2.mlp.gate_proj"] is SignFactorLinear
    assert kinds["model.layers.3.mlp.down_proj"] is SignFactorLinear
    assert kinds["model.layers.1.self_attn.k_proj"] is IntQuantLinear
    # the loaded model computes what the job measured: same logits as a second load
    torch.testing.assert_close(_logits(model), _logits(load(out / "pivots" / "1-layerwise")))
    config = json.loads((out / "pivots" / "1-layerwise" / "config.json").read_text())["quantization_config"]
    assert set(config["layers"]) == set(layers)


def test_a_bit_budget_plans_binary_factors_beside_integer_formats(tiny_smollm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget"
    plan = {"bpw": 2.6, "candidates": ["w2g32", "w3g32", "dbf2", "dbf3"], "grad_samples": 4}
    quant = {"method": "gptq", "qep": {"enabled": False}}
    compress(build_job_config(_job(tiny_smollm_dir, out, quant, ["layerwise"], plan=plan)))
    solved = json.loads((out / "plan.json").read_text())
    assert solved["achieved"]["bits_per_weight"] <= 2.6
    measured = json.loads((out / "measurement.json").read_text())
    layer = next(iter(measured["layers"].values()))
    assert set(layer["errors"]) == set(plan["candidates"])
    model = load(out / "pivots" / "1-layerwise")
    kinds = {type(m) for m in model.modules() if isinstance(m, (IntQuantLinear, SignFactorLinear))}
    chosen = {f["format"] for f in solved["layers"].values()}
    assert kinds == {IntQuantLinear if c == "int" else SignFactorLinear for c in chosen}
