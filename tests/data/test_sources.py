from __future__ import annotations

import json
import time

import pytest

from onecomp.data import load_documents
from onecomp.data.corpus import split_of
from onecomp.data.sources import hub_unreachable
from onecomp.errors import OneCompError


def _paragraphs(n: int) -> str:
    return "\n\n".join(f"Paragraph number {i} talks about the river and the city." for i in range(n)) + "\n"


def test_builtin_default():
    src = load_documents("builtin", "eval")
    assert src.name == "builtin"
    assert src.documents and all(split_of(title) == "eval" for title, _ in src.documents)


def test_txt_paragraphs_split_by_id(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First para\nstill first.\n\n  \n\nSecond para.\n\n\n" + _paragraphs(60), encoding="utf-8")
    calib, evaluation = load_documents(str(path), "calib"), load_documents(str(path), "eval")
    assert calib.name == evaluation.name == str(path.resolve())
    ids = {d for d, _ in calib.documents} | {d for d, _ in evaluation.documents}
    assert ids == {f"para-{i}" for i in range(1, 63)}
    assert not {d for d, _ in calib.documents} & {d for d, _ in evaluation.documents}
    everything = dict(calib.documents + evaluation.documents)
    assert everything["para-1"] == "First para\nstill first."
    assert everything["para-2"] == "Second para."
    assert all(split_of(d) == "eval" for d, _ in evaluation.documents)


def test_jsonl_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"Document {i} about history.", "meta": i}) for i in range(50)]
    lines.insert(3, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    calib, evaluation = load_documents(str(path), "calib"), load_documents(str(path), "eval")
    ids = [d for d, _ in calib.documents + evaluation.documents]
    assert len(ids) == 50 and "line-4" not in ids and "line-51" in ids
    assert dict(calib.documents + evaluation.documents)["line-1"] == "Document 0 about history."


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", "\n \n\n", "is empty"),
        ("empty.jsonl", "", "is empty"),
        ("notext.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', r"notext.jsonl:2: .*\"text\" field"),
        ("bad.jsonl", '{"text": "ok"}\n{oops\n', r"bad.jsonl:2: invalid JSON"),
        ("latin1.txt", b"caf\xe9 au lait", "not valid UTF-8"),
        ("short.txt", "one paragraph only", "none falls in the eval split"),
    ],
)
def test_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert split_of("para-1") == "calib"  # 'short.txt' relies on its only paragraph going to calib
    with pytest.raises(OneCompError, match=message) as info:
        load_documents(str(path), "eval")
    assert name in str(info.value)


def test_directory_named_like_a_file(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(OneCompError, match="not a regular file"):
        load_documents(str(tmp_path / "dir.txt"), "calib")


def test_pydoc_fallback():
    calib, evaluation = load_documents("pydoc", "calib"), load_documents("pydoc", "eval")
    assert calib.documents and evaluation.documents
    assert not {t for t, _ in calib.documents} & {t for t, _ in evaluation.documents}


@pytest.mark.parametrize("spec", ["wiki", "corpus.csv", ""])
def test_unknown_spec(spec):
    with pytest.raises(OneCompError, match="'builtin', 'pydoc', 'c4', 'wikitext2'"):
        load_documents(spec, "calib")


def test_unknown_split():
    with pytest.raises(OneCompError, match="unknown split"):
        load_documents("builtin", "validation")


@pytest.mark.parametrize("spec", ["c4", "wikitext2"])
def test_hub_fails_fast_when_unreachable(monkeypatch, spec):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # discard port: connection refused at once
    start = time.monotonic()
    with pytest.raises(OneCompError, match=f"cannot load hub dataset '{spec}': no access to the Hugging Face hub"):
        load_documents(spec, "eval")
    assert time.monotonic() - start < 10


def test_hub_fails_fast_in_this_environment():
    """On a machine without hub access (like CI here) the real probe must fail within seconds."""
    if hub_unreachable() is None:
        pytest.skip("the hub is reachable from this machine")
    start = time.monotonic()
    with pytest.raises(OneCompError, match="cannot load hub dataset 'c4'"):
        load_documents("c4", "calib")
    assert time.monotonic() - start < 10


def test_hub_offline_mode_uses_cache_or_fails_fast(monkeypatch):
    """With HF_HUB_OFFLINE the probe is skipped (a cached copy may exist); a cache miss is one clear line."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(OneCompError, match="cannot load hub dataset 'wikitext2' .*not in the local cache"):
        load_documents("wikitext2", "eval")
    assert time.monotonic() - start < 10
