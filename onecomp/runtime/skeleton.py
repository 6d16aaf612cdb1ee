"""A model whose weights live on the meta device until a module is used.

:class:`StreamedModel` builds the architecture from config.json alone, then
reads one module's tensors (a decoder block, the embeddings, the head) from
the safetensors files onto the compute device when a stage needs it, and puts
them back on the meta device after, so host and device memory hold one block
at a time. Small buffers computed at construction (rotary frequencies) are
real from the start and moved to the device once.

A skeleton may hold packed modules (a pivot's quantized layers, placed by the
checkpoint reader): modules named in ``stored_dtype`` keep their tensors in the
dtypes they were stored in, as the packed format requires.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import transformers
from accelerate import init_empty_weights
from torch import nn

from onecomp.models.configs import model_config
from onecomp.runtime.tensors import StateDictReader, TensorReader

Reader = TensorReader | StateDictReader


def empty_model(config: transformers.PretrainedConfig) -> transformers.PreTrainedModel:
    """The model ``config`` declares, every weight on the meta device."""
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def _slots(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, bool]]:
    """(local name, owner, attribute, is_parameter) of every tensor in ``module``'s
    state dict: its parameters and persistent buffers."""
    for owner_name, owner in module.named_modules(remove_duplicate=False):
        for attr, p in owner._parameters.items():
            if p is not None:
                yield (f"{owner_name}.{attr}" if owner_name else attr), owner, attr, True
        for attr, b in owner._buffers.items():
            if b is not None and attr not in owner._non_persistent_buffers_set:
                yield (f"{owner_name}.{attr}" if owner_name else attr), owner, attr, False


class StreamedModel:
    """A skeleton on the meta device over a model directory's safetensors files."""

    def __init__(
        self,
        reader: Reader,
        skeleton: transformers.PreTrainedModel,
        device: torch.device,
        dtype: torch.dtype,
        where: str,
        stored_dtype: frozenset[str] = frozenset(),
    ) -> None:
        self.reader, self.where = reader, where
        self.model = skeleton
        self.device, self.dtype = device, dtype
        self.stored_dtype = stored_dtype
        self._aliases = self._tied_names()
        for owner in self.model.modules():  # rotary frequencies and the like: computed, never stored
            for attr, b in owner._buffers.items():
                if b is not None and not b.is_meta:
                    owner._buffers[attr] = b.to(device)

    @classmethod
    def open(cls, path: Path, device: torch.device, dtype: torch.dtype) -> "StreamedModel":
        """Over a model directory's safetensors files (each header checked)."""
        return cls(TensorReader(Path(path)), empty_model(model_config(Path(path))), device, dtype, str(path))

    @classmethod
    def from_model(cls, model: nn.Module, device: torch.device, dtype: torch.dtype) -> "StreamedModel":
        """Over a model in memory; ``model`` itself is never changed."""
        return cls(StateDictReader(dict(model.state_dict())), empty_model(model.config), device, dtype, "the model in memory")

    def _tied_names(self) -> dict[str, str]:
        """Name -> the name its tensor is stored under, for tensors the checkpoint
        stores once under another name (a head tied to the embeddings)."""
        by_id: dict[int, list[str]] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), []).append(name)
        head, emb = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        if getattr(self.model.config, "tie_word_embeddings", False) and head is not None and emb is not None:
            by_id.setdefault(-1, []).extend([f"{self.module_name(head)}.weight", f"{self.module_name(emb)}.weight"])
        out = {}
        for names in by_id.values():
            stored = [n for n in names if n in self.reader]
            for n in names:
                if n not in self.reader and stored:
                    out[n] = stored[0]
        return out

    def stored_name(self, name: str) -> str:
        return name if name in self.reader else self._aliases.get(name, name)

    def stored_dtype_of(self, name: str) -> torch.dtype | None:
        """The dtype tensor ``name`` is stored in."""
        return self.reader.dtype(self.stored_name(name))

    def read(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """One stored tensor, by its name in the model, on ``device`` (default: the compute device)."""
        stored = self.stored_name(name)
        if stored not in self.reader:
            raise KeyError(f"{self.where}: the checkpoint has no tensor {name}")
        return self.reader.get(stored, self.device if device is None else device, dtype)

    def fill(self, module: nn.Module, prefix: str, dtype: torch.dtype | None = None) -> nn.Module:
        """Give ``module`` (the model's ``prefix`` or a copy of it) its stored
        tensors on the compute device; float tensors in ``dtype`` (default: the
        compute dtype), those of packed modules in their stored dtypes."""
        dtype = dtype or self.dtype
        for local, owner, attr, is_param in list(_slots(module)):
            name = f"{prefix}.{local}" if prefix else local
            owner_name = name.rsplit(".", 1)[0]
            t = self.read(name, None if owner_name in self.stored_dtype else dtype)
            if is_param:
                owner._parameters[attr] = nn.Parameter(t, requires_grad=False)
            else:
                owner._buffers[attr] = t
        return module

    def load(self, name: str, dtype: torch.dtype | None = None) -> nn.Module:
        """Submodule ``name`` of the model with its weights present."""
        return self.fill(self.model.get_submodule(name), name, dtype)

    def load_copy(self, name: str, dtype: torch.dtype | None = None) -> nn.Module:
        """A separate copy of submodule ``name`` with its stored weights (the model's own stays as it is)."""
        return self.fill(meta_clone(self.model.get_submodule(name)), name, dtype)

    def release(self, name: str) -> None:
        release(self.model.get_submodule(name))

    @contextmanager
    def loaded(self, *names: str, dtype: torch.dtype | None = None) -> Iterator[list[nn.Module]]:
        """Submodules ``names`` with their weights while the body runs (floats in ``dtype``, default the compute dtype)."""
        modules = [self.load(n, dtype) for n in names]
        try:
            yield modules
        finally:
            for n in names:
                self.release(n)

    def module_name(self, module: nn.Module) -> str:
        for name, m in self.model.named_modules():
            if m is module:
                return name
        raise KeyError("module is not part of the model")


def _meta_like(owner: nn.Module, attr: str, is_param: bool) -> torch.Tensor:
    """A meta-device stand-in for one slot's tensor (a Parameter for a parameter)."""
    t = owner._parameters[attr] if is_param else owner._buffers[attr]
    meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
    return nn.Parameter(meta, requires_grad=False) if is_param else meta


def release(module: nn.Module) -> None:
    """Put ``module``'s stored tensors back on the meta device, freeing their memory."""
    for _, owner, attr, is_param in list(_slots(module)):
        if is_param:
            owner._parameters[attr] = _meta_like(owner, attr, True)
        else:
            owner._buffers[attr] = _meta_like(owner, attr, False)


def meta_clone(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose stored tensors are on the meta device (no data copied)."""
    memo: dict[int, object] = {}
    for _, owner, attr, is_param in _slots(module):
        t = owner._parameters[attr] if is_param else owner._buffers[attr]
        memo[id(t)] = _meta_like(owner, attr, is_param)
    return copy.deepcopy(module, memo)
