"""Training views of packed layers: the codes are frozen, the continuous
parameters become ``nn.Parameter``s, and :meth:`commit` writes them back in
the precision the format stores (so training never changes the format).

Scales are trained as ratios to their starting value, so one learning rate
means the same relative step for every layer. Zero points are integers in the
format and stay as the layer-wise stage chose them: training them through a
straight-through rounding made block losses worse in every setting tried.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from onecomp.formats.intq import IntQuantLinear
from onecomp.formats.packing import unpack_codes


class TrainableIntLinear(nn.Module):
    """Weight = (codes - zero) * scale0 * ratio, with only ``ratio`` trainable.

    ``codes - zero`` is an integer below 2**bits in magnitude, exact in bfloat16,
    so it is kept once in bfloat16; with contiguous groups the scales broadcast
    over a view instead of being expanded to the weight's shape. The backward
    pass then keeps one compute-dtype weight per layer, not float32 copies.
    """

    def __init__(self, packed: IntQuantLinear) -> None:
        super().__init__()
        spec = packed.spec
        self.spec = spec
        self.packed = packed
        n, m = packed.out_features, packed.in_features
        ngroups = packed.scales.shape[1]
        device = packed.scales.device
        codes = unpack_codes(packed.qweight, spec.bits, n * m).view(n, m).float()
        if spec.sym:
            zeros = torch.full((n, ngroups), float(1 << (spec.bits - 1)))
        else:
            zeros = unpack_codes(packed.qzeros, spec.bits, n * ngroups).view(n, ngroups).float()
        self.grouped = not spec.g_idx
        if self.grouped:
            self.group = m if spec.group_size == -1 else spec.group_size
            idx = torch.arange(m) // self.group
            base = F.pad(codes - zeros[:, idx], (0, ngroups * self.group - m))
        else:
            idx = packed.g_idx.long().cpu()
            base = codes - zeros[:, idx]
            self.register_buffer("col_group", idx.to(device), persistent=False)
        self.register_buffer("base", base.to(device=device, dtype=torch.bfloat16), persistent=False)
        self.register_buffer("scale0", packed.scales.float(), persistent=False)
        self.ratio = nn.Parameter(torch.ones_like(self.scale0))
        self.bias = packed.bias
        self.in_features, self.out_features = m, n

    def scales(self) -> torch.Tensor:
        return self.scale0 * self.ratio

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        s = self.scales().to(dtype)
        base = self.base if self.base.dtype == dtype else self.base.to(dtype)
        if not self.grouped:
            return base * s[:, self.col_group]
        n, ngroups = s.shape
        w = base.view(n, ngroups, self.group) * s.unsqueeze(-1)
        return w.view(n, ngroups * self.group)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight(dtype), bias)

    @torch.no_grad()
    def commit(self) -> IntQuantLinear:
        """Write the trained values into the packed module, rounded as stored."""
        self.packed.scales.copy_(self.scales().to(torch.float16))
        return self.packed


TRAINABLE: dict[type[nn.Module], Callable[..., nn.Module]] = {IntQuantLinear: TrainableIntLinear}


def is_packed(module: nn.Module) -> bool:
    return type(module) in TRAINABLE


def make_trainable(root: nn.Module) -> list[str]:
    """Swap every packed layer under ``root`` for its training view; returns their names."""
    names = [name for name, mod in root.named_modules() if is_packed(mod)]
    for name in names:
        root.set_submodule(name, TRAINABLE[type(root.get_submodule(name))](root.get_submodule(name)))
    return names


def commit_trainable(root: nn.Module) -> None:
    """Put the packed modules back, holding the trained values in stored precision."""
    for name, mod in list(root.named_modules()):
        if isinstance(mod, TrainableIntLinear):
            root.set_submodule(name, mod.commit())


def norm_weights(root: nn.Module) -> list[nn.Parameter]:
    """Weights of normalization layers: continuous, unquantized, cheap to train."""
    params = []
    for name, mod in root.named_modules():
        if "norm" in type(mod).__name__.lower() and isinstance(getattr(mod, "weight", None), nn.Parameter):
            params.append(mod.weight)
    return params
