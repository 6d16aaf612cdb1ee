"""What results.json records about the job, for the report's header."""

from __future__ import annotations

from onecomp.config import build_job_config
from onecomp.eval.provenance import command_line, job_record, selection_record


def test_command_line_reads_as_the_user_would_type_it():
    assert command_line(["/venv/bin/onecomp", "compress", "m", "--eval", "a b"]) == "onecomp compress m --eval 'a b'"
    assert command_line(["/src/onecomp/cli.py", "eval", "p"]) == "onecomp eval p"
    assert command_line(["bench.py", "--x"]) == "bench.py --x"


def test_job_record_names_model_method_format_stages_and_calibration():
    cfg = build_job_config({"model": "smollm2-135m", "output": "out", "quant": {"bits": 3}, "stages": ["layerwise", "blockwise"]})
    job = job_record(cfg, "smollm2-135m", {"kind": "uniform", "format": cfg.quant.format().to_json()}, calibrated=True)
    assert job["model"] == "smollm2-135m" and job["method"] == "gptq + QEP" and job["format"] == cfg.quant.format().label()
    assert job["stages"] == ["layerwise", "blockwise"] and job["calibration"]["nsamples"] == 128
    assert job["version"] and job["date"].endswith("+00:00")
    assert job_record(cfg, "m", {"kind": "bpw", "target": 3.0}, calibrated=False)["calibration"] is None


def test_selection_record_says_when_there_was_nothing_to_choose():
    assert selection_record({}, "1-layerwise", None)["text"] is None
    made = selection_record({"1-layerwise": 20.0, "2-blockwise": 19.0}, "2-blockwise", {"split": "select"})
    assert made["text"] == "builtin-selection" and made["metric"] == "ppl" and made["chosen"] == "2-blockwise"
