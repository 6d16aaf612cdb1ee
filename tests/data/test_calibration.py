from __future__ import annotations

import json

import pytest
import torch

from onecomp.data import CalibrationSet, add_bos, build_calibration
from onecomp.data.corpus import split_of
from onecomp.data.sources import load_documents
from onecomp.errors import OneCompError


def test_add_bos_rule(tok_bos, tok_plain):
    assert add_bos(tok_bos) is True
    assert add_bos(tok_plain) is False


def test_add_bos_without_bos_token(tok_bos):
    class NoBos:
        bos_token_id = None

        def __call__(self, text):
            raise AssertionError("must not tokenize when there is no BOS token")

    assert add_bos(NoBos()) is False


def test_shapes_and_bos_placement(tok_bos, tok_plain):
    with_bos = build_calibration(tok_bos, nsamples=6, seqlen=64, seed=0)
    plain = build_calibration(tok_plain, nsamples=6, seqlen=64, seed=0)
    for calib in (with_bos, plain):
        assert isinstance(calib, CalibrationSet)
        assert calib.input_ids.shape == (6, 64) and calib.input_ids.dtype == torch.long
    bos_id = tok_bos.bos_token_id
    assert (with_bos.input_ids[:, 0] == bos_id).all()
    assert not (with_bos.input_ids[:, 1:] == bos_id).any()
    assert not (plain.input_ids == bos_id).any()
    assert with_bos.record["add_bos"] is True and plain.record["add_bos"] is False
    # Same tokenizer model, same shuffle: the BOS samples hold the same stream, 63 tokens per row.
    assert torch.equal(with_bos.input_ids[:, 1:].reshape(-1), plain.input_ids.reshape(-1)[: 6 * 63])


def test_windows_are_consecutive_stream_of_shuffled_calib_docs(tok_plain):
    calib = build_calibration(tok_plain, nsamples=3, seqlen=32, seed=5)
    samples = calib.record["samples"]
    assert [s["offset"] for s in samples] == [0, 32, 64]
    texts = dict(load_documents("builtin", "calib").documents)
    sep = tok_plain("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for doc_id in dict.fromkeys(d for s in samples for d in s["documents"]):
        assert split_of(doc_id) == "calib"
        stream += (sep if stream else []) + tok_plain(texts[doc_id], add_special_tokens=False)["input_ids"]
    assert calib.input_ids.reshape(-1).tolist() == stream[: 3 * 32]


def test_deterministic_per_seed_and_different_across_seeds(tok_plain):
    a = build_calibration(tok_plain, nsamples=4, seqlen=48, seed=1)
    b = build_calibration(tok_plain, nsamples=4, seqlen=48, seed=1)
    c = build_calibration(tok_plain, nsamples=4, seqlen=48, seed=2)
    assert torch.equal(a.input_ids, b.input_ids) and a.record == b.record
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.record["sha256"] != c.record["sha256"]


def test_record_is_json(tok_bos):
    calib = build_calibration(tok_bos, nsamples=2, seqlen=16, seed=3)
    record = json.loads(json.dumps(calib.record))
    for key, value in {"source": "builtin", "split": "calib", "seed": 3, "nsamples": 2, "seqlen": 16, "add_bos": True}.items():
        assert record[key] == value
    assert len(record["samples"]) == 2 and all(s["documents"] for s in record["samples"])
    assert len(record["sha256"]) == 64


def test_local_file_source(tmp_path, tok_plain):
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"Note {i}: the river flows past the old city." for i in range(80)), encoding="utf-8")
    calib = build_calibration(tok_plain, str(path), nsamples=2, seqlen=16)
    assert calib.input_ids.shape == (2, 16)
    assert calib.record["source"] == str(path.resolve())


def test_too_few_tokens(tmp_path, tok_plain):
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(f"Short note {i}." for i in range(30)), encoding="utf-8")
    with pytest.raises(OneCompError, match=r"has \d+ tokens in its calib split, but 100 samples x 512 tokens need 51200"):
        build_calibration(tok_plain, str(path), nsamples=100, seqlen=512)


@pytest.mark.parametrize(("kwargs", "message"), [({"nsamples": 0}, "nsamples must be"), ({"seqlen": 4}, "seqlen must be")])
def test_bad_sizes(tok_plain, kwargs, message):
    with pytest.raises(OneCompError, match=message):
        build_calibration(tok_plain, **kwargs)
