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

from onecomp.algorithms.lords import codebook_levels
from onecomp.formats.base import FormatSpec
from onecomp.formats.intq import IntQuantLinear
from onecomp.formats.lords import LoRDSLinear
from onecomp.formats.packing import unpack_codes
from onecomp.formats.sign_factor import SignFactorLinear, sign_factor_forward


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _dense_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a view that rebuilds its weight (``self.weight(dtype)``) in the compute dtype."""
    dtype = _compute_dtype(x)
    bias = None if self.bias is None else self.bias.to(dtype)
    return F.linear(x.to(dtype), self.weight(dtype), bias)


class TrainableView(nn.Module):
    """A packed layer's training view: discrete parts frozen, floats trainable."""

    def commit(self) -> nn.Module:
        """Write the trained values into the packed module, rounded as stored."""
        raise NotImplementedError


class TrainableIntLinear(TrainableView):
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

    forward = _dense_forward

    @torch.no_grad()
    def commit(self) -> IntQuantLinear:
        self.packed.scales.copy_(self.scales().to(torch.float16))
        return self.packed


class _RatioParams(nn.Module):
    """Float tensors trained as ratios to their starting values (one learning
    rate is then the same relative step for every tensor and layer)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = list(tensors)
        for name, t in tensors.items():
            self.register_buffer(f"{name}_0", t.float(), persistent=False)
            self.register_parameter(f"{name}_ratio", nn.Parameter(torch.ones_like(t, dtype=torch.float32)))

    def value(self, name: str) -> torch.Tensor:
        return getattr(self, f"{name}_0") * getattr(self, f"{name}_ratio")


class TrainableSignFactorLinear(TrainableView):
    """Signs frozen (kept once, unpacked, in bfloat16, where ±1 is exact); the
    envelope vectors trainable."""

    def __init__(self, packed: SignFactorLinear) -> None:
        super().__init__()
        self.packed = packed
        self.spec = packed.spec
        sign_f, sign_g = packed.signs(torch.bfloat16)
        self.register_buffer("sign_f", torch.stack(sign_f), persistent=False)
        self.register_buffer("sign_g", torch.stack(sign_g), persistent=False)
        names = ["env_out", "env_mid_in", "env_in"] + (["env_mid_out"] if packed.spec.envelope > 1 else [])
        self.params = _RatioParams({n: getattr(packed, n) for n in names})
        self.bias = packed.bias
        self.in_features, self.out_features = packed.in_features, packed.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        v = self.params.value
        mid_out = v("env_mid_out") if self.spec.envelope > 1 else torch.ones_like(self.params.env_mid_in_0)
        sf, sg = list(self.sign_f.to(dtype)), list(self.sign_g.to(dtype))
        return sign_factor_forward(x.to(dtype), sf, sg, v("env_out"), mid_out, v("env_mid_in"), v("env_in"), self.bias)

    @torch.no_grad()
    def commit(self) -> SignFactorLinear:
        for name in self.params.names:
            getattr(self.packed, name).copy_(self.params.value(name).to(torch.float16))
        return self.packed


class TrainableLoRDSLinear(TrainableView):
    """Codes frozen (their level values kept once in the compute dtype); the
    low-rank scale factors B and A trainable."""

    def __init__(self, packed: LoRDSLinear) -> None:
        super().__init__()
        self.packed = packed
        self.spec = packed.spec
        n, m = packed.out_features, packed.in_features
        codes = unpack_codes(packed.qweight, packed.spec.bits, n * m).view(n, m).long()
        levels = codebook_levels(packed.spec.bits, packed.spec.codebook)[codes.cpu()]
        self.register_buffer("levels", levels.to(device=packed.scale_b.device, dtype=torch.bfloat16), persistent=False)
        self.params = _RatioParams({"scale_b": packed.scale_b, "scale_a": packed.scale_a})
        self.bias = packed.bias
        self.in_features, self.out_features = m, n

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = self.params.value("scale_b") @ self.params.value("scale_a")
        return scale.to(dtype) * self.levels.to(dtype)

    forward = _dense_forward

    @torch.no_grad()
    def commit(self) -> LoRDSLinear:
        for name in self.params.names:
            getattr(self.packed, name).copy_(self.params.value(name).to(self.packed.scale_b.dtype))
        return self.packed


TRAINABLE: dict[type[nn.Module], Callable[..., TrainableView]] = {
    IntQuantLinear: TrainableIntLinear,
    SignFactorLinear: TrainableSignFactorLinear,
    LoRDSLinear: TrainableLoRDSLinear,
}


def is_packed(module: nn.Module) -> bool:
    return type(module) in TRAINABLE


def untrained_layers(formats: dict[str, FormatSpec], shapes: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Layers (name -> format label) whose format has no training view, given each
    layer's format and (out, in) shape: refinement leaves their parameters as
    they are, which a stage must report rather than pass over. Checked on empty
    (meta) modules, so before anything is loaded."""
    out = {}
    for name, spec in formats.items():
        n, m = shapes[name]
        with torch.device("meta"):
            module = spec.make_module(m, n, bias=False)
        if not is_packed(module):
            out[name] = spec.label()
    return out


def make_trainable(root: nn.Module) -> list[str]:
    """Swap every packed layer under ``root`` for its training view; returns their names."""
    names = [name for name, mod in root.named_modules() if is_packed(mod)]
    for name in names:
        root.set_submodule(name, TRAINABLE[type(root.get_submodule(name))](root.get_submodule(name)))
    return names


def commit_trainable(root: nn.Module) -> None:
    """Put the packed modules back, holding the trained values in stored precision."""
    for name, mod in list(root.named_modules()):
        if isinstance(mod, TrainableView):
            root.set_submodule(name, mod.commit())


def scale_parameters(root: nn.Module) -> list[nn.Parameter]:
    """The trainable float parameters of every training view under ``root`` (all are ratios)."""
    return [p for name, p in root.named_parameters() if name.rsplit(".", 1)[-1].endswith("ratio")]


def norm_weights(root: nn.Module) -> list[nn.Parameter]:
    """Weights of normalization layers: continuous, unquantized, cheap to train."""
    params = []
    for name, mod in root.named_modules():
        if "norm" in type(mod).__name__.lower() and isinstance(getattr(mod, "weight", None), nn.Parameter):
            params.append(mod.weight)
    return params
