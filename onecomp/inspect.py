"""Model profile and memory estimate, computed from the config alone (meta
device), so a job is checked against the machine before any weight is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import init_empty_weights
from torch import nn

from onecomp.checkpoint import read_config, storage_dtype
from onecomp.models.adapters import ADAPTERS, ArchAdapter

_RUNTIME_BASELINE = 700 * 2**20  # interpreter + libraries (~0.4 GiB measured) plus allocator slack and load-time copies


@dataclass
class LinearInfo:
    name: str
    out_features: int
    in_features: int

    @property
    def params(self) -> int:
        return self.out_features * self.in_features


@dataclass
class ModelProfile:
    model_type: str
    architecture: str
    num_blocks: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    tied_head: bool
    dtype: str
    total_params: int
    linears: list[LinearInfo] = field(default_factory=list)
    supported: bool = True

    @property
    def block_linear_params(self) -> int:
        return sum(li.params for li in self.linears)

    @property
    def size_bytes(self) -> int:
        return self.total_params * torch.tensor([], dtype=getattr(torch, self.dtype)).element_size()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_bytes"] = self.size_bytes
        d["block_linear_params"] = self.block_linear_params
        return d


def _config_from_dir(path: Path) -> transformers.PretrainedConfig:
    raw = read_config(path)
    raw.pop("quantization_config", None)
    return transformers.AutoConfig.for_model(**raw)


def profile_model(path: Path) -> ModelProfile:
    config = _config_from_dir(path)
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config)
    adapter: ArchAdapter | None = ADAPTERS.get(config.model_type)
    linears: list[LinearInfo] = []
    if adapter is not None:
        for index in range(len(adapter.blocks(model))):
            prefix = adapter.block_prefix(index)
            for name in adapter.linear_names():
                mod = model.get_submodule(f"{prefix}.{name}")
                assert isinstance(mod, nn.Linear)
                linears.append(LinearInfo(f"{prefix}.{name}", mod.out_features, mod.in_features))
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False)) and head is not None
    params = {id(p): p.numel() for p in model.parameters()}
    total = sum(params.values()) - (head.weight.numel() if tied and id(head.weight) != id(emb.weight) else 0)
    return ModelProfile(
        model_type=config.model_type,
        architecture=(config.architectures or [type(model).__name__])[0],
        num_blocks=getattr(config, "num_hidden_layers", 0),
        hidden_size=getattr(config, "hidden_size", 0),
        intermediate_size=getattr(config, "intermediate_size", 0),
        vocab_size=getattr(config, "vocab_size", 0),
        tied_head=tied,
        dtype=str(storage_dtype(config)).removeprefix("torch."),
        total_params=total,
        linears=linears,
        supported=adapter is not None,
    )


@dataclass
class MemoryEstimate:
    host_peak_bytes: int
    device_peak_bytes: int
    parts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_compress_memory(
    profile: ModelProfile,
    nsamples: int,
    seqlen: int,
    batch_size: int,
    eval_seqlen: int,
    eval_batch: int,
    on_gpu: bool,
    num_heads: int = 0,
    blockwise_nsamples: int = 0,
    blockwise_batch: int = 2,
    global_batch: int = 0,
) -> MemoryEstimate:
    """Peak memory of the job's stages and evaluation, from shapes alone.

    Layer-wise: the model in float32, one calibration stream of hidden states,
    one block's working set (activations of a batch, Hessians, GPTQ's copies of
    the largest weight). Block-wise (when ``blockwise_nsamples``): teacher and
    student, five streams (quantized, original, targets, two candidate outputs)
    and one block's training activations. Global (when ``global_batch``): the
    student with its codes unpacked to float32, activations of every block kept
    for the backward pass, and one chunk of logits. Evaluation holds float32 logits.
    """
    f32 = 4
    weights = profile.total_params * f32
    stream = nsamples * seqlen * profile.hidden_size * f32
    max_in = max((li.in_features for li in profile.linears), default=profile.hidden_size)
    max_w = max((li.params for li in profile.linears), default=0)
    hessian = 4 * max_in * max_in * f32
    gptq = 4 * max_w * f32
    width = max(profile.intermediate_size, profile.hidden_size)
    acts = batch_size * seqlen * (4 * width + 6 * profile.hidden_size) * f32
    attn = batch_size * max(num_heads, 1) * seqlen * seqlen * f32
    block_work = hessian + gptq + acts + attn
    eval_logits = (eval_batch + 2) * eval_seqlen * profile.vocab_size * f32  # logits + one window's softmax
    parts = {
        "runtime": _RUNTIME_BASELINE,
        "weights_fp32": weights,
        "calibration_stream": stream,
        "block_working_set": block_work,
        "eval_logits": eval_logits,
    }
    quant_phase = weights + 2 * stream + block_work
    eval_phase = weights + eval_logits
    if blockwise_nsamples:
        bw_stream = blockwise_nsamples * seqlen * profile.hidden_size * f32
        bw_acts = 3 * blockwise_batch * seqlen * (4 * width + 6 * profile.hidden_size) * f32
        parts["blockwise"] = 2 * weights + 5 * bw_stream + bw_acts
        quant_phase = max(quant_phase, parts["blockwise"])
    if global_batch:
        qparams = sum(li.params for li in profile.linears)
        per_block = global_batch * seqlen * (4 * width + 8 * profile.hidden_size) * f32 + global_batch * max(num_heads, 1) * seqlen * seqlen * f32
        logits = 3 * global_batch * 128 * profile.vocab_size * f32
        parts["global"] = weights + qparams * f32 + profile.num_blocks * per_block + logits
        quant_phase = max(quant_phase, parts["global"])
    if on_gpu:
        host = _RUNTIME_BASELINE + weights + 2 * stream
        block_phase = block_work + 2 * batch_size * seqlen * profile.hidden_size * f32
        device = max(block_phase, weights + eval_logits)
    else:
        host = _RUNTIME_BASELINE + max(quant_phase, eval_phase)
        device = 0
    return MemoryEstimate(host_peak_bytes=int(host), device_peak_bytes=int(device), parts=parts)
