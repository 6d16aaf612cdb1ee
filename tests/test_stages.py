"""The staged executor: layer-wise, block-wise and global stages each write a
pivot; the best pivot is chosen monotonically; a job killed anywhere (inside a
block, inside a refinement stage, while a pivot is being written) resumes to
exactly the pivots of an uninterrupted run; refinement can start from a pivot."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onecomp.config import build_job_config
from onecomp.errors import OneCompError
from onecomp.eval import suite
from onecomp.eval.suite import Scores
from onecomp.pipeline import compress
from tests.test_cli import run_cli

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer

ALL = ["layerwise", "blockwise", "global"]
PIVOTS = ["1-layerwise", "2-blockwise", "3-global"]
ARGS = ["--bits", "2", "--group-size", "32", "--nsamples", "32", "--seqlen", "128", "--eval", "none"]
EXTRA = "blockwise:\n  epochs: 3\nglobal:\n  epochs: 3\n  checkpoint_every: 2\n"  # long enough to be killed inside


def _config(model_dir: Path, out: Path, stages: list[str] = ALL, **extra) -> dict:
    cfg = {
        "model": str(model_dir),
        "output": str(out),
        "quant": {"bits": 2, "group_size": 32},
        "calib": {"nsamples": 32, "seqlen": 128},
        "eval": {"ppl": [], "tasks": []},
        "stages": stages,
        "blockwise": {"epochs": 3},
        "global": {"epochs": 3, "checkpoint_every": 2},
    }
    return {**cfg, **extra}


def _cli(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "onecomp.cli", "compress", str(model_dir), *ARGS, "--stages", ",".join(ALL),
            "--config", str(out.parent / "extra.yaml"), "--output", str(out)]


def _write_extra(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "extra.yaml").write_text(EXTRA)


def _assert_same_pivots(a: Path, b: Path, names: list[str] = PIVOTS) -> None:
    for name in names:
        ta = load_file(str(a / "pivots" / name / "model.safetensors"))
        tb = load_file(str(b / "pivots" / name / "model.safetensors"))
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k}"


@pytest.fixture(scope="module")
def reference(tiny_smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    compress(build_job_config(_config(tiny_smollm_dir, out)))
    return out


def test_every_stage_writes_a_loadable_pivot(reference: Path) -> None:
    from onecomp.checkpoint import load

    state = json.loads((reference / "state.json").read_text())
    assert state["complete"] and state["best"] == "3-global"
    results = json.loads((reference / "eval" / "results.json").read_text())
    assert list(results["pivots"]) == PIVOTS
    codes = None
    for name in PIVOTS:
        model = load(reference / "pivots" / name)
        meta = json.loads((reference / "pivots" / name / "onecomp.json").read_text())
        assert meta["stage"] == name.split("-", 1)[1]
        q = model.model.layers[0].self_attn.q_proj
        codes = q.qweight if codes is None else codes
        assert torch.equal(q.qweight, codes)  # refinement never changes the integer codes
        out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
        assert out.shape == (1, 7)
    assert not (reference / "work").exists()


def _done_lines(log: str, pattern: str) -> list[str]:
    return re.findall(pattern, log)


def _progress(out: Path, stage: str) -> int:
    try:
        state = json.loads((out / "state.json").read_text())
    except (OSError, ValueError):
        return 0
    prog = state.get("progress", {}).get(stage, {})
    return int(prog.get("blocks_done") or prog.get("steps_done") or 0)


def _wait_and_kill(proc: subprocess.Popen, out: Path, stage: str | None, target: float, deadline: float) -> bool:
    """SIGKILL ``proc`` once ``stage`` has durably finished ``target`` units (blocks
    or steps), or ``target`` seconds after the start when ``stage`` is None.
    Returns whether the kill landed: False if the process ended first, even
    between the last poll and the signal (it then exits with its own code)."""
    t0 = time.time()
    while time.time() < deadline and proc.poll() is None:
        if (time.time() - t0 >= target) if stage is None else (_progress(out, stage) >= target):
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def test_sigkill_at_random_points_then_resume(tiny_smollm_dir: Path, reference: Path, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("ONECOMP_KILL_SEED", "0")))
    out = tmp_path / "out"
    _write_extra(out)
    plan = ["layerwise", "blockwise", "global"] + [None] * int(os.environ.get("ONECOMP_RANDOM_KILLS", "3"))
    rng.shuffle(plan)
    cmd = _cli(tiny_smollm_dir, out)
    kills = 0
    for stage in plan:
        # inside a stage: after a random number of finished units; otherwise at a random time
        target = {"layerwise": rng.randint(1, 3), "blockwise": rng.randint(1, 3), "global": rng.randint(1, 90)}.get(stage, rng.uniform(3.0, 12.0))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed = _wait_and_kill(proc, out, stage, target, time.time() + 180)
        kills += killed
        if (out / "state.json").is_file():
            cmd = [sys.executable, "-m", "onecomp.cli", "resume", str(out)]
        if not killed and json.loads((out / "state.json").read_text()).get("complete"):
            break
    assert kills >= 2
    final = subprocess.run([sys.executable, "-m", "onecomp.cli", "resume", str(out)], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    _assert_same_pivots(reference, out)
    log = (out / "logs" / "onecomp.log").read_text()
    for pattern in (r"layer-wise block (\d+) done", r"block-wise block (\d+) done", r"global step (\d+) saved"):
        found = _done_lines(log, pattern)
        assert len(found) == len(set(found)), f"a finished unit was redone: {pattern}"
    assert not list((out / "pivots").glob(".*partial"))


KILL_IN_PIVOT_WRITE = """
import os, signal, sys
import onecomp.runtime.writer as writer
original = writer.write_safetensors
def killing(path, tensors, metadata=None):
    original(path, tensors, metadata)
    if "2-blockwise" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
writer.write_safetensors = killing
from onecomp.cli import main
sys.argv = ["onecomp", *sys.argv[1:]]
main()
"""


def test_sigkill_during_a_pivot_write_leaves_no_partial_pivot(tiny_smollm_dir: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_extra(out)
    cmd = _cli(tiny_smollm_dir, out)
    proc = subprocess.run([sys.executable, "-c", KILL_IN_PIVOT_WRITE, *cmd[3:]], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "pivots" / "1-layerwise").is_dir()
    assert not (out / "pivots" / "2-blockwise").exists()  # only a hidden temporary directory
    resumed = subprocess.run([sys.executable, "-m", "onecomp.cli", "resume", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_pivots(reference, out)
    assert not list((out / "pivots").glob(".*"))


def test_changed_refinement_settings_are_refused_by_name(tiny_smollm_dir: Path, reference: Path) -> None:
    cfg = _config(tiny_smollm_dir, reference)
    cfg["blockwise"] = {"lr": 0.5}
    with pytest.raises(OneCompError, match=r"config\.blockwise\.lr"):
        compress(build_job_config(cfg), resume=True)


def test_from_pivot_refines_an_existing_pivot(tiny_smollm_dir: Path, reference: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "refined"
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    code, text = run_cli(
        ["compress", "--from-pivot", str(reference / "pivots" / "1-layerwise"), "--stages", "blockwise",
         "--nsamples", "32", "--seqlen", "128", "--config", str(extra), "--eval", "none", "-o", str(out)],
        capsys,
    )
    assert code == 0, text
    meta = json.loads((out / "pivots" / "2-blockwise" / "onecomp.json").read_text())
    assert meta["from"].endswith("1-layerwise")
    _assert_same_pivots(reference, out, ["2-blockwise"])  # same start, same settings: same result
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["input"]["path"].endswith("1-layerwise") and list(results["pivots"]) == ["2-blockwise"]


def test_from_pivot_refuses_bad_input(tiny_smollm_dir: Path, reference: Path, tmp_path: Path, capsys) -> None:
    from tests.test_cli import assert_one_line_error

    code, text = run_cli(["compress", "--from-pivot", str(tiny_smollm_dir), "-o", str(tmp_path / "a")], capsys)
    assert_one_line_error(code, text, "is not a onecomp pivot")
    code, text = run_cli(
        ["compress", "--from-pivot", str(reference / "pivots" / "1-layerwise"), "--stages", "layerwise,blockwise", "-o", str(tmp_path / "b")],
        capsys,
    )
    assert_one_line_error(code, text, "drop 'layerwise'")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_stage_that_makes_ppl_worse_is_not_the_best(tiny_smollm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from onecomp import pipeline

    # the reported held-out text ranks the pivots the other way: the choice must follow the selection text alone
    reported = {"the original model": 10.0, "pivot 1-layerwise": 12.0, "pivot 2-blockwise": 11.0, "pivot 3-global": 12.5}
    selection = {"pivot 1-layerwise": 12.0, "pivot 2-blockwise": 12.5, "pivot 3-global": 11.0}
    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path / "cache"))

    def fake_ppl(model, tokenizer, spec, eval_cfg, device, reporter, label):
        return Scores({"ppl_builtin": reported[label]}, {}, {"ppl": {"builtin": {"windows": 1}}, "tasks": {}})

    monkeypatch.setattr(suite, "score_ppl", fake_ppl)
    monkeypatch.setattr(pipeline, "score_selection", lambda model, tokenizer, batch, device, reporter, label: (selection[label], {}))
    cfg = _config(tiny_smollm_dir, tmp_path / "out")
    cfg["eval"] = {"ppl": ["builtin"], "max_windows": 1, "seqlen": 64, "tasks": []}
    summary = compress(build_job_config(cfg))
    assert summary.best == "3-global"
    notes = {r.name: r.note for r in summary.rows}
    assert notes["2-blockwise"].startswith("worse than 1-layerwise") and notes["3-global"] == "best"
    meta = json.loads((tmp_path / "out" / "pivots" / "3-global" / "onecomp.json").read_text())
    assert meta["from"].endswith("1-layerwise")  # the next stage started from the best pivot
    results = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
    assert results["best"] == "3-global" and results["pivots"]["2-blockwise"]["accepted"] is False
    chosen = results["selection"]
    assert chosen["text"] == "builtin-selection" and chosen["metric"] == "ppl" and chosen["chosen"] == "3-global"
    assert chosen["values"] == {"1-layerwise": 12.0, "2-blockwise": 12.5, "3-global": 11.0}
    assert chosen["protocol"]["split"] == "select" and chosen["protocol"]["sha256"] != results["protocol"]["ppl"].get("builtin", {}).get("sha256")
