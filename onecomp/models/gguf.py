"""GGUF files -> plain bf16 safetensors directories, converted once and cached.

transformers dequantizes a GGUF on load; the loaded model keeps a
quantization_config that makes ``save_pretrained`` refuse, so the weights are
copied into a model built from a clean config and saved from there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers

from onecomp.errors import OneCompError
from onecomp.io import atomic_directory

log = logging.getLogger("onecomp")


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    gguf_path = Path(gguf_path)
    log.info("converting %s to safetensors (one time)", gguf_path.name)
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            gguf_file=gguf_path.name,
            dtype=torch.float32,
            quantization_config=transformers.GgufConfig(dequantize=True),
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise OneCompError(f"cannot read GGUF file {gguf_path}: {exc}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        clean = transformers.AutoModelForCausalLM.from_config(config)
    clean.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        clean.tie_weights()
    for name, buf in list(clean.named_buffers()):
        if buf.is_meta:
            owner = clean.get_submodule(name.rsplit(".", 1)[0])
            owner._buffers[name.rsplit(".", 1)[1]] = loaded.get_buffer(name)
    with atomic_directory(Path(out_dir)) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if loaded.generation_config is not None:
            loaded.generation_config.save_pretrained(tmp)
        (tmp / ".complete").write_text(gguf_path.name + "\n")
    return Path(out_dir)
