from __future__ import annotations

import copy

import torch
import transformers

from onecomp.algorithms.rtn import rtn_quantize
from onecomp.formats.intq import IntFormat
from tests.conftest import tiny_model


def quantized_copy(model: transformers.PreTrainedModel, bits: int = 2, group_size: int = 16) -> transformers.PreTrainedModel:
    """A copy of ``model`` whose block linears are packed RTN integer modules."""
    student = copy.deepcopy(model)
    spec = IntFormat(bits=bits, group_size=group_size)
    for name, mod in list(student.named_modules()):
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            res = rtn_quantize(mod.weight.detach().float(), bits, group_size, False, None)
            packed = spec.make_module(mod.in_features, mod.out_features, bias=False)
            packed.load_state_dict(spec.pack(res), strict=False)
            student.set_submodule(name, packed)
    return student


def teacher_and_student(seed: int = 0) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedModel, torch.Tensor]:
    teacher = tiny_model("llama", layers=2, seed=seed).float()
    student = quantized_copy(teacher)
    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(seed))
    return teacher, student, ids
