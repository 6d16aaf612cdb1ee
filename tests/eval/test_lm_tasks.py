from __future__ import annotations

import pytest

from onecomp.eval.builtin_tasks import BUILTIN_TASKS, write_builtin_tasks
from onecomp.eval.lm_tasks import _task_manager


def test_task_manager_sees_a_task_written_after_another_was_indexed(tmp_path):
    first, second = list(BUILTIN_TASKS)[:2]
    write_builtin_tasks(tmp_path, [first])
    assert first in _task_manager(str(tmp_path), False).all_tasks
    write_builtin_tasks(tmp_path, [second])  # a later eval asks for another built-in task in the same process
    assert {first, second} <= set(_task_manager(str(tmp_path), False).all_tasks)


def test_task_manager_is_reused_while_the_configs_stay_the_same(tmp_path):
    write_builtin_tasks(tmp_path)
    assert _task_manager(str(tmp_path), False) is _task_manager(str(tmp_path), False)


class _ManagerWithoutData:
    """Knows arc_easy, but its dataset cannot be loaded (as offline with an empty cache)."""

    all_tasks = ["arc_easy"]

    def load(self, names: list[str]) -> None:
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)\n  and a long story")


def test_standard_task_without_its_dataset_is_one_line(monkeypatch):
    from onecomp.errors import OneCompError
    from onecomp.eval import lm_tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(lm_tasks, "_task_manager", lambda include, standard: _ManagerWithoutData())
    with pytest.raises(OneCompError) as err:
        lm_tasks.check_tasks(["arc_easy"])
    assert "task arc_easy: its dataset is not in the local cache" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.real  # borrows the SmolLM2 tokenizer
def test_compress_with_an_unloadable_task_makes_no_job_directory(tiny_smollm_dir, tmp_path, monkeypatch, capsys):
    from onecomp.eval import lm_tasks
    from tests.test_cli import assert_one_line_error, run_cli

    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(lm_tasks, "_task_manager", lambda include, standard: _ManagerWithoutData())
    out = tmp_path / "job"
    code, text = run_cli(["compress", str(tiny_smollm_dir), "-o", str(out), "--eval", "builtin,arc_easy"], capsys)
    assert_one_line_error(code, text, "task arc_easy: its dataset is not in the local cache")
    assert len(text.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # indexes lm-eval's thousands of task files (tens of seconds)
def test_offline_standard_task_really_fails_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    out = tmp_path / "job"
    proc = subprocess.run(
        [sys.executable, "-m", "onecomp.cli", "compress", "smollm2-135m", "-o", str(out), "--eval", "arc_easy"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1 and "task arc_easy" in text
    assert not out.exists()
