"""One headline metric per task, the same in every table.

lm-eval reports several metrics per multiple-choice task (``acc``, ``acc_norm``);
quoting one task by ``acc`` in one table and by ``acc_norm`` in another made the
same run read as 53% and 69%. Each task therefore has one fixed metric, named
next to the number wherever it is shown; every metric stays in results.json.
"""

from __future__ import annotations

from typing import Iterable

from onecomp.eval.builtin_tasks import BUILTIN_TASKS

_PREFERRED = ("acc_norm", "acc")  # lm-eval's convention for multiple choice: length-normalized first


def headline_metric(task: str, reported: Iterable[str] = ()) -> str | None:
    """The metric quoted for ``task``: a built-in task's declared one; for a standard task
    ``acc_norm`` when it reports it, else ``acc``, else its first metric by name.

    ``reported`` holds the task's metric names without the task suffix (``{"acc", "acc_norm"}``);
    a task reports the same set on every run, so the choice is fixed per task.
    """
    if task in BUILTIN_TASKS:
        return BUILTIN_TASKS[task].primary
    names = set(reported)
    return next((m for m in _PREFERRED if m in names), min(names) if names else None)


def task_of(key: str, tasks: Iterable[str] = ()) -> str | None:
    """The task a metric key (``acc_norm_arc_easy``) belongs to; None for a perplexity."""
    if key.startswith("ppl_"):
        return None
    known = sorted(set(tasks) | set(BUILTIN_TASKS), key=len, reverse=True)  # the longest name first
    for task in known:
        if key.endswith("_" + task):
            return task
    for prefix in _PREFERRED:
        if key.startswith(prefix + "_"):
            return key.removeprefix(prefix + "_")
    return None


def headline_map(keys: Iterable[str], tasks: Iterable[str] = ()) -> dict[str, str]:
    """{task: its headline metric} for the tasks among ``keys``, in the order they appear."""
    unique = list(dict.fromkeys(keys))
    known = list(tasks)
    out: dict[str, str] = {}
    for key in unique:
        task = task_of(key, known)
        if task is None or task in out:
            continue
        reported = [k.removesuffix("_" + task) for k in unique if task_of(k, known) == task]
        metric = headline_metric(task, reported)
        if metric is not None and f"{metric}_{task}" in unique:
            out[task] = metric
    return out


def headline_metrics(keys: Iterable[str], tasks: Iterable[str] = ()) -> list[str]:
    """Every perplexity, then one metric key per task: the columns of every table."""
    unique = list(dict.fromkeys(keys))
    return [k for k in unique if k.startswith("ppl_")] + [f"{m}_{t}" for t, m in headline_map(unique, tasks).items()]


def short_name(metric: str) -> str:
    """A narrow header that names the metric: "PPL builtin", "wiki title (acc)"."""
    if metric.startswith("ppl_"):
        return "PPL " + metric.removeprefix("ppl_")
    for kind in _PREFERRED:
        if metric.startswith(kind + "_"):
            return metric.removeprefix(kind + "_").removeprefix("onecomp_").replace("_", " ") + f" ({kind})"
    return metric
