from __future__ import annotations

import json

import yaml

from onecomp.data.corpus import builtin_split
from onecomp.eval import builtin_tasks
from onecomp.eval.builtin_tasks import BUILTIN_TASKS, CHOICES, ITEMS, write_builtin_tasks


def test_items_are_deterministic_and_well_formed():
    eval_titles = {title for title, _ in builtin_split("eval")}
    for task in BUILTIN_TASKS.values():
        first, second = task.make(), task.make()
        assert [i.to_json() for i in first] == [i.to_json() for i in second]
        assert len(first) == ITEMS
        for item in first:
            assert len(item.choices) == CHOICES and len(set(c.lower() for c in item.choices)) == CHOICES
            assert 0 <= item.label < CHOICES and item.context
        labels = [i.label for i in first]
        assert min(labels.count(k) for k in range(CHOICES)) > ITEMS // 8  # answers spread over positions
    titles = BUILTIN_TASKS["onecomp_wiki_title"].make()
    assert all(item.choices[item.label] in eval_titles for item in titles)  # held-out articles only
    assert all(item.choices[item.label].lower() not in item.context.lower() for item in titles)  # the answer is masked


def test_continuation_answer_is_the_true_next_sentence():
    leads = {builtin_tasks.sentences(text)[0]: builtin_tasks.sentences(text) for _, text in builtin_split("eval")}
    for item in BUILTIN_TASKS["onecomp_wiki_continuation"].make()[:50]:
        assert leads[item.context][1] == item.choices[item.label]


def test_task_files_are_lm_eval_configs_with_absolute_paths(tmp_path):
    digests = write_builtin_tasks(tmp_path / "rel" / ".." / "tasks")
    for name in BUILTIN_TASKS:
        cfg = yaml.safe_load((tmp_path / "tasks" / name / f"{name}.yaml").read_text())
        data = cfg["dataset_kwargs"]["data_files"]["test"]
        assert cfg["task"] == name and cfg["output_type"] == "multiple_choice"
        assert data.startswith("/") and ".." not in data
        rows = [json.loads(line) for line in open(data)]
        assert len(rows) == ITEMS and set(rows[0]) == {"context", "choices", "label"}
        assert len(digests[name]) == 64
    assert write_builtin_tasks(tmp_path / "again") == digests  # same content anywhere
