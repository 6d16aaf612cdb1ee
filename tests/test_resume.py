"""Resume: a job killed in the middle of the layer-wise stage continues from its
last finished block and ends with exactly the pivot of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import onecomp.stages.layerwise as layerwise
from onecomp.config import build_job_config
from onecomp.errors import OneCompError
from onecomp.pipeline import compress

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer


@pytest.fixture(scope="module")
def model_dir(tiny_smollm_dir: Path) -> Path:
    return tiny_smollm_dir


def _config(model_dir: Path, out: Path, bits: int = 3) -> dict:
    return {
        "model": str(model_dir),
        "output": str(out),
        "quant": {"bits": bits, "group_size": 32},
        "calib": {"nsamples": 8, "seqlen": 64},
        "eval": {"ppl": [], "tasks": []},
    }


def _pivot(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "pivots" / "1-layerwise" / "model.safetensors"))


def _assert_same_pivot(a: Path, b: Path) -> None:
    ta, tb = _pivot(a), _pivot(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def reference(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    compress(build_job_config(_config(model_dir, out)))
    return out


def test_crash_then_resume_redoes_no_finished_block(model_dir, reference, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    original = layerwise._quantize_block
    calls: list[int] = []

    def crashing(block, index, *args, **kwargs):
        calls.append(index)
        if index == 2 and len(calls) == 3:
            raise RuntimeError("simulated crash")
        return original(block, index, *args, **kwargs)

    monkeypatch.setattr(layerwise, "_quantize_block", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compress(build_job_config(_config(model_dir, out)))
    state = json.loads((out / "state.json").read_text())
    assert state["progress"]["layerwise"]["blocks_done"] == 2 and not state.get("complete")
    with pytest.raises(OneCompError, match="already holds a job"):
        compress(build_job_config(_config(model_dir, out)))
    compress(build_job_config(_config(model_dir, out)), resume=True)
    assert calls == [0, 1, 2, 2, 3]
    _assert_same_pivot(reference, out)
    assert not (out / "work").exists()


def test_changed_inputs_are_refused_with_names(model_dir, reference) -> None:
    with pytest.raises(OneCompError, match=r"config\.quant\.bits"):
        compress(build_job_config(_config(model_dir, reference, bits=4)), resume=True)


def test_complete_job_is_not_redone(model_dir, reference) -> None:
    before = (reference / "pivots" / "1-layerwise" / "model.safetensors").stat().st_mtime_ns
    summary = compress(build_job_config(_config(model_dir, reference)), resume=True)
    assert summary.rows[-1].name == "1-layerwise"
    assert (reference / "pivots" / "1-layerwise" / "model.safetensors").stat().st_mtime_ns == before


# The job waits before quantizing its last block, so the kill always lands
# inside the layer-wise stage (after block 0 is stored, before the pivot), however
# fast the machine: a job that finished first would pass without being killed.
HOLD_BEFORE_LAST_BLOCK = """
import sys, time
import onecomp.stages.layerwise as lw
original = lw._quantize_block
def holding(block, index, *args, **kwargs):
    if index == 3:
        time.sleep(600)
    return original(block, index, *args, **kwargs)
lw._quantize_block = holding
from onecomp.cli import main
sys.argv = ["onecomp", *sys.argv[1:]]
main()
"""


def test_sigkill_during_layerwise_then_resume(model_dir, reference, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["compress", str(model_dir), "--bits", "3", "--group-size", "32",
            "--nsamples", "8", "--seqlen", "64", "--eval", "none", "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", HOLD_BEFORE_LAST_BLOCK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state_file = out / "state.json"
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file():
            try:
                if json.loads(state_file.read_text()).get("progress", {}).get("layerwise", {}).get("blocks_done", 0) >= 1:
                    break
            except ValueError:
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = json.loads(state_file.read_text())
    assert not state.get("complete") and 1 <= state["progress"]["layerwise"]["blocks_done"] <= 3
    assert not (out / "pivots" / "1-layerwise").exists()
    resumed = subprocess.run([sys.executable, "-m", "onecomp.cli", "resume", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_pivot(reference, out)
