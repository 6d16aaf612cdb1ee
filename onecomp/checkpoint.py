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
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from onecomp import __version__
from onecomp.errors import OneCompError
from onecomp.formats.base import FormatSpec, format_from_json
from onecomp.models.configs import auto_config, read_config
from onecomp.models.weights import check_weights
from onecomp.io import atomic_directory, atomic_write_json, save_safetensors
from onecomp.runtime.skeleton import StreamedModel
from onecomp.runtime.tensors import TORCH_TO_ST, TensorReader
from onecomp.runtime.writer import DEFAULT_SHARD_BYTES, PendingTensor, write_sharded

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
    with atomic_directory(Path(path)) as tmp:
        save_safetensors(state, tmp / WEIGHTS_FILE, {"format": "pt"})
        _write_pivot_files(tmp, model.config, formats, dtype, Path(source_dir), meta)
    return Path(path)


def _write_pivot_files(
    tmp: Path, config: transformers.PretrainedConfig, formats: dict[str, FormatSpec], dtype: torch.dtype, source_dir: Path, meta: dict[str, Any]
) -> None:
    """Everything of a pivot but its weights: config with quantization_config, tokenizer, onecomp.json."""
    data = config.to_dict()
    data["dtype"] = str(dtype).removeprefix("torch.")
    data["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "layers": {name: formats[name].to_json() for name in sorted(formats)},
    }
    (tmp / "config.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    copy_tokenizer_files(source_dir, tmp)
    atomic_write_json(tmp / META_FILE, {"onecomp_version": __version__, **meta})


PackedTensors = dict[str, dict[str, PendingTensor]]  # layer -> its packed tensors, produced when written


def _tied_head_key(model: StreamedModel) -> str | None:
    """The head's weight when the checkpoint stores it once, as the embeddings."""
    head = model.model.get_output_embeddings()
    if getattr(model.model.config, "tie_word_embeddings", False) and head is not None:
        return f"{model.module_name(head)}.weight"
    return None


def _write_streamed(
    path: Path, model: StreamedModel, pending: list[PendingTensor], formats: dict[str, FormatSpec],
    source_dir: Path, meta: dict[str, Any], dtype: torch.dtype, max_shard_bytes: int,
) -> Path:
    with atomic_directory(Path(path)) as tmp:
        write_sharded(tmp, pending, max_shard_bytes, {"format": "pt"})
        _write_pivot_files(tmp, model.model.config, formats, dtype, Path(source_dir), meta)
    return Path(path)


def write_streamed_pivot(
    path: Path,
    model: StreamedModel,
    packed: PackedTensors,
    formats: dict[str, FormatSpec],
    source_dir: Path,
    meta: dict[str, Any],
    dtype: torch.dtype,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write a pivot atomically, one tensor at a time: the quantized layers'
    packed tensors from ``packed``, every other tensor read from the model's own
    files and stored in ``dtype``; sharded with an index above ``max_shard_bytes``."""
    skip = {f"{name}.weight" for name in formats} | {_tied_head_key(model)}
    pending: list[PendingTensor] = []
    for key, t in model.model.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if key in skip:
            pending.extend(PendingTensor(f"{layer}.{k}", p.dtype, p.shape, p.produce) for k, p in packed.get(layer, {}).items())
            continue
        want = dtype if t.is_floating_point() else t.dtype
        pending.append(PendingTensor(key, want, tuple(t.shape), lambda key=key, want=want: model.read(key, want, "cpu")))
    missing = sorted(set(formats) - {p.name.rsplit(".", 1)[0] for p in pending})
    if missing:
        raise ValueError(f"no packed tensors for {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return _write_streamed(path, model, pending, formats, source_dir, meta, dtype, max_shard_bytes)


def write_refined_pivot(
    path: Path,
    model: StreamedModel,
    replaced: dict[str, PendingTensor],
    source_dir: Path,
    meta: dict[str, Any],
    dtype: torch.dtype,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write a pivot from a pivot's skeleton (:func:`open_pivot`) atomically,
    one tensor at a time: the tensors in ``replaced`` (full name -> the trained
    value), every other one read from the source pivot. Packed layers keep
    their tensors' dtypes (biases aside); every other float is stored in ``dtype``."""
    tied = _tied_head_key(model)
    pending: list[PendingTensor] = []
    for key, t in model.model.state_dict().items():
        if key == tied:
            continue
        keep = key.rsplit(".", 1)[0] in model.stored_dtype and not key.endswith(".bias")
        if key in replaced:
            p = replaced[key]
            want = p.dtype if keep or not p.dtype.is_floating_point else dtype
            pending.append(PendingTensor(key, want, p.shape, lambda p=p, want=want: p.produce().to(want)))
            continue
        stored = model.stored_dtype_of(key)
        want = stored if keep or not t.is_floating_point() or stored is None else dtype
        pending.append(PendingTensor(key, want, tuple(t.shape), lambda key=key, want=want: model.read(key, want, "cpu")))
    unknown = sorted(set(replaced) - {p.name for p in pending})
    if unknown:
        raise ValueError(f"{unknown[0]} is not a tensor of this model")
    return _write_streamed(path, model, pending, packed_layers(model.model), source_dir, meta, dtype, max_shard_bytes)


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


def _problems_line(where: str, problems: list[str]) -> OneCompError:
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return OneCompError(f"{where}: " + "; ".join(problems[:3]) + more)


def pivot_formats(qcfg: Any, path: Path) -> dict[str, FormatSpec]:
    """The per-layer formats a pivot's quantization_config declares, each one checked."""
    where = f"{Path(path) / 'config.json'} quantization_config"
    if not isinstance(qcfg, dict):
        raise OneCompError(f"{where} is not a mapping")
    if qcfg.get("quant_method") != QUANT_METHOD:
        raise OneCompError(f"{path}: quantization method {qcfg.get('quant_method')!r} is not onecomp's")
    version = qcfg.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise OneCompError(f"{where}: format_version {version!r}; this onecomp ({__version__}) reads version {FORMAT_VERSION}")
    layers = qcfg.get("layers")
    if not isinstance(layers, dict):
        raise OneCompError(f"{where} has no 'layers' mapping of layer name -> format")
    formats: dict[str, FormatSpec] = {}
    problems: list[str] = []
    for name, spec in layers.items():
        if not isinstance(spec, dict):
            problems.append(f"layer {name}: format {spec!r} is not a mapping with a 'format' key")
            continue
        try:
            formats[name] = format_from_json(spec)
        except ValidationError as exc:
            problems.append(f"layer {name}: " + "; ".join(_pydantic_message(e) for e in exc.errors()))
        except ValueError as exc:
            problems.append(f"layer {name}: {exc}")
    if problems:
        raise _problems_line(where, problems)
    return formats


def _pydantic_message(error: Any) -> str:
    loc = ".".join(str(x) for x in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _place_formats(model: nn.Module, formats: dict[str, FormatSpec], path: Path) -> None:
    """Replace each declared layer by its format's module; a layer the model does not have is refused."""
    problems = []
    for name, spec in formats.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            problems.append(f"layer {name} does not exist in this {model.config.model_type} model")
            continue
        if not isinstance(linear, nn.Linear):
            problems.append(f"layer {name} is not a linear layer")
            continue
        try:
            with torch.device("meta"):  # the tensors come from the checkpoint: allocate none here
                module = spec.make_module(linear.in_features, linear.out_features, linear.bias is not None)
        except ValueError as exc:
            problems.append(f"layer {name}: {exc}")
            continue
        model.set_submodule(name, module)
    if problems:
        raise _problems_line(f"{Path(path) / 'config.json'} quantization_config", problems)


def _check_tensors(model: nn.Module, headers: dict[Path, dict[str, Any]], formats: dict[str, FormatSpec], path: Path) -> None:
    """Every stored tensor the model has matches its shape (and, inside a packed
    layer, its dtype) before anything is loaded: a mismatch is one line naming
    the layer, not torch's dump of every tensor."""
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    packed = tuple(f"{name}." for name in formats)
    problems = []
    for header in headers.values():
        for key, entry in header.items():
            want = expected.get(key)
            if want is None:
                continue
            layer = key.rsplit(".", 1)[0]
            label = formats[layer].label() if layer in formats else None
            what = f"{layer}'s declared format {label}" if label else "the model"
            if tuple(entry["shape"]) != tuple(want.shape):
                problems.append(f"tensor {key} has shape {list(entry['shape'])}, {what} needs {list(want.shape)}")
            elif key.startswith(packed) and TORCH_TO_ST.get(want.dtype) not in (None, entry["dtype"]) and not want.is_floating_point():
                problems.append(f"tensor {key} is {entry['dtype']}, {what} needs {TORCH_TO_ST[want.dtype]}")
    if problems:
        raise _problems_line(f"{path}: its weights do not match its config.json", problems)


def _skeleton(path: Path, include_buffers: bool) -> tuple[transformers.PreTrainedModel, list[Path]]:
    """The model a checkpoint declares, without its weights, with every check that
    needs no tensor data done: config, formats, weight files, tensor shapes."""
    raw = read_config(path)
    qcfg = raw.pop("quantization_config", None)
    formats = pivot_formats(qcfg, path) if qcfg is not None else {}
    config = auto_config(raw, path)
    headers = check_weights(path)
    with init_empty_weights(include_buffers=include_buffers):
        model = transformers.AutoModelForCausalLM.from_config(config)
    _place_formats(model, formats, path)
    _check_tensors(model, headers, formats, path)
    return model, list(headers)


def open_pivot(path: str | Path, device: torch.device, dtype: torch.dtype) -> StreamedModel:
    """A pivot (or plain model directory) as a skeleton whose blocks are read
    from its files one at a time: packed layers stay packed in their stored
    dtypes, every other float tensor is read in ``dtype``."""
    path = Path(path)
    model, _ = _skeleton(path, include_buffers=False)
    return StreamedModel(TensorReader(path), model.eval(), device, dtype, str(path), frozenset(packed_layers(model)))


def check_checkpoint(path: str | Path) -> None:
    """Everything :func:`load` checks before reading tensor data, without
    allocating the model: a damaged pivot is refused before a job starts."""
    _skeleton(Path(path), include_buffers=True)


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> transformers.PreTrainedModel:
    """Load a pivot (or a plain safetensors model directory) as a transformers model.

    Quantized linears are replaced by their format's module, which computes from
    the packed tensors. ``dtype`` sets the compute dtype of the unquantized
    tensors (default: the checkpoint's storage dtype).
    """
    path = Path(path)
    model, weights = _skeleton(path, include_buffers=False)
    config = model.config
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
