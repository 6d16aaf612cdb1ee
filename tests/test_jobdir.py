"""--overwrite removes only a verified onecomp job's own entries."""

from __future__ import annotations

import json

from onecomp.jobdir import REPLACED, discard_replaced, foreign_entries, is_onecomp_job, restore_replaced, set_aside_job


def _job(d):  # noqa: ANN001, ANN202
    d.mkdir(exist_ok=True)
    (d / "job.yaml").write_text("model: smollm2-135m\noutput: o\n")
    (d / "state.json").write_text(json.dumps({"version": "0", "job": "x", "stages": ["layerwise"]}))
    (d / "pivots" / "1-layerwise").mkdir(parents=True)
    (d / "logs").mkdir()
    (d / ".state.json.abc.tmp").write_text("")
    return d


def test_a_job_is_recognised_by_its_job_yaml_or_its_state(tmp_path) -> None:
    d = _job(tmp_path / "j")
    assert is_onecomp_job(d)
    (d / "state.json").write_text("")  # damaged state: the job.yaml still says it is a job
    assert is_onecomp_job(d)
    (d / "job.yaml").write_text("model: other\n")  # not a job configuration (no output)
    assert not is_onecomp_job(d)
    (d / "state.json").write_text(json.dumps({"version": "0", "job": "x", "stages": []}))
    assert is_onecomp_job(d)


def test_a_file_named_job_yaml_is_not_enough(tmp_path) -> None:
    (tmp_path / "job.yaml").write_text("name: my own job\n")
    (tmp_path / "state.json").write_text('{"mine": 1}')
    assert not is_onecomp_job(tmp_path)


def test_only_the_job_entries_are_set_aside_and_removed(tmp_path) -> None:
    d = _job(tmp_path / "j")
    (d / "notes.txt").write_text("keep")
    assert foreign_entries(d) == ["notes.txt"]
    set_aside_job(d)
    assert sorted(p.name for p in d.iterdir()) == [REPLACED, "notes.txt"]
    assert foreign_entries(d) == ["notes.txt"]
    discard_replaced(d)
    assert [p.name for p in d.iterdir()] == ["notes.txt"]


def test_a_refused_job_gives_the_replaced_one_back(tmp_path) -> None:
    d = _job(tmp_path / "j")
    (d / "notes.txt").write_text("keep")
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    set_aside_job(d)
    (d / "job.yaml").write_text("the new job's")
    (d / "logs").mkdir()
    restore_replaced(d)
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before
    assert (d / "job.yaml").read_text().startswith("model: smollm2-135m")
