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
