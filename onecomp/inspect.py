"""Model profile and memory estimate, computed from the config alone (meta
device), so a job is checked against the machine before any weight is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onecomp.checkpoint import storage_dtype
from onecomp.models.configs import model_config
from onecomp.runtime.skeleton import empty_model
from onecomp.formats.base import TrainingFootprint
from onecomp.hardware import rss_bytes
from onecomp.models.adapters import ADAPTERS, ArchAdapter

# What a job adds to its process beyond its models, streams and evaluation
# buffers (the process's own resident memory when the job starts is measured,
# not assumed: ``baseline_bytes``): the tokenizer, the built-in texts and
# calibration tokens, torch's thread pools and kernel caches after the first
# forwards, and heap pages of small tensors the allocator keeps. Measured on a
# tiny llama with SmolLM2's tokenizer (/proc/self/status around each phase,
# 2026-12-07): 0.036 GiB from the job's start to its first evaluation, 0.04
# more by the end of that evaluation, 0.06 across the stage and the pivot's
# load; 0.14 GiB in all.
_JOB_RUNTIME = 160 * 2**20
# lm-eval and what it imports (datasets, pandas, evaluate...), loaded when the
# first task is scored, plus the task data: 120 MiB measured for the imports
# after `import onecomp.pipeline`, 0.095 GiB of growth across a tiny job's two
# built-in tasks.
_TASKS_RUNTIME = 128 * 2**20
# Bytes per token and decoder block that autograd keeps for the backward pass of
# a bfloat16-autocast forward, per unit of hidden width and of intermediate
# width: about four float32 copies of the residual stream (norm inputs and
# outputs), six bfloat16 ones (linear inputs, q/k/v/attention output) and four
# bfloat16 copies of the MLP's intermediate activations. On SmolLM2 this gives
# 33 KB; saved-tensor hooks measured 30.7 KB.
_ACT_BYTES_PER_HIDDEN = 36
_ACT_BYTES_PER_INTERMEDIATE = 8
# Positions per vocabulary-projection chunk of the global stage (its default).
_GLOBAL_CHUNK = 128


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


def profile_model(path: Path) -> ModelProfile:
    config = model_config(path)
    model = empty_model(config)
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


def _group_input_width(profile: ModelProfile) -> int:
    """Features per token of the inputs of one block's linear groups (one input per group)."""
    from onecomp.models.adapters import ADAPTERS

    adapter = ADAPTERS.get(profile.model_type)
    first = {li.name.split(".", 3)[-1]: li.in_features for li in profile.linears if li.name.startswith(f"{adapter.block_prefix(0)}.")} if adapter else {}
    return sum(first.get(group[0], 0) for group in adapter.groups) if adapter else 0


def layerwise_peak(
    profile: ModelProfile,
    nsamples: int,
    seqlen: int,
    batch_size: int,
    compute_bytes: int,
    qep: bool,
    qep_cache_limit: float,
    residual: bool = False,
) -> int:
    """Bytes the streaming layer-wise stage holds at its peak, beyond the process's own.

    Only one block is present (two with QEP: the original beside the one being
    quantized), so depth does not count; what does is the calibration streams
    (one per path, in the compute dtype), the embedding while the first
    block's inputs are captured, and the widest layer's working set: its
    statistics (H, and QEP's C and R in float32), the batch temporaries of
    their accumulation (float32 inputs, the low-precision product: freed, but
    the allocator keeps them resident), then the larger of QEP's float64 solve
    (one factor and the weight's float64 copies) and GPTQ's (a permuted H and
    its inverse factor, four float32 copies of the weight). On
    Qwen2.5-Coder-1.5B (128 x 512, GPTQ+QEP) this gives 2.47 GiB for a
    measured 2.59 GiB above the process's start (2026-12-07).
    """
    f32, f64 = 4, 8
    hidden, cb = profile.hidden_size, compute_bytes
    nblocks = max(profile.num_blocks, 1)
    block_params = sum(li.params for li in profile.linears) // nblocks + 4 * hidden
    max_in = max((li.in_features for li in profile.linears), default=hidden)
    max_w = max((li.params for li in profile.linears), default=0)
    max_out = max((li.out_features for li in profile.linears), default=hidden)
    stream = nsamples * seqlen * hidden * cb
    streams = (2 if qep else 1) * stream
    capture = profile.vocab_size * hidden * cb + streams
    blocks = (2 if qep else 1) * block_params * cb
    stats = max_in * max_in * f32 * (2 if qep else 1) + (max_out * max_in * f32 if qep and residual else 0)
    accumulate = 3 * batch_size * seqlen * max_in * f32
    gptq = 2 * max_in * max_in * f32 + 4 * max_w * f32
    solve = max_in * max_in * f64 + 3 * max_w * f64 if qep else 0
    cache = nsamples * seqlen * _group_input_width(profile) * cb if qep else 0
    block_phase = streams + blocks + (cache if cache <= qep_cache_limit else 0) + stats + accumulate + max(gptq, solve)
    return max(capture, block_phase)


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
    bits: int = 8,
    measure_grad_samples: int = 0,
    row_grad_samples: int = 0,
    qep: bool = False,
    qep_cache_limit: float = 0.0,
    compute_bytes: int = 2,
    training: TrainingFootprint | None = None,
    tasks: bool = True,
    baseline_bytes: int | None = None,
) -> MemoryEstimate:
    """Peak memory of the job's stages and evaluations, from shapes alone.

    The peak is set by an evaluation, not by a stage: memory a stage frees in
    tensors below glibc's mmap threshold (32 MiB; every block weight and
    activation of a small model) stays in the process's heap, so the next
    evaluation's logits (one mmap of batch x seqlen x vocabulary float32) land on
    top of what the largest stage before it left resident. Measured on
    SmolLM2-135M: 1.41 GiB resident outside live tensors before the evaluation
    after layer-wise GPTQ, 2.29 GiB after global distillation, whose evaluation
    then peaked at 3.31 GiB. So (CPU)::

        host = runtime + job_runtime + max(reference_eval, reference_residue + max(stage parts) + eval)

    Each part of ``parts``, in bytes:

    - ``runtime``: the process's resident memory when the job starts,
      ``baseline_bytes`` (None: this process's, measured now). It holds the
      interpreter and torch/transformers (0.30 GiB right after the imports),
      the preflight's texts and model profile (0.47 GiB when a command-line job
      starts), and whatever a calling program holds: a job run inside a test
      run or a notebook peaks that much higher, and its peak counts it.
    - ``job_runtime``: what the job adds outside its models and buffers
      (tokenizer, texts, calibration tokens, thread pools, allocator-kept small
      tensors), and lm-eval with its imports and data when ``tasks`` are
      scored; measured constants.
    - ``reference_eval``: the original model in float32 and the evaluation
      buffers; runs before any stage (when its score is not cached), so nothing
      of the stages is resident yet.
    - ``reference_residue``: what scoring the original leaves resident under
      the stages: its float32 weights, freed into the heap, are not all reused
      (the demo with the original scored in the job peaked 0.48 GiB above the
      same job with its scores cached, 3.09 vs 2.61 GiB; an RTN job run in a
      test process 2.73 GiB against 2.13 estimated without this part). Counted
      whenever the job evaluates: the estimate does not know whether the
      original's scores are cached, so a job whose scores are errs high by it.
    - ``layerwise``: :func:`layerwise_peak` (one block at a time, streamed).
    - ``blockwise`` (when ``blockwise_nsamples``): the float32 teacher, the
      student as loaded (float32 embedding, packed codes), five streams
      (quantized inputs, original inputs, targets, outputs before and after
      training) and one block's training activations for three batches.
    - ``global`` (when ``global_batch``): the larger of its two phases. Teacher
      caching: the float32 teacher and one row's logits in bfloat16 and float32
      plus their log-softmax. Training (the teacher is gone; the allocator
      reuses its pages): the training views and twice one step's saved tensors
      (what the views' backward keeps, and every block's activations for the
      batch). ``training`` sums each layer's format's
      :meth:`~onecomp.formats.base.FormatSpec.training_footprint`; without it,
      integer views (``codes - zero`` in bfloat16, and one rebuilt bfloat16
      weight per step: 2 + 2 bytes per quantized weight). The allocator does
      not hand a step's freed tensors back to the next step in full (measured on SmolLM2: the loop settles 1.87x above one
      step's 0.67 GiB of new saved tensors), plus the checkpointed
      vocabulary-projection chunk (logits, log-softmax and gradient).
    - ``measure`` (when ``measure_grad_samples``, a mixed-precision job that
      measures): the float32 model, and the larger of its two passes. The
      gradient pass keeps one batch's input of every block, one block's saved
      activations and the checkpointed vocabulary chunk (logits, log-softmax and
      gradient); the measuring pass holds two calibration streams, the four
      Hessians and the stacked candidates of the largest weight's sampled rows.
    - ``row_gradients`` (when ``row_grad_samples``: a layer-wise stage whose
      method weights rows by loss gradients): the float32 model and that same
      gradient pass.
    - ``eval``: the pivot as ``load`` builds it (float32 embedding and head, the
      quantized layers' codes at ``bits`` per weight; 8 is an upper bound) and
      the logits of one evaluation batch plus one window's log-softmax.
      ``eval_batch=0`` means a job without evaluation: both evaluation parts are 0.

    Tensors above the mmap threshold are counted as resident too, so on models
    whose single weights exceed 32 MiB the stage parts are upper bounds. On a
    GPU the host holds the float32 model and the calibration streams; the device
    holds one block's working set or the evaluated model with its logits.
    """
    f32, bf16 = 4, 2
    hidden, vocab = profile.hidden_size, profile.vocab_size
    heads = max(num_heads, 1)
    width = max(profile.intermediate_size, hidden)
    embed = vocab * hidden * (1 if profile.tied_head else 2)
    qparams = sum(li.params for li in profile.linears)
    body = max(profile.total_params - embed, qparams)
    weights = profile.total_params * f32
    stream = nsamples * seqlen * hidden * f32
    max_in = max((li.in_features for li in profile.linears), default=hidden)
    max_w = max((li.params for li in profile.linears), default=0)
    hessian = 4 * max_in * max_in * f32
    gptq = 4 * max_w * f32
    acts = batch_size * seqlen * (4 * width + 6 * hidden) * f32
    attn = batch_size * heads * seqlen * seqlen * f32
    block_work = hessian + gptq + acts + attn
    act_per_token = _ACT_BYTES_PER_HIDDEN * hidden + _ACT_BYTES_PER_INTERMEDIATE * profile.intermediate_size
    evaluates = eval_batch > 0 and eval_seqlen > 0
    pivot_model = embed * f32 + (qparams * bits + 7) // 8 + (body - qparams) * f32  # as `load` builds it
    eval_model = pivot_model if evaluates else 0
    eval_buffers = (eval_batch + 1) * eval_seqlen * vocab * f32 if evaluates else 0  # the batch's logits + one window's log-softmax
    runtime = rss_bytes() if baseline_bytes is None else baseline_bytes
    parts = {
        "runtime": runtime,
        "job_runtime": _JOB_RUNTIME + (_TASKS_RUNTIME if tasks and evaluates else 0),
        "reference_eval": weights + eval_buffers if evaluates else 0,
        "reference_residue": weights if evaluates else 0,
        "layerwise": layerwise_peak(profile, nsamples, seqlen, batch_size, compute_bytes, qep, qep_cache_limit),
    }
    train = training or TrainingFootprint(view=qparams * bf16, saved=qparams * bf16)
    blocks = max(profile.num_blocks, 1)
    if blockwise_nsamples:
        bw_stream = blockwise_nsamples * seqlen * hidden * f32
        bw_acts = 3 * blockwise_batch * seqlen * act_per_token
        bw_views = (train.view + 3 * (train.saved + blockwise_batch * seqlen * train.saved_per_token)) // blocks
        parts["blockwise"] = weights + pivot_model + 5 * bw_stream + bw_acts + bw_views
    if global_batch:
        teacher = weights + seqlen * vocab * (bf16 + 2 * f32)
        tokens = global_batch * seqlen
        saved_step = train.saved + tokens * train.saved_per_token + profile.num_blocks * tokens * act_per_token
        head_chunk = 3 * global_batch * _GLOBAL_CHUNK * vocab * f32
        parts["global"] = max(teacher, train.view + 2 * saved_step + head_chunk)

    def grad_pass(samples: int) -> int:
        gbatch = min(batch_size, samples)
        return (
            profile.num_blocks * gbatch * seqlen * hidden * f32
            + gbatch * seqlen * act_per_token
            + 3 * gbatch * _GLOBAL_CHUNK * vocab * f32
        )

    if row_grad_samples:
        parts["row_gradients"] = weights + grad_pass(row_grad_samples)
    if measure_grad_samples:
        stacked = 16 * 8 * max(128 * max_in, max_w // 8) * f32  # 16 candidates x (weights, grids, codes, errors)
        measure_pass = 2 * stream + hessian + stacked + acts + attn
        parts["measure"] = weights + max(grad_pass(measure_grad_samples), measure_pass)
    parts["eval"] = eval_model + eval_buffers
    stages = max(v for k, v in parts.items() if k in ("layerwise", "blockwise", "global", "measure", "row_gradients"))
    if on_gpu:
        host = runtime + parts["job_runtime"] + weights + (3 if qep else 2) * stream
        block_phase = block_work + 2 * batch_size * seqlen * hidden * f32
        device = max(block_phase, weights + eval_buffers)
    else:
        host = runtime + parts["job_runtime"] + max(parts["reference_eval"], parts["reference_residue"] + stages + parts["eval"])
        device = 0
    return MemoryEstimate(host_peak_bytes=int(host), device_peak_bytes=int(device), parts=parts)
