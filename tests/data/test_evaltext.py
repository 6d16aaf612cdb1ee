from __future__ import annotations

import json

import pytest
import torch

from onecomp.data import EvalWindows, eval_windows
from onecomp.data.sources import load_documents
from onecomp.errors import OneCompError


def _eval_stream(tokenizer, n_tokens):
    """The reference protocol: eval documents in order, joined by '\\n\\n', tokenized piecewise."""
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for i, (_, text) in enumerate(load_documents("builtin", "eval").documents):
        if i:
            ids += sep
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    return ids[:n_tokens]


def test_plain_windows_follow_the_stream(tok_plain):
    windows = eval_windows(tok_plain, seqlen=32, max_windows=5)
    assert isinstance(windows, EvalWindows) and windows.bos is False
    assert windows.input_ids.shape == (5, 32) and windows.input_ids.dtype == torch.long
    assert windows.input_ids.reshape(-1).tolist() == _eval_stream(tok_plain, 5 * 32)


def test_bos_windows(tok_bos):
    windows = eval_windows(tok_bos, seqlen=32, max_windows=5)
    assert windows.bos is True and windows.input_ids.shape == (5, 32)
    assert (windows.input_ids[:, 0] == tok_bos.bos_token_id).all()
    assert windows.input_ids[:, 1:].reshape(-1).tolist() == _eval_stream(tok_bos, 5 * 31)


def test_fixed_protocol_and_record(tok_bos):
    a = eval_windows(tok_bos, seqlen=16, max_windows=3)
    b = eval_windows(tok_bos, seqlen=16, max_windows=3)
    assert torch.equal(a.input_ids, b.input_ids)
    record = json.loads(json.dumps(a.record))
    for key, value in {"source": "builtin", "split": "eval", "seqlen": 16, "nwindows": 3, "bos": True, "total_tokens": 48}.items():
        assert record[key] == value
    assert record["sha256"] == b.record["sha256"] and len(record["sha256"]) == 64


def test_all_windows_and_partial_window_dropped(tmp_path, tok_plain):
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"Entry {i} on the history of the city."}) for i in range(200)), encoding="utf-8")
    docs = load_documents(str(path), "eval").documents
    sep = tok_plain("\n\n", add_special_tokens=False)["input_ids"]
    total = sum(len(tok_plain(t, add_special_tokens=False)["input_ids"]) for _, t in docs) + len(sep) * (len(docs) - 1)
    windows = eval_windows(tok_plain, str(path), seqlen=8, max_windows=None)
    assert windows.input_ids.shape == (total // 8, 8)
    assert windows.record["nwindows"] == total // 8


def test_zero_windows(tmp_path, tok_plain):
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps({"text": "Hi."}) for _ in range(30)), encoding="utf-8")
    with pytest.raises(OneCompError, match="fewer than one window of 512"):
        eval_windows(tok_plain, str(path), seqlen=512)


@pytest.mark.parametrize(("kwargs", "message"), [({"seqlen": 2}, "seqlen must be"), ({"max_windows": 0}, "max_windows must be")])
def test_bad_sizes(tok_plain, kwargs, message):
    with pytest.raises(OneCompError, match=message):
        eval_windows(tok_plain, **kwargs)


# sha256 of the default held-out windows (512 tokens x 64) computed on main before the selection split existed:
# the perplexities already reported stay comparable.
_HELD_OUT_BEFORE = {False: "a8b59b58b3ba7cb1cfcb62162a9da231e6446c39622b4ff9e4174ff25bca12fb", True: "2357394a6db7ecd6a9d165b351ee214ac472db11d781ae87c97e635e0e1dbae0"}


@pytest.mark.parametrize("bos", [False, True])
def test_held_out_windows_are_unchanged_by_the_selection_split(bos, tok_plain, tok_bos):
    windows = eval_windows(tok_bos if bos else tok_plain, "builtin", 512, 64)
    assert windows.record["sha256"] == _HELD_OUT_BEFORE[bos]


@pytest.mark.real
def test_smollm2_held_out_windows_are_unchanged_by_the_selection_split():
    import transformers

    from onecomp.models.resolve import resolve_model

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)
    record = eval_windows(tok, "builtin", 512, 64).record
    assert record["sha256"] == "932dec4899a23bc363c2ebbec4847300bdaae07b515c44a754af63d54afd9b3c" and record["documents"] == 300


def test_selection_windows_are_fixed_and_come_from_the_selection_split(tok_plain):
    from onecomp.data.evaltext import SELECT_SEQLEN, SELECT_WINDOWS, selection_windows

    a, b = selection_windows(tok_plain), selection_windows(tok_plain)
    assert a.input_ids.shape == (SELECT_WINDOWS, SELECT_SEQLEN) and torch.equal(a.input_ids, b.input_ids)
    assert a.record["split"] == "select" and a.record["sha256"] != eval_windows(tok_plain, "builtin", 512, 16).record["sha256"]
    first = load_documents("builtin", "select").documents[0][1]
    assert a.input_ids[0].tolist() == tok_plain(first, add_special_tokens=False)["input_ids"][:SELECT_SEQLEN]


def test_only_the_builtin_text_has_a_selection_split():
    with pytest.raises(OneCompError, match="only the built-in text has a selection split"):
        load_documents("pydoc", "select")
