from __future__ import annotations

import time

import pytest

from onecomp.errors import OneCompError
from onecomp.models.resolve import list_aliases, resolve_model
from tests.conftest import tiny_model


def test_local_directory(tmp_path) -> None:
    tiny_model("llama").save_pretrained(tmp_path / "m")
    r = resolve_model(str(tmp_path / "m"))
    assert r.source == "local" and (r.path / "config.json").is_file()


def test_directory_without_config(tmp_path) -> None:
    with pytest.raises(OneCompError, match="not a model directory"):
        resolve_model(str(tmp_path))


def test_directory_with_only_pickles_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(OneCompError, match="never loads pickled"):
        resolve_model(str(tmp_path))


def test_missing_gguf(tmp_path) -> None:
    with pytest.raises(OneCompError, match="does not exist"):
        resolve_model(str(tmp_path / "x.gguf"))


def test_unknown_spec_lists_aliases() -> None:
    with pytest.raises(OneCompError, match="smollm2-135m"):
        resolve_model("definitely-not-a-model")
    assert "smollm2-135m" in list_aliases()


def test_hub_id_offline_fails_within_seconds(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(OneCompError, match="no access to the Hugging Face hub"):
        resolve_model("someorg/some-model-not-cached")
    assert time.perf_counter() - t0 < 10
