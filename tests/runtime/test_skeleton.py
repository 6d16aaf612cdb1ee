"""The skeleton: weights only while a module is loaded, the same logits as the
model loaded whole, tied heads, and copies that leave the skeleton alone."""

from __future__ import annotations

import pytest
import torch

from onecomp.runtime.skeleton import StreamedModel
from tests.conftest import TINY_ARCHS, tiny_model


def _saved(arch: str, tmp_path, tied: bool = False):
    model = tiny_model(arch)
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_loading_every_module_gives_the_models_logits(arch: str, tmp_path) -> None:
    model = _saved(arch, tmp_path)
    streamed = StreamedModel.open(tmp_path, torch.device("cpu"), torch.float32)
    assert all(p.is_meta for p in streamed.model.parameters())
    for name, _ in streamed.model.named_children():
        streamed.load(name)
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.float()(ids).logits
        got = streamed.model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_release_frees_and_copies_are_separate(tmp_path) -> None:
    _saved("llama", tmp_path)
    streamed = StreamedModel.open(tmp_path, torch.device("cpu"), torch.bfloat16)
    block = streamed.load("model.layers.0")
    assert not any(p.is_meta for p in block.parameters()) and block.self_attn.q_proj.weight.dtype == torch.bfloat16
    copy = streamed.load_copy("model.layers.1")
    assert all(p.is_meta for p in streamed.model.model.layers[1].parameters())
    assert not any(p.is_meta for p in copy.parameters())
    streamed.release("model.layers.0")
    assert all(p.is_meta for p in streamed.model.model.layers[0].parameters())


def test_a_tied_head_reads_the_embeddings(tmp_path) -> None:
    model = _saved("llama", tmp_path, tied=True)
    streamed = StreamedModel.open(tmp_path, torch.device("cpu"), torch.float32)
    assert "lm_head.weight" not in streamed.reader
    head = streamed.load("lm_head")
    assert torch.equal(head.weight, model.model.embed_tokens.weight.float())
