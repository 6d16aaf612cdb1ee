from __future__ import annotations

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
