"""Offline multiple-choice tasks generated from the held-out Wikipedia leads.

Standard lm-eval tasks fetch their data from the hub, which these machines may
not reach. These tasks are built from the built-in corpus's held-out articles (never
seen by calibration), deterministically: every choice comes from a SHA-256
ordering, not a random generator, so the items are the same on every machine
and in every run. They are written as ordinary lm-eval task configs (YAML plus
a JSONL file, absolute paths) that lm-eval loads like any other task.

- ``onecomp_wiki_continuation``: the first sentence of a lead; choose its true
  next sentence among four (the others are second sentences of other leads).
- ``onecomp_wiki_title``: a lead's first sentence with its title masked; choose
  the title among four (the others are titles of other leads).

Contexts are kept to one sentence because every choice is scored as its own
sequence: on a 2-core CPU the two tasks cost about three perplexity evaluations.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from onecomp.data.corpus import held_out_articles
from onecomp.io import atomic_write_text

VERSION = 1
ITEMS = 300
CHOICES = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Item:
    context: str
    choices: list[str]
    label: int

    def to_json(self) -> dict:
        return {"context": self.context, "choices": self.choices, "label": self.label}


def _rank(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def sentences(text: str) -> list[str]:
    """Sentence split good enough for encyclopedia leads (abbreviations may split early; both tasks tolerate it)."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _distractors(task: str, key: str, answer: str, pool: list[str], n: int) -> list[str]:
    """``n`` pool entries unlike the answer, in a hash order that depends on the item."""
    seen = {answer.lower()}
    out: list[str] = []
    for cand in sorted(pool, key=lambda c: _rank(task, key, c)):
        if cand.lower() not in seen:
            seen.add(cand.lower())
            out.append(cand)
            if len(out) == n:
                break
    return out


def _items(task: str, rows: list[tuple[str, str, str]], n: int) -> list[Item]:
    """Items from (key, context, answer) rows: the first ``n`` keys in hash order, distractors
    drawn from every row's answer, the answer's position from a hash (balanced and fixed)."""
    rows = sorted(rows, key=lambda r: _rank(task, r[0]))
    pool = [answer for _, _, answer in rows]
    items = []
    for key, context, answer in rows[:n]:
        label = int(_rank(task, key, "label")[:8], 16) % CHOICES
        choices = _distractors(task, key, answer, pool, CHOICES - 1)
        choices.insert(label, answer)
        items.append(Item(context, choices, label))
    return items


def _continuation_rows() -> list[tuple[str, str, str]]:
    rows = []
    for title, text in held_out_articles():
        sent = sentences(text)
        if len(sent) >= 2 and 40 <= len(sent[0]) <= 200 and 30 <= len(sent[1]) <= 160:
            rows.append((title, sent[0], sent[1]))
    return rows


def continuation_items(n: int = ITEMS) -> list[Item]:
    return _items("onecomp_wiki_continuation", _continuation_rows(), n)


def _mask_title(title: str, text: str) -> str:
    """Hide the title (and its bracketed qualifier, e.g. "Mercury (planet)") so the answer is not copied."""
    bare = re.sub(r"\s*\(.*?\)\s*$", "", title).strip()
    masked = text
    for name in sorted({title, bare} - {""}, key=len, reverse=True):  # the longer first; a fixed order
        masked = re.sub(re.escape(name), "___", masked, flags=re.IGNORECASE)
    return masked


def _title_rows() -> list[tuple[str, str, str]]:
    rows = []
    for title, text in held_out_articles():
        sent = sentences(text)
        passage = _mask_title(title, sent[0]) if sent else ""
        if "___" in passage and 40 <= len(passage) <= 220 and len(title) <= 60:
            rows.append((title, f"Passage: {passage}\nTitle of the article:", title))
    return rows


def title_items(n: int = ITEMS) -> list[Item]:
    return _items("onecomp_wiki_title", _title_rows(), n)


def item_titles(n: int = ITEMS) -> frozenset[str]:
    """Titles of the articles the built-in tasks ask about (their items; wrong choices may come from any held-out article)."""
    tasks = (("onecomp_wiki_continuation", _continuation_rows()), ("onecomp_wiki_title", _title_rows()))
    return frozenset(key for task, rows in tasks for key, _, _ in sorted(rows, key=lambda r: _rank(task, r[0]))[:n])


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    description: str
    make: Callable[[], list[Item]]
    primary: str  # the metric quoted for this task in tables


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    t.name: t
    for t in (
        BuiltinTask("onecomp_wiki_continuation", "choose a lead's true second sentence among 4", continuation_items, "acc_norm"),
        BuiltinTask("onecomp_wiki_title", "choose the title of a masked first sentence among 4", title_items, "acc"),
    )
}


def _task_config(name: str, data_file: Path, description: str) -> dict:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": float(VERSION), "description": description},
    }


@functools.lru_cache(maxsize=None)
def _jsonl(name: str) -> str:
    """A task's items as JSONL, built once per process (each job checks its tasks before every model it scores)."""
    return "".join(json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in BUILTIN_TASKS[name].make())


def write_builtin_tasks(root: Path, names: list[str] | None = None) -> dict[str, str]:
    """Write the task configs and data under ``root`` (absolute paths inside); returns each task's data SHA-256."""
    root = Path(root).resolve()
    digests = {}
    for name in names if names is not None else list(BUILTIN_TASKS):
        task = BUILTIN_TASKS[name]
        lines = _jsonl(name)
        digest = hashlib.sha256(lines.encode("utf-8")).hexdigest()
        data = root / name / f"{name}-v{VERSION}.jsonl"
        if not data.is_file() or hashlib.sha256(data.read_bytes()).hexdigest() != digest:
            atomic_write_text(data, lines)
        config, config_file = yaml.safe_dump(_task_config(name, data, task.description), sort_keys=False), root / name / f"{name}.yaml"
        if not config_file.is_file() or config_file.read_text(encoding="utf-8") != config:
            atomic_write_text(config_file, config)
        digests[name] = digest
    return digests
