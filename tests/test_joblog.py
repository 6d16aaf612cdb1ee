"""The job log: a header saying what ran where, then every progress line, from the first second of work."""

from __future__ import annotations

import torch

from onecomp import __version__
from onecomp.config import build_job_config
from onecomp.joblog import command_line, header_lines
from tests.test_cli import run_cli_streams
from tests.test_ui import PLAIN


def test_command_line_names_onecomp_however_it_was_started() -> None:
    assert command_line(["/somewhere/.venv/bin/onecomp", "compress", "m", "-o", "a b"]) == "onecomp compress m -o 'a b'"
    assert command_line(["/src/onecomp/cli.py", "resume", "out"]) == "onecomp resume out"
    assert command_line(["train.py", "--x"]) == "train.py --x"


def test_header_names_command_versions_device_dtype_and_seed() -> None:
    import transformers

    config = build_job_config({"model": "m", "output": "o", "calib": {"seed": 7}})
    text = "\n".join(header_lines(config, torch.device("cpu"), torch.bfloat16, ["onecomp", "compress", "m"]))
    for needle in ("command: onecomp compress m", f"onecomp {__version__}", f"torch {torch.__version__}",
                   f"transformers {transformers.__version__}", "device: cpu", "compute dtype: bfloat16", "seed 7"):
        assert needle in text, needle


def test_a_job_logs_header_then_progress_while_the_original_is_scored(capsys, tmp_path, tiny_smollm_dir, monkeypatch) -> None:
    import onecomp.eval.suite as suite

    monkeypatch.setattr(suite, "cache_dir", lambda: tmp_path / "cache")  # the original is scored, not read from a cache
    out, small = tmp_path / "o", tmp_path / "small.yaml"
    small.write_text("eval: {seqlen: 32, max_windows: 2}\n")
    args = ["compress", str(tiny_smollm_dir), "--method", "rtn", "--nsamples", "4", "--seqlen", "16", "--eval", "builtin", "--config", str(small), "-o", str(out)]
    code, stdout, stderr = run_cli_streams(args, capsys)
    assert code == 0, stderr
    log = [line.split(" INFO ", 1)[1] for line in (out / "logs" / "onecomp.log").read_text().splitlines()]
    assert log[0].startswith("command: onecomp compress") and log[1].startswith(f"onecomp {__version__}, torch")
    assert log[2].startswith("device: cpu") and "seed 0" in log[4]
    scoring = [i for i, line in enumerate(log) if line.startswith("perplexity of the original model on builtin: ")]
    stage = log.index("stage 1/1: layer-wise quantization, rtn + QEP, w4g128")
    assert scoring and scoring[0] < stage, log
    # not a terminal: plain progress lines, never a bar cut to the width
    assert stderr.strip() and all(PLAIN.match(line) for line in stderr.strip().splitlines()), stderr
    assert "stage 1/1: layer-wise quantization, rtn + QEP, w4g128" in stdout
    assert "method: rtn + QEP, w4g128" in stdout  # the summary says what the method included
