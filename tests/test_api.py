"""The Python API runs the CLI's engine with the CLI's defaults, fails in one
line, and leaves `import onecomp` cheap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import onecomp
from onecomp.errors import OneCompError

FAST = {"quant": {"bits": 4}, "calib": {"nsamples": 4, "seqlen": 16}, "eval": {"ppl": [], "tasks": []}}


class _Captured(Exception):
    pass


@pytest.fixture
def captured_job(monkeypatch) -> list:
    """The JobConfig handed to the engine, which then stops (nothing is run)."""
    import onecomp.pipeline

    jobs: list = []

    def fake(job, reporter=None, **flags):  # noqa: ANN001, ANN202
        jobs.append((job, flags))
        raise _Captured

    monkeypatch.setattr(onecomp.pipeline, "compress", fake)
    return jobs


def test_compress_then_load_the_pivot(tmp_path: Path, tiny_smollm_dir: Path, monkeypatch) -> None:
    from onecomp.formats import IntQuantLinear
    from onecomp.pipeline import JobSummary

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        summary = onecomp.compress(tiny_smollm_dir, FAST)
    finally:
        os.umask(old)
    out = tmp_path / "onecomp-out" / f"{tiny_smollm_dir.name}-gptq-w4g128"  # the CLI's default output
    assert isinstance(summary, JobSummary) and summary.output.resolve() == out
    assert summary.best == "1-layerwise"
    pivot = next(r.path for r in summary.rows if r.name == summary.best)
    model = onecomp.load(pivot)
    assert any(isinstance(m, IntQuantLinear) for m in model.modules())
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert job["calib"]["nsamples"] == 4 and job["model"] == str(tiny_smollm_dir)
    for path in [out, *out.rglob("*")]:  # shared on a multi-user machine: readable by others under umask 022
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_every_form_of_config_is_the_same_job(tmp_path: Path, captured_job: list) -> None:
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(yaml.safe_dump({**FAST, "model": "ignored", "output": str(tmp_path / "o")}))
    full = onecomp.JobConfig.model_validate({**FAST, "model": "ignored", "output": str(tmp_path / "o")})
    for config in (FAST, yaml_file, str(yaml_file), full):
        with pytest.raises(_Captured):
            onecomp.compress("smollm2-135m", config, output=tmp_path / "o", resume=True)
    jobs = [job for job, _ in captured_job]
    assert all(job == jobs[0] for job in jobs)
    assert jobs[0].model == "smollm2-135m" and jobs[0].quant.bits == 4
    assert captured_job[0][1] == {"overwrite": False, "resume": True, "force": False}


def test_the_cli_hands_the_engine_the_same_job(tmp_path: Path, captured_job: list, monkeypatch) -> None:
    from onecomp.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Captured):
        onecomp.compress("smollm2-135m", FAST)
    argv = ["onecomp", "compress", "smollm2-135m", "--bits", "4", "--nsamples", "4", "--seqlen", "16", "--eval", "none"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(_Captured):
        main()
    (api_job, _), (cli_job, _) = captured_job
    assert api_job == cli_job
    assert api_job.output == "onecomp-out/smollm2-135m-gptq-w4g128"


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"quant": {"bits": 5, "colour": "red"}, "calib": {"nsamples": -3}}, "config: "),
        ({"stages": ["global"]}, "stages"),
        (42, "config must be a onecomp.JobConfig"),
        ("no-such-job.yaml", "cannot read config no-such-job.yaml"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, monkeypatch, config: object, needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OneCompError) as err:
        onecomp.compress("smollm2-135m", config)  # type: ignore[arg-type]
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert not (tmp_path / "onecomp-out").exists()


def test_missing_model_is_one_line(captured_job: list) -> None:
    with pytest.raises(OneCompError, match="missing the model to compress"):
        onecomp.compress(None, {"quant": {"bits": 4}})
    assert captured_job == []


def test_import_onecomp_stays_cheap() -> None:
    code = "import sys, onecomp; onecomp.__version__; print(sorted(m for m in ('torch', 'transformers', 'pydantic') if m in sys.modules))"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert done.stdout.strip() == "[]"


def test_public_names() -> None:
    from onecomp.api import compress
    from onecomp.checkpoint import load
    from onecomp.config import JobConfig

    assert (onecomp.compress, onecomp.load, onecomp.JobConfig) == (compress, load, JobConfig)
    assert set(onecomp.__all__) >= {"compress", "load", "JobConfig"}
    with pytest.raises(AttributeError):
        onecomp.no_such_name  # noqa: B018
