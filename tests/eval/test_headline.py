"""One fixed headline metric per task: the same choice in every table, whatever else a run reports."""

from __future__ import annotations

from onecomp.eval.builtin_tasks import BUILTIN_TASKS
from onecomp.eval.headline import headline_map, headline_metric, headline_metrics, short_name, task_of


def test_builtin_tasks_have_their_declared_metric_whatever_is_reported():
    for name, task in BUILTIN_TASKS.items():
        assert headline_metric(name, ["acc", "acc_norm"]) == task.primary == headline_metric(name, [])
    assert headline_metric("onecomp_wiki_title") == "acc" and headline_metric("onecomp_wiki_continuation") == "acc_norm"


def test_standard_tasks_prefer_acc_norm_then_acc_then_the_first_name():
    assert headline_metric("arc_easy", ["acc", "acc_norm"]) == "acc_norm"
    assert headline_metric("winogrande", ["acc"]) == "acc"
    assert headline_metric("gsm8k", ["exact_match", "bleu"]) == "bleu"
    assert headline_metric("nothing", []) is None


def test_keys_map_to_tasks_and_one_column_per_task():
    keys = ["ppl_builtin", "acc_onecomp_wiki_title", "acc_norm_onecomp_wiki_title", "acc_arc_easy", "acc_norm_arc_easy", "ppl_pydoc"]
    assert task_of("acc_norm_arc_easy") == "arc_easy" and task_of("ppl_builtin") is None
    assert task_of("exact_match_gsm8k", ["gsm8k"]) == "gsm8k"
    assert headline_map(keys) == {"onecomp_wiki_title": "acc", "arc_easy": "acc_norm"}
    assert headline_metrics(keys) == ["ppl_builtin", "ppl_pydoc", "acc_onecomp_wiki_title", "acc_norm_arc_easy"]
    assert headline_metrics(list(reversed(keys))) == ["ppl_pydoc", "ppl_builtin", "acc_norm_arc_easy", "acc_onecomp_wiki_title"]
    assert short_name("acc_norm_arc_easy") == "arc easy (acc_norm)" and short_name("acc_onecomp_wiki_title") == "wiki title (acc)"
