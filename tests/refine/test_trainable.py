"""Training views keep the codes and round trained values to the stored precision."""

from __future__ import annotations

import pytest
import torch

from onecomp.algorithms.rtn import rtn_quantize
from onecomp.formats.base import FormatSpec
from onecomp.formats.intq import IntFormat
from onecomp.refine.trainable import TrainableIntLinear, commit_trainable, make_trainable, scale_parameters


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



def _sign_factor_packed(envelope: int) -> torch.nn.Module:
    from onecomp.algorithms.sign_factor import SignFactorSettings, sign_factor_quantize
    from onecomp.formats.sign_factor import SignFactorFormat

    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
    spec = SignFactorFormat(bpw=3.0, envelope=envelope).resolved(32, 48)
    mod = spec.make_module(48, 32, bias=True)
    mod.load_state_dict({**spec.pack(sign_factor_quantize(w, None, spec.rank, envelope, 1, SignFactorSettings(iterations=2))), "bias": torch.randn(32)})
    return mod


def _lords_packed(codebook: str) -> torch.nn.Module:
    from onecomp.algorithms.lords import LoRDSSettings, lords_quantize
    from onecomp.formats.lords import LoRDSFormat

    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    spec = LoRDSFormat(bits=3, block=16, codebook=codebook).resolved(32, 64)
    mod = spec.make_module(64, 32, bias=False)
    mod.load_state_dict(spec.pack(lords_quantize(w, None, 3, 16, codebook, LoRDSSettings(iterations=1), rank=spec.rank)))
    return mod


def _views() -> list[torch.nn.Module]:
    return [_sign_factor_packed(1), _sign_factor_packed(2), _lords_packed("int"), _lords_packed("nf")]


def test_every_packed_format_has_a_training_view_that_starts_at_its_output() -> None:
    for packed in _views():
        x = torch.randn(4, packed.in_features)
        root = torch.nn.Sequential(packed)
        with torch.no_grad():
            want = packed(x)
        make_trainable(root)
        assert root[0] is not packed
        got = root[0](x)
        assert float((got.detach() - want).norm() / want.norm()) < 1e-2  # bf16 sign/level copies
        got.square().sum().backward()
        assert all(p.grad is not None for p in scale_parameters(root))


def test_commit_of_every_view_rounds_floats_and_keeps_the_discrete_part() -> None:
    for packed in _views():
        frozen = {k: v.clone() for k, v in packed.state_dict().items() if v.dtype == torch.uint8}
        root = torch.nn.Sequential(packed)
        make_trainable(root)
        params = scale_parameters(root)
        assert params
        with torch.no_grad():
            for p in params:
                p.mul_(1.0 + 1e-2 * torch.randn_like(p))
        view = root[0]
        expected = {n: view.params.value(n).to(torch.float16) for n in view.params.names}
        commit_trainable(root)
        assert root[0] is packed
        for name, value in expected.items():
            assert torch.equal(getattr(packed, name), value)
        for key, value in frozen.items():
            assert torch.equal(packed.state_dict()[key], value)


def _random_module(spec: FormatSpec, n: int, m: int) -> torch.nn.Module:
    mod = spec.make_module(m, n, bias=False)
    gen = torch.Generator().manual_seed(0)
    for buf in mod.buffers():
        if buf.is_floating_point():
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return mod


@pytest.mark.parametrize("label", ["w3g16", "mdbf2e1p2", "mdbf2e2p2", "lords3g32"])
def test_training_footprint_matches_what_the_view_keeps(label: str) -> None:
    """The memory estimate's per-format terms against the view's buffers and the
    tensors autograd keeps for one step (found with saved-tensor hooks)."""
    from onecomp.formats.base import format_from_label
    from onecomp.refine.trainable import TRAINABLE

    n, m, tokens = 96, 160, 64
    spec = format_from_label(label)
    packed = _random_module(spec, n, m)
    view = TRAINABLE[type(packed)](packed)
    x = torch.randn(tokens, m, dtype=torch.bfloat16, requires_grad=True)
    own = {t.untyped_storage().data_ptr() for t in [x, *view.buffers(), *view.parameters()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own and t.numel() > 2 * max(n, m):  # new tensors, not the small envelope casts
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        view(x).float().sum().backward()
    fp = spec.training_footprint(n, m)
    frozen = sum(b.numel() * b.element_size() for b in view.buffers() if b.dtype == torch.bfloat16)
    assert frozen == pytest.approx(fp.view, rel=0.02)
    assert sum(saved.values()) == pytest.approx(fp.saved + tokens * fp.saved_per_token, rel=0.1)


def test_layers_whose_format_has_no_training_view_are_named(monkeypatch) -> None:
    from onecomp.formats.intq import IntQuantLinear
    from onecomp.formats.lords import LoRDSFormat
    from onecomp.refine import trainable

    formats = {"a.q_proj": IntFormat(bits=3, group_size=16), "a.up_proj": LoRDSFormat(bits=3, block=16, codebook="nf")}
    shapes = {"a.q_proj": (24, 40), "a.up_proj": (48, 40)}
    assert trainable.untrained_layers(formats, shapes) == {}  # every registered format has a view today
    monkeypatch.delitem(trainable.TRAINABLE, IntQuantLinear)
    assert trainable.untrained_layers(formats, shapes) == {"a.q_proj": "w3g16"}
