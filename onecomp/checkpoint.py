"""Pivot checkpoints: a complete, deployable model directory, written atomically.

Layout: ``config.json`` (the model config plus a ``quantization_config`` naming
each quantized layer's format), ``model.safetensors`` (packed tensors for the
quantized linears, every other tensor in the model's storage dtype), the
tokenizer files, and ``onecomp.json`` (stage, plan hash, source, metrics).
Loading uses safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from torch import nn

from onecomp import __version__
from onecomp.errors import OneCompError
from onecomp.formats.base import FormatSpec, format_from_json
from onecomp.io import atomic_directory, atomic_write_json

QUANT_METHOD = "onecomp"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "onecomp.json"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def _as_dtype(value: Any) -> torch.dtype:
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) else torch.float32


def storage_dtype(config: transformers.PretrainedConfig | dict[str, Any]) -> torch.dtype:
    """The dtype a checkpoint stores its float tensors in, as its config declares."""
    if isinstance(config, dict):
        return _as_dtype(config.get("dtype") or config.get("torch_dtype"))
    return _as_dtype(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))


def _tied_head(model: nn.Module) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and emb is not None and head.weight is emb.weight


def packed_layers(model: nn.Module) -> dict[str, FormatSpec]:
    """Formats of the layers that are already packed modules inside ``model``."""
    return {name: mod.spec for name, mod in model.named_modules() if isinstance(getattr(mod, "spec", None), FormatSpec)}


def build_state_dict(
    model: nn.Module, packed: dict[str, dict[str, torch.Tensor]], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Packed tensors for quantized linears (given, or already inside ``model`` as
    packed modules, kept in their own dtypes); every other tensor cast to ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    skip = {f"{name}.weight" for name in packed}
    if _tied_head(model):
        skip.add("lm_head.weight")
    inside = tuple(f"{name}." for name in packed_layers(model))
    for key, tensor in model.state_dict().items():
        if key in skip:
            continue
        t = tensor.detach().cpu()
        keep = key.startswith(inside) and not key.endswith(".bias")
        out[key] = (t if keep or not t.is_floating_point() else t.to(dtype)).contiguous()
    for name, tensors in packed.items():
        for k, v in tensors.items():
            out[f"{name}.{k}"] = v.contiguous()
    return out


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for fname in _TOKENIZER_FILES:
        if (src / fname).is_file():
            shutil.copy2(src / fname, dst / fname)


def save_pivot(
    path: Path,
    model: transformers.PreTrainedModel,
    packed: dict[str, dict[str, torch.Tensor]] | None,
    formats: dict[str, FormatSpec] | None,
    source_dir: Path,
    meta: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a pivot to ``path`` atomically (temporary directory, then one rename).

    Unquantized tensors are stored in ``dtype`` (default: the source checkpoint's
    declared dtype, so a bf16 model stays bf16 even if it was computed in fp32).
    With ``packed`` None, the quantized layers are the packed modules inside ``model``.
    """
    if packed is None:
        packed, formats = {}, packed_layers(model)
    assert formats is not None
    if dtype is None:
        has_source_config = (Path(source_dir) / "config.json").is_file()
        dtype = storage_dtype(read_config(source_dir) if has_source_config else model.config)
    state = build_state_dict(model, packed, dtype)
    config = model.config.to_dict()
    config["dtype"] = str(dtype).removeprefix("torch.")
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "layers": {name: formats[name].to_json() for name in sorted(formats)},
    }
    with atomic_directory(Path(path)) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        copy_tokenizer_files(Path(source_dir), tmp)
        atomic_write_json(tmp / META_FILE, {"onecomp_version": __version__, **meta})
    return Path(path)


def read_config(path: Path) -> dict[str, Any]:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise OneCompError(f"{path} is not a model directory (no config.json)")
    return json.loads(cfg_file.read_text())


def _cast_plain_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast parameters and buffers of ordinary modules; packed modules keep their dtypes."""
    packed_modules = {m for m in model.modules() if hasattr(m, "spec")}
    for module in model.modules():
        if module in packed_modules:
            continue
        for key, p in list(module._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                module._parameters[key] = nn.Parameter(p.data.to(dtype), requires_grad=p.requires_grad)
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point() and key != "inv_freq":
                module._buffers[key] = b.to(dtype)


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> transformers.PreTrainedModel:
    """Load a pivot (or a plain safetensors model directory) as a transformers model.

    Quantized linears are replaced by their format's module, which computes from
    the packed tensors. ``dtype`` sets the compute dtype of the unquantized
    tensors (default: the checkpoint's storage dtype).
    """
    path = Path(path)
    raw = read_config(path)
    qcfg = raw.pop("quantization_config", None)
    if qcfg is not None and qcfg.get("quant_method") != QUANT_METHOD:
        raise OneCompError(f"{path}: quantization method {qcfg.get('quant_method')!r} is not onecomp's")
    config = transformers.AutoConfig.for_model(**raw)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise OneCompError(f"{path}: no .safetensors weights found (onecomp never loads pickled weights)")
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config)
    layers = (qcfg or {}).get("layers", {})
    for name, spec_json in layers.items():
        linear = model.get_submodule(name)
        spec = format_from_json(spec_json)
        model.set_submodule(name, spec.make_module(linear.in_features, linear.out_features, linear.bias is not None))
    state: dict[str, torch.Tensor] = {}
    for file in weights:
        state.update(load_file(str(file), device="cpu"))
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise OneCompError(f"{path}: unexpected tensors in checkpoint: {result.unexpected_keys[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if missing:
        raise OneCompError(f"{path}: checkpoint is missing tensors: {missing[:5]}")
    _cast_plain_floats(model, dtype or storage_dtype(config))
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()  # casting made new parameters; keep one shared tensor
    return model.to(device).eval()
