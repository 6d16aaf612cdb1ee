"""Reading tensors one at a time and writing safetensors tensor by tensor:
checked against safetensors' own library and transformers, not our reader."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from onecomp.runtime.tensors import StateDictReader, TensorReader
from onecomp.runtime.writer import INDEX_FILE, PendingTensor, write_sharded
from tests.conftest import tiny_model

TENSORS = {
    "a": torch.randn(3, 5).bfloat16(),
    "b": torch.arange(7, dtype=torch.int32),
    "c": torch.tensor(2.5),
    "d": torch.zeros(0, 4),
    "e": torch.ones(10, dtype=torch.bool),
    "f": torch.randint(0, 255, (33,), dtype=torch.uint8),
    "g": torch.randn(4, 4, dtype=torch.float16),
}


def _pending(tensors: dict[str, torch.Tensor]) -> list[PendingTensor]:
    return [PendingTensor(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()]


@pytest.mark.parametrize("max_bytes", [40, 10**9])
def test_written_files_load_in_safetensors(tmp_path, max_bytes: int) -> None:
    files = write_sharded(tmp_path, _pending(TENSORS), max_bytes, {"format": "pt"})
    assert (len(files) > 1) == (max_bytes == 40)
    assert (tmp_path / INDEX_FILE).is_file() == (len(files) > 1)
    got: dict[str, torch.Tensor] = {}
    for f in files:
        got.update(load_file(str(f)))
    assert set(got) == set(TENSORS) and all(torch.equal(got[k], v) for k, v in TENSORS.items())
    if len(files) > 1:
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert set(index["weight_map"]) == set(TENSORS)
        assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in TENSORS.values())


def test_reader_reads_what_safetensors_wrote(tmp_path) -> None:
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    reader = TensorReader(tmp_path)
    for k, v in TENSORS.items():
        assert torch.equal(reader.get(k), v)
    assert reader.get("a", dtype=torch.float32).dtype == torch.float32
    assert reader.get("b", dtype=torch.float32).dtype == torch.int32  # only float tensors are cast
    assert reader.nbytes() == sum(v.numel() * v.element_size() for v in TENSORS.values())


def test_a_produced_tensor_must_match_its_declaration(tmp_path) -> None:
    bad = [PendingTensor("x", torch.float32, (2, 2), lambda: torch.zeros(2, 3))]
    with pytest.raises(ValueError, match="declared"):
        write_sharded(tmp_path, bad)


def test_sharded_model_loads_in_transformers(tmp_path) -> None:
    model = tiny_model("llama")
    state = model.state_dict()
    state.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    model.config.save_pretrained(tmp_path)
    write_sharded(tmp_path, _pending({k: v.contiguous() for k, v in state.items()}), 20_000)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    ids = torch.randint(3, 100, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert TensorReader(tmp_path).nbytes() == sum(v.numel() * v.element_size() for v in state.values())


def test_state_dict_reader_never_hands_out_the_model_tensor() -> None:
    t = torch.ones(3)
    got = StateDictReader({"t": t}).get("t")
    got.add_(1)
    assert torch.equal(t, torch.ones(3))
