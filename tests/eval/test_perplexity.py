"""Perplexity computed one window's logits at a time equals the causal LM's own
logits scored whole, on every supported architecture (Gemma's soft cap included)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from onecomp.eval.perplexity import perplexity
from tests.conftest import TINY_ARCHS, tiny_model


def _reference(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="mean")
    return math.exp(float(nll))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_windowed_head_matches_the_models_logits(arch):
    model = tiny_model(arch)
    if arch == "gemma3_text":
        model.config.final_logit_softcapping = 2.0  # a cap that bites on random logits
    ids = torch.randint(3, 128, (5, 24), generator=torch.Generator().manual_seed(1))
    got = perplexity(model, ids, batch_size=2)
    assert got["tokens"] == 5 * 23 and got["windows"] == 5
    assert got["ppl"] == pytest.approx(_reference(model, ids), rel=1e-5)


def test_soft_cap_is_applied():
    model = tiny_model("gemma3_text")
    ids = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    model.config.final_logit_softcapping = None
    uncapped = perplexity(model, ids)["ppl"]
    model.config.final_logit_softcapping = 0.5
    capped = perplexity(model, ids)["ppl"]
    assert capped == pytest.approx(_reference(model, ids), rel=1e-5)
    assert abs(capped - uncapped) > 1e-3 * uncapped


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_streamed_block_by_block_matches_the_whole_model(arch):
    """The original's perplexity read one block at a time from its files is the
    whole model's, on every architecture (tied heads, sliding windows, Gemma's cap)."""
    from onecomp.eval.perplexity import streamed_perplexity
    from onecomp.models.adapters import adapter_for
    from tests.conftest import streamed

    model = tiny_model(arch, layers=3)
    if arch == "gemma3_text":
        model.config.final_logit_softcapping = 2.0
    ids = torch.randint(3, 128, (5, 24), generator=torch.Generator().manual_seed(3))
    whole = perplexity(model, ids, batch_size=2)
    blocks: list[int] = []
    got = streamed_perplexity(streamed(model), adapter_for(model.config.model_type), ids, batch_size=2, on_block=blocks.append)
    assert len(blocks) == 3 and got["tokens"] == whole["tokens"] and got["windows"] == 5
    assert got["ppl"] == pytest.approx(whole["ppl"], rel=1e-5)
