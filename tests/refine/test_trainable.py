"""Training views keep the codes and round trained values to the stored precision."""

from __future__ import annotations

import torch

from onecomp.algorithms.rtn import rtn_quantize
from onecomp.formats.intq import IntFormat
from onecomp.refine.trainable import TrainableIntLinear, commit_trainable, make_trainable


def _packed(sym: bool = False, g_idx: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    spec = IntFormat(bits=3, group_size=16, sym=sym)
    res = rtn_quantize(w, 3, 16, sym, None)
    if g_idx:
        res.g_idx = res.group_index().clone()
        spec = spec.model_copy(update={"g_idx": True})
    mod = spec.make_module(40, 24, bias=False)
    mod.load_state_dict(spec.pack(res), strict=False)
    return mod


def test_training_view_starts_at_the_packed_weight() -> None:
    for sym in (False, True):
        for g_idx in (False, True):
            packed = _packed(sym, g_idx)
            view = TrainableIntLinear(packed)
            assert torch.equal(view.weight(), packed.dequantize())
            x = torch.randn(3, 40)
            assert torch.allclose(view(x), packed(x), atol=1e-5)


def test_commit_rounds_scales_to_float16_and_keeps_codes() -> None:
    packed = _packed()
    codes_before = packed.qweight.clone()
    root = torch.nn.Sequential(packed)
    make_trainable(root)
    view = root[0]
    with torch.no_grad():
        view.ratio.mul_(1.0 + 1e-3 * torch.randn_like(view.ratio))
    expected = view.scales().to(torch.float16)
    commit_trainable(root)
    assert root[0] is packed
    assert torch.equal(packed.scales, expected)
    assert torch.equal(packed.qweight, codes_before)

