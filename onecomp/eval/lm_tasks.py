"""lm-eval tasks on an in-memory model, with the protocol recorded.

The quantized model is scored as it is in memory (our own modules), through
lm-eval's Python API, so the numbers are lm-eval's own and comparable with
other tools'. The built-in tasks are written next to the cache; standard task
names pass straight through to lm-eval, which needs the hub for their data.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from onecomp.data.sources import hub_unreachable
from onecomp.errors import OneCompError
from onecomp.eval.builtin_tasks import BUILTIN_TASKS, VERSION, write_builtin_tasks
from onecomp.eval.headline import headline_metric
from onecomp.paths import cache_dir
from onecomp.reporter import NullReporter, Reporter

BOOTSTRAP_ITERS = 1000  # stderr of means is analytic in lm-eval; this only bounds other metrics


def tasks_dir() -> Path:
    return cache_dir() / "lm-eval-tasks" / f"v{VERSION}"


def _task_manager(include: str, standard: bool):  # noqa: ANN202 - lm_eval.tasks.TaskManager
    """A manager that knows every task config now under ``include``: one indexed before a task was written would miss it."""
    configs = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in Path(include).glob("*/*.yaml")))
    return _indexed_task_manager(include, standard, configs)


@lru_cache(maxsize=4)
def _indexed_task_manager(include: str, standard: bool, configs: tuple[tuple[str, int], ...]):  # noqa: ANN202
    """Indexing lm-eval's thousands of task files takes tens of seconds: only when a standard task is asked for, and once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=standard, verbosity="ERROR")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_tasks(names: list[str]) -> dict[str, str]:
    """Write the built-in tasks, and refuse unknown names or hub tasks without a hub, in one line."""
    digests = write_builtin_tasks(tasks_dir(), [n for n in names if n in BUILTIN_TASKS])
    standard = [n for n in names if n not in BUILTIN_TASKS]
    if not standard:
        return digests
    manager = _task_manager(str(tasks_dir()), True)
    unknown = [n for n in standard if n not in manager.all_tasks]
    if unknown:
        raise OneCompError(
            f"unknown lm-eval task(s) {', '.join(unknown)}: use the built-in {', '.join(BUILTIN_TASKS)} or a task name lm-eval knows (lm-eval ls tasks)"
        )
    if not _offline() and (problem := hub_unreachable()):
        raise OneCompError(
            f"task(s) {', '.join(standard)} need their datasets from the Hugging Face hub, which is unreachable ({problem}); "
            f"use the built-in tasks {', '.join(BUILTIN_TASKS)}, or set HF_DATASETS_OFFLINE=1 if the datasets are cached"
        )
    for name in standard:
        if name not in _LOADABLE:  # once per process: a job checks its tasks again before every model it scores
            _check_task_loads(manager, name)
            _LOADABLE.add(name)
    return digests


_LOADABLE: set[str] = set()


def _check_task_loads(manager: Any, name: str) -> None:
    """Build the task as lm-eval will (its dataset from the cache, or downloaded now), so a missing
    dataset fails here, in one line, before any job directory exists, not as a traceback after hours."""
    import datasets

    bars_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    for noisy in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        manager.load([name])
    except Exception as exc:  # datasets and lm-eval raise many unrelated types; the user needs one line either way
        first = (str(exc).strip().splitlines() or [""])[0]
        where = "is not in the local cache (offline mode)" if _offline() else "could not be loaded"
        raise OneCompError(
            f"task {name}: its dataset {where}: {type(exc).__name__}: {first}; "
            f"use the built-in tasks {', '.join(BUILTIN_TASKS)}, or run once with hub access to cache it"
        ) from None
    finally:
        if bars_on:
            datasets.enable_progress_bars()


class _Bar:
    """Stands in for lm-eval's tqdm bars: the request bars advance our own progress bar, the rest are silent."""

    def __init__(self, iterable: Any = None, *args: Any, total: int | None = None, desc: str | None = None, **kwargs: Any) -> None:
        self.iterable = iterable
        self.counts = bool(desc and desc.startswith("Running"))
        if self.counts and _Bar.on_total and total:
            _Bar.on_total(int(total))

    on_total: Callable[[int], None] | None = None
    on_advance: Callable[[int], None] | None = None

    def __iter__(self):  # noqa: ANN204
        yield from self.iterable

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        if self.counts and _Bar.on_advance:
            _Bar.on_advance(int(n))

    def close(self) -> None:
        return None

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextmanager
def _lm_eval_progress(on_total: Callable[[int], None], on_advance: Callable[[int], None]) -> Iterator[None]:
    """Route lm-eval's request progress to ours and silence its other bars, the datasets bars, and its
    `git describe` of the working directory (which prints "fatal: not a git repository" outside one)."""
    import datasets
    import lm_eval.evaluator as evaluator
    import lm_eval.api.model as api_model
    import lm_eval.api.task as api_task
    import lm_eval.models.huggingface as hf

    modules = [m for m in (api_model, api_task, hf) if hasattr(m, "tqdm")]
    saved = {m: m.tqdm for m in modules}
    bars_on = datasets.is_progress_bar_enabled()
    git_hash = evaluator.get_git_commit_hash
    _Bar.on_total, _Bar.on_advance = on_total, on_advance
    for m in modules:
        m.tqdm = _Bar
    evaluator.get_git_commit_hash = lambda: None
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for m, bar in saved.items():
            m.tqdm = bar
        _Bar.on_total = _Bar.on_advance = None
        evaluator.get_git_commit_hash = git_hash
        if bars_on:
            datasets.enable_progress_bars()


def quiet_lm_eval() -> None:
    for noisy in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _metric_names(task: str) -> list[str]:
    return ["acc", "acc_norm"] if task in BUILTIN_TASKS else []


def hf_lm(model: torch.nn.Module, tokenizer: Any, batch_size: int, device: torch.device) -> Any:
    """lm-eval's own model class over a model in memory."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device), dtype=torch.float32)


def run_tasks(
    lm: Any,
    names: list[str],
    limit: int | None,
    reporter: Reporter | None = None,
    label: str = "the model",
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """(metrics, stderr, protocol) of lm-eval model ``lm`` (:func:`hf_lm`, or
    :func:`onecomp.eval.streamed_lm.streamed_lm`), with keys like
    ``acc_onecomp_wiki_title``; one progress bar per task, over its requests."""
    digests = check_tasks(names)
    import lm_eval

    quiet_lm_eval()
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    protocol: dict[str, Any] = {}
    reporter = reporter or NullReporter()
    for name in names:  # one at a time: a progress bar per task
        with reporter.task(f"task {name} of {label}", None) as bar, _lm_eval_progress(bar.set_total, bar.advance):
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[name], task_manager=_task_manager(str(tasks_dir()), name not in BUILTIN_TASKS), limit=limit, num_fewshot=0,
                bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False, verbosity="ERROR",
            )
        if out is None:
            raise OneCompError(f"lm-eval returned no results for task {name!r}")
        res = out["results"][name]
        keys = _metric_names(name) or sorted({k.split(",")[0] for k in res if "," in k and "stderr" not in k})
        for key in keys:
            if f"{key},none" in res:
                metrics[f"{key}_{name}"] = float(res[f"{key},none"])
                err = res.get(f"{key}_stderr,none")
                if isinstance(err, (int, float)):
                    stderr[f"{key}_{name}"] = float(err)
        counts = out.get("n-samples", {}).get(name, {})  # a task group reports its subtasks' counts instead
        protocol[name] = {
            "items": counts.get("effective"),
            "items_total": counts.get("original"),
            "limit": limit,
            "num_fewshot": 0,
            "version": out.get("versions", {}).get(name),
            "lm_eval": importlib.metadata.version("lm_eval"),
            "add_bos_token": bool(getattr(lm, "add_bos_token", False)),
            "builtin": name in BUILTIN_TASKS,
            "headline": headline_metric(name, keys),
            **({"data_sha256": digests[name]} if name in digests else {}),
        }
    return metrics, stderr, protocol
