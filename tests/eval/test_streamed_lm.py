"""lm-eval tasks scored on a model streamed block by block give what lm-eval's
own HFLM gives on the whole model: the same requests (its tokenization and
truncation), the same log-likelihoods up to float rounding, the same answers."""

from __future__ import annotations

import pytest
import torch
import transformers

from onecomp.eval.builtin_tasks import BUILTIN_TASKS
from onecomp.eval.lm_tasks import hf_lm, run_tasks
from onecomp.eval.streamed_lm import _chunks, loglikelihoods, streamed_lm
from onecomp.models.adapters import adapter_for
from tests.conftest import streamed, tiny_model

pytestmark = pytest.mark.real  # borrows the SmolLM2 tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from onecomp.models.resolve import resolve_model

    return transformers.AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)


def _model(tokenizer, arch: str = "llama") -> transformers.PreTrainedModel:
    model = tiny_model(arch, layers=3)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model.float().eval()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_log_likelihoods_equal_the_whole_models(tokenizer, arch: str) -> None:
    model = _model(tokenizer, arch)
    whole = hf_lm(model, tokenizer, 4, torch.device("cpu"))
    pairs = [whole._encode_pair(c, x) for c, x in [("The cat sat on", " the mat"), ("Paris is the capital of", " France."),
                                                    ("One", " two three four five six"), ("A b c d e f g h", " i")]]
    expected = whole._loglikelihood_tokens([((str(i), ""), c, x) for i, (c, x) in enumerate(pairs)], disable_tqdm=True)
    got = loglikelihoods(streamed(model), adapter_for(arch), pairs, whole.max_length, batch_size=3)
    for (lp, greedy), (elp, egreedy) in zip(got, expected):
        assert lp == pytest.approx(elp, rel=1e-4, abs=1e-4) and greedy == egreedy
    # a small hidden-state budget scores the requests in several passes over the blocks, with the same result
    again = loglikelihoods(streamed(model), adapter_for(arch), pairs, whole.max_length, batch_size=1, hidden_budget=1)
    assert all(abs(a[0] - b[0]) < 1e-4 and a[1] == b[1] for a, b in zip(again, got))


def test_truncation_keeps_the_last_tokens(tokenizer) -> None:
    model = _model(tokenizer)
    whole = hf_lm(model, tokenizer, 2, torch.device("cpu"))
    pairs = [(list(range(5, 40)), [41, 42, 43])]
    (got,) = loglikelihoods(streamed(model), adapter_for("llama"), pairs, max_length=16, batch_size=2)
    whole._max_length = 16
    (expected,) = whole._loglikelihood_tokens([(("a", "b"), *pairs[0])], disable_tqdm=True)
    assert got[0] == pytest.approx(expected[0], abs=1e-4) and got[1] == expected[1]


def test_passes_hold_at_least_one_batch() -> None:
    assert _chunks([0, 1, 2, 3, 4], [10, 10, 5, 5, 5], 2, max_tokens=25) == [[[0, 1]], [[2, 3], [4]]]
    assert _chunks([0, 1], [10, 10], 1, max_tokens=1) == [[[0]], [[1]]]


def test_a_builtin_task_scores_the_same_streamed(tokenizer) -> None:
    model = _model(tokenizer)
    task = next(iter(BUILTIN_TASKS))
    whole, _, _ = run_tasks(hf_lm(model, tokenizer, 8, torch.device("cpu")), [task], limit=12)
    lm = streamed_lm(streamed(model), adapter_for("llama"), tokenizer, 8)
    got, _, protocol = run_tasks(lm, [task], limit=12)
    assert got == pytest.approx(whole, abs=1e-9)
    assert protocol[task]["items"] == 12
