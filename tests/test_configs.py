"""Every example in configs/ is a valid job description."""

from pathlib import Path

import pytest

from onecomp.config import build_job_config, load_job_yaml

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    job = build_job_config(load_job_yaml(path), where=str(path))
    assert job.model


def test_unknown_keys_are_reported_with_their_path(tmp_path) -> None:
    from onecomp.errors import OneCompError

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\noutput: o\nquant:\n  bitz: 4\n")
    with pytest.raises(OneCompError, match=r"quant\.bitz: Extra inputs are not permitted"):
        build_job_config(load_job_yaml(bad), where=str(bad))


def test_refinement_settings_round_trip_through_yaml(tmp_path) -> None:
    from onecomp.config import JobConfig

    job = build_job_config({"model": "x", "output": "o", "stages": ["layerwise", "blockwise", "global"], "global": {"lr": 1e-3}, "blockwise": {"epochs": 3}})
    path = tmp_path / "job.yaml"
    path.write_text(job.to_yaml())
    again = build_job_config(load_job_yaml(path))
    assert again == job and again.global_.lr == 1e-3 and again.blockwise.epochs == 3
    assert "global" in job.result_fingerprint_fields()
    with pytest.raises(Exception, match=r"global\.lrr"):
        build_job_config({"model": "x", "output": "o", "global": {"lrr": 1}})
    assert isinstance(job, JobConfig)
