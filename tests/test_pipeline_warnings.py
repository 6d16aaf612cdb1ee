"""Warnings of a whole job: a raised damping or a layer refinement cannot train is
recorded in logs/layers.json, eval/results.json and the printed summary; with
--strict the job stops at the first one with one line, keeps what it wrote, and
resumes without --strict to the same pivots as a job that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import onecomp.refine.trainable as trainable
from onecomp.formats import IntQuantLinear
from tests.stages.test_layerwise_qep import indefinite_statistics
from tests.test_cli import run_cli

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer

ARGS = ["--bits", "2", "--group-size", "32", "--nsamples", "8", "--seqlen", "32", "--eval", "none"]
SHORT = "blockwise:\n  epochs: 1\n  nsamples: 4\nglobal:\n  nsamples: 2\n"  # refinement only has to run
QKV = [f"model.layers.0.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]


def _compress(model: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    return run_cli(["compress", str(model), *ARGS, "-o", str(out), *extra], capsys)


def assert_strict_stop(code: int, text: str, needle: str) -> None:
    """One error line naming the warning, last (progress bars may come before it), no traceback."""
    assert code == 2 and "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: --strict: ") and needle in last, text
    assert sum("error" in line for line in text.splitlines()) == 1 and "warning:" not in text


def _weights(out: Path, pivot: str = "1-layerwise") -> dict[str, torch.Tensor]:
    return load_file(str(out / "pivots" / pivot / "model.safetensors"))


def test_a_raised_damping_is_reported_everywhere_and_strict_stops_at_it(tiny_smollm_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    indefinite_statistics(monkeypatch)  # block 0's q/k/v: QEP and GPTQ both need 10 x mean(diag H)
    code, text = _compress(tiny_smollm_dir, tmp_path / "plain", capsys)
    assert code == 0, text
    layers = {r["name"]: r for r in json.loads((tmp_path / "plain" / "logs" / "layers.json").read_text())}
    for name in QKV:
        assert layers[name]["damp"] == pytest.approx(10.0) and layers[name]["qep_damp"] == pytest.approx(10.0)
        assert len(layers[name]["warnings"]) == 2
    assert layers["model.layers.1.mlp.up_proj"]["damp"] == 0.1 and "warnings" not in layers["model.layers.1.mlp.up_proj"]
    warnings = json.loads((tmp_path / "plain" / "eval" / "results.json").read_text())["warnings"]
    assert len(warnings) == 6 and {w["stage"] for w in warnings} == {"layerwise"} and {w["layer"] for w in warnings} == set(QKV)
    assert "6 warning(s)" in text and "layerwise model.layers.0.self_attn.q_proj: QEP: the Hessian was not positive definite" in text

    strict = tmp_path / "strict"
    code, text = _compress(tiny_smollm_dir, strict, capsys, "--strict")
    assert_strict_stop(code, text, "layerwise model.layers.0.self_attn.q_proj: QEP: the Hessian was not positive definite")
    assert not (strict / "pivots" / "1-layerwise").exists()
    assert json.loads((strict / "state.json").read_text())["progress"]["layerwise"]["blocks_done"] == 1  # the block that warned is kept

    code, text = run_cli(["resume", str(strict), "--no-strict"], capsys)
    assert code == 0, text
    assert json.loads((strict / "eval" / "results.json").read_text())["warnings"] == warnings
    a, b = _weights(tmp_path / "plain"), _weights(strict)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_layer_refinement_cannot_train_is_a_warning_and_strict_stops_before_training(
    tiny_smollm_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delitem(trainable.TRAINABLE, IntQuantLinear)  # integer layers as a format with no training view
    out = tmp_path / "out"
    (tmp_path / "short.yaml").write_text(SHORT)
    stages = ["--stages", "layerwise,blockwise,global", "--config", str(tmp_path / "short.yaml")]
    code, text = _compress(tiny_smollm_dir, out, capsys, *stages, "--strict")
    assert_strict_stop(code, text, "blockwise model.layers.0.self_attn.q_proj: format w2g32 has no training view")
    assert (out / "pivots" / "1-layerwise" / "model.safetensors").is_file()  # what was written is kept
    assert not (out / "pivots" / "2-blockwise").exists() and not (out / "work" / "blockwise").exists()

    code, text = run_cli(["resume", str(out), "--no-strict"], capsys)
    assert code == 0, text
    results = json.loads((out / "eval" / "results.json").read_text())
    linears = {n for n in _weights(out) if n.endswith(".qweight")}
    for stage in ("blockwise", "global"):
        named = {w["layer"] + ".qweight" for w in results["warnings"] if w["stage"] == stage}
        assert named == linears and len(linears) == 4 * 7
    state = json.loads((out / "state.json").read_text())
    assert len(state["stages_info"]["2-blockwise"]["details"]["untrained"]) == 4 * 7
    assert "56 warning(s)" in text and "and 46 more" in text
