from __future__ import annotations

import pytest
import torch
import transformers

TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3")


def tiny_model(arch: str, hidden: int = 64, layers: int = 2, seed: int = 0) -> transformers.PreTrainedModel:
    """A random model of ``arch`` small enough for unit tests (tens of milliseconds)."""
    kw = dict(
        hidden_size=hidden,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "phi3":
        kw["pad_token_id"] = None
    if arch == "gemma3_text":
        kw.update(head_dim=16, sliding_window=8)
    config = transformers.AutoConfig.for_model(arch, **kw)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def tiny_llama() -> transformers.PreTrainedModel:
    return tiny_model("llama")
