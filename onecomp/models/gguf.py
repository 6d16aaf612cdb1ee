"""GGUF files -> plain bf16 safetensors directories, converted once and cached.

transformers dequantizes a GGUF on load; the loaded model keeps a
quantization_config that makes ``save_pretrained`` refuse, so the weights are
copied into a model built from a clean config and saved from there.  Before the
directory is renamed into place, it is reloaded and checked against the GGUF
model (same logits up to bf16 rounding, same token ids, same chat template):
a cache entry that exists is a correct one.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from transformers.utils import logging as hf_logging

from onecomp.errors import OneCompError
from onecomp.io import atomic_directory
from onecomp.reporter import NullReporter, Reporter

log = logging.getLogger("onecomp")

SAVE_DTYPE = torch.bfloat16
# Checked after conversion: mixed case, digits, punctuation and non-ASCII text.
SAMPLE_TEXT = "Hello world! The quick brown fox jumps over the lazy dog in 2024: naïve café, 東京."
# Logits of the reloaded directory vs the GGUF model with bf16-rounded weights: the
# same computation on the same numbers, so only reduction-order noise is allowed.
LOGITS_ATOL = 1e-3


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars for the duration; the caller logs progress."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _tensor_progress(reporter: Reporter) -> Iterator[None]:
    """transformers reads GGUF tensors under a tqdm bar of its own, which
    disable_progress_bar() does not reach: show our progress in its place."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # nothing of transformers' own to replace
        yield
        return

    def ours(iterable, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - tqdm's signature
        items = list(iterable)
        with reporter.task("reading GGUF tensors", len(items)) as task:
            for item in items:
                yield item
                task.advance(1)

    gguf_utils.tqdm = ours
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _load_gguf(gguf_path: Path) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Dequantized fp32 model and tokenizer; unreadable files become a one-line error."""
    if not gguf_path.is_file():
        raise OneCompError(f"GGUF file {gguf_path} does not exist")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            gguf_file=gguf_path.name,
            dtype=torch.float32,
            quantization_config=transformers.GgufConfig(dequantize=True),
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, OSError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise OneCompError(f"cannot read GGUF file {gguf_path}: {exc}") from None
    return model.eval(), tokenizer


def _clean_copy(loaded: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """A bf16 copy of ``loaded`` without quantization_config, so save_pretrained accepts it."""
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = SAVE_DTYPE
    with torch.device("meta"):
        clean = transformers.AutoModelForCausalLM.from_config(config)
    state = {k: v.detach().to(SAVE_DTYPE) for k, v in loaded.state_dict().items()}
    clean.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take them from loaded.
    for name, _ in list(clean.named_buffers()):
        owner_name, _, attr = name.rpartition(".")
        owner = clean.get_submodule(owner_name)
        if owner._buffers[attr].is_meta:
            owner._buffers[attr] = loaded.get_buffer(name).detach().clone()
    if getattr(config, "tie_word_embeddings", False):
        clean.tie_weights()
    left = [n for n, t in [*clean.named_parameters(), *clean.named_buffers()] if t.is_meta]
    if left:
        raise OneCompError(f"GGUF conversion left tensors without values: {', '.join(left[:5])}")
    clean.generation_config = copy.deepcopy(loaded.generation_config)
    return clean.eval()


def _check_logits(loaded: transformers.PreTrainedModel, saved_dir: Path) -> None:
    """The saved directory must compute what the GGUF model computes with bf16-rounded weights.

    Rounds ``loaded``'s parameters in place (it is discarded afterwards) to keep peak
    memory at two fp32 copies.
    """
    with torch.no_grad():
        for param in loaded.parameters():
            param.copy_(param.to(SAVE_DTYPE))
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.float32, use_safetensors=True).eval()
        vocab = int(loaded.config.vocab_size)
        ids = torch.arange(16).mul(7919).remainder(vocab).unsqueeze(0)
        want = loaded(ids).logits
        got = reloaded(ids).logits
    diff = (want - got).abs().max().item()
    if not diff <= LOGITS_ATOL:
        raise OneCompError(f"GGUF conversion check failed: saved model's logits differ by {diff:.3g}")


def _check_tokenizer(original: transformers.PreTrainedTokenizerBase, saved_dir: Path) -> None:
    """The saved tokenizer must give the same ids and keep the chat template."""
    reloaded = transformers.AutoTokenizer.from_pretrained(saved_dir)
    if reloaded(SAMPLE_TEXT).input_ids != original(SAMPLE_TEXT).input_ids:
        raise OneCompError("GGUF conversion check failed: the saved tokenizer gives different token ids")
    if reloaded.chat_template != original.chat_template:
        raise OneCompError("GGUF conversion check failed: the chat template was not kept")


def convert_gguf(gguf_path: Path, out_dir: Path, reporter: Reporter | None = None) -> Path:
    """Convert ``gguf_path`` into a bf16 safetensors model directory at ``out_dir``.

    Written atomically and verified before the rename; ``out_dir/.complete`` names
    the source file. Returns ``out_dir``.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reporter = reporter or NullReporter()
    start = time.perf_counter()
    reporter.info(f"converting {gguf_path.name} to a bf16 safetensors model (the first time only; cached in {out_dir})")
    with _quiet_transformers(), _tensor_progress(reporter):
        loaded, tokenizer = _load_gguf(gguf_path)
        clean = _clean_copy(loaded)
        with atomic_directory(out_dir) as tmp:
            clean.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del clean
            _check_logits(loaded, tmp)
            _check_tokenizer(tokenizer, tmp)
            (tmp / ".complete").write_text(gguf_path.name + "\n")
    log.info("converted %s into %s in %.1f s", gguf_path.name, out_dir, time.perf_counter() - start)
    return out_dir
