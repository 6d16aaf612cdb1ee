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


def streamed(model: transformers.PreTrainedModel, dtype: torch.dtype = torch.float32):
    """The runtime's view of a model in memory (the layer-wise stage reads weights through it)."""
    from onecomp.runtime.skeleton import StreamedModel

    return StreamedModel.from_model(model, torch.device("cpu"), dtype)


def fake_quantize(model: torch.nn.Module, packed: dict, formats: dict) -> torch.nn.Module:
    """Put each quantized layer's dequantized weight into ``model`` (in place): the
    model the pivot computes, as plain linears."""
    for name, tensors in packed.items():
        linear = model.get_submodule(name)
        module = formats[name].make_module(linear.in_features, linear.out_features, bias=False)
        module.load_state_dict(tensors, strict=False)
        linear.weight.data = module.dequantize().to(linear.weight.dtype)
    return model


@pytest.fixture
def tiny_llama() -> transformers.PreTrainedModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_smollm_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random llama that speaks the SmolLM2 tokenizer, saved in bf16 (needs the real model's files)."""
    from onecomp.models.resolve import resolve_model

    d = tmp_path_factory.mktemp("tiny") / "model"
    src = resolve_model("smollm2-135m").path
    tok = transformers.AutoTokenizer.from_pretrained(src)
    model = tiny_model("llama", layers=4)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.config.dtype = torch.bfloat16
    model.to(torch.bfloat16).save_pretrained(d)
    tok.save_pretrained(d)
    return d
