"""A user is told what a method includes: rtn runs QEP unless --no-qep."""

from __future__ import annotations

from onecomp.config import build_job_config
from onecomp.describe import job_caption, method_label, stage_line


def _job(**data):  # noqa: ANN003, ANN202
    return build_job_config({"model": "m", "output": "o", **data})


def test_method_label_says_qep() -> None:
    assert method_label(_job()) == "gptq + QEP"
    assert method_label(_job(quant={"method": "rtn"})) == "rtn + QEP"
    assert method_label(_job(quant={"method": "rtn", "qep": {"enabled": False}})) == "rtn"


def test_stage_lines_count_the_stages() -> None:
    job = _job(stages=["layerwise", "blockwise", "global"], quant={"bits": 3})
    assert stage_line(job, 1, "layerwise") == "stage 1/3: layer-wise quantization, gptq + QEP, w3g128"
    assert stage_line(job, 3, "global") == "stage 3/3: global distillation"


def test_caption_names_method_format_and_later_stages() -> None:
    assert job_caption(_job(stages=["layerwise", "blockwise"])) == "method: gptq + QEP, w4g128; then block-wise refinement"
    assert job_caption(_job(plan={"bpw": 2.5})) == "method: gptq + QEP, mixed, 2.5 bits per weight"
