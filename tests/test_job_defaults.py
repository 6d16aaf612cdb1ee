"""The defaults `onecomp compress` and `onecomp.compress` fill alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onecomp.errors import OneCompError
from onecomp.job_defaults import complete_job, default_output


@pytest.mark.parametrize(
    "quant, plan, name",
    [
        ({}, None, "m-gptq-w4g128"),
        ({"method": "rtn", "bits": 3, "group_size": 64}, {}, "m-rtn-w3g64"),
        ({"method": "dbf"}, None, "m-dbf-dbf2"),
        ({"bits": 5}, None, "m-gptq-custom"),
        ({}, {"bpw": 2.5}, "m-gptq-mixed2.5bpw"),
        ({}, {"memory_gb": 0.1}, "m-gptq-mixed0.1GB"),
        ({}, {"memory_gb": "auto"}, "m-gptq-mixed-auto"),
        ({}, {"file": "plan.json"}, "m-gptq-plan"),
    ],
)
def test_default_output_names_model_method_and_format(quant: dict, plan: dict | None, name: str) -> None:
    assert default_output("org/m", quant, plan) == f"onecomp-out/{name}"
    assert default_output("dir/m.gguf", quant, plan) == f"onecomp-out/{name}"


def test_given_settings_are_kept() -> None:
    job = complete_job({"model": "m", "output": "here", "stages": ["layerwise", "blockwise"]})
    assert (job.output, job.stages) == ("here", ["layerwise", "blockwise"])


def test_a_section_that_is_not_a_mapping_is_a_validation_error() -> None:
    with pytest.raises(OneCompError, match="quant: Input should be a valid dictionary"):
        complete_job({"model": "m", "quant": 3}, where="config")


def _pivot(root: Path, spec: str | None) -> Path:
    pivot = root / "job" / "pivots" / "1-layerwise"
    pivot.mkdir(parents=True)
    (pivot / "config.json").write_text(json.dumps({"quantization_config": {"layers": {}}}))
    (pivot / "onecomp.json").write_text(json.dumps({"source": {"spec": spec} if spec else {}}))
    return pivot


def test_refining_a_pivot_fills_its_model_stages_and_output(tmp_path: Path) -> None:
    pivot = _pivot(tmp_path, "smollm2-135m")
    job = complete_job({"from_pivot": str(pivot)})
    assert job.model == "smollm2-135m"
    assert job.stages == ["blockwise", "global"]
    assert job.output == "onecomp-out/job-refined"


def test_a_pivot_that_does_not_name_its_model_asks_for_it(tmp_path: Path) -> None:
    with pytest.raises(OneCompError, match="does not name the model it was made from"):
        complete_job({"from_pivot": str(_pivot(tmp_path, None))})


def test_no_model_at_all() -> None:
    with pytest.raises(OneCompError, match="missing the model to compress"):
        complete_job({"quant": {"bits": 4}})
