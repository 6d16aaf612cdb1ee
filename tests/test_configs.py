"""Every example in configs/ is a valid job description (a single job, or a
batch whose every expanded job validates)."""

from pathlib import Path

import pytest

from onecomp.batch import expand_batch, is_batch_mapping, load_batch
from onecomp.config import build_job_config, load_job_yaml

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert EXAMPLES
    assert any(is_batch_mapping(load_job_yaml(p)) for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    data = load_job_yaml(path)
    if is_batch_mapping(data):
        batch = expand_batch(data, source=path)
        assert batch.jobs and all(job.config.model for job in batch.jobs)
        return
    job = build_job_config(data, where=str(path))
    assert job.model


def test_batch_examples_expand_to_the_documented_jobs() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    methods = load_batch(root / "batch-methods.yaml")
    assert [j.name for j in methods.jobs] == ["smollm2-135m-rtn-w4g128", "smollm2-135m-gptq-w4g128", "smollm2-135m-gptq-w3g128"]
    sweep = load_batch(root / "batch-budget-sweep.yaml")
    assert [j.budget for j in sweep.jobs] == ["mixed2.5bpw", "mixed3bpw", "mixed3.5bpw", "w3g128", "w4g128"]
    light = [j.config for j in [*methods.jobs, *sweep.jobs]]
    assert all(c.calib.nsamples == 32 and c.eval.max_windows == 16 and c.eval.limit == 100 for c in light)


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


@pytest.mark.parametrize(
    "quant,needles",
    [
        ({"bits": 5, "foo": 1}, ["quant.foo: Extra inputs", "quant.bits: bits must be one of", "calib.nsamples: Input should be greater"]),
        ({"bits": 5, "foo": 1, "group_size": 0}, ["quant.foo", "quant.bits: bits must be one of", "quant.group_size: group size must be"]),
        ({"bits": 5}, ["quant.bits: bits must be one of"]),
    ],
)
def test_one_message_names_every_mistake(quant, needles) -> None:
    from onecomp.errors import OneCompError

    data = {"model": "x", "output": "o", "quant": quant, "calib": {"nsamples": -3 if "foo" in quant and "group_size" not in quant else 1}}
    with pytest.raises(OneCompError) as exc:
        build_job_config(data)
    text = str(exc.value)
    assert all(n in text for n in needles), text
    assert "\n" not in text and "Value error" not in text


def test_a_binary_file_given_as_yaml_is_one_line(tmp_path) -> None:
    from onecomp.errors import OneCompError

    path = tmp_path / "job.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    with pytest.raises(OneCompError, match="is not a text file; give a YAML file"):
        load_job_yaml(path)
    with pytest.raises(OneCompError, match="is not a text file"):
        load_batch(path)
