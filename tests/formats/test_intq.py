import pytest
import torch

from onecomp.algorithms.rtn import rtn_quantize
from onecomp.formats import IntFormat, format_from_json


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("sym", [False, True])
def test_module_reproduces_dequantized_weight(bits: int, group_size: int, sym: bool) -> None:
    # 576 inputs with groups of 128: the last group has 64 columns
    w = torch.randn(40, 576)
    res = rtn_quantize(w, bits, group_size, sym)
    spec = IntFormat(bits=bits, group_size=group_size, sym=sym)
    module = spec.make_module(576, 40, bias=False)
    module.load_state_dict(spec.pack(res))
    assert torch.equal(module.dequantize(), res.dequantize())
    x = torch.randn(3, 576)
    torch.testing.assert_close(module(x), x @ res.dequantize().T)


def test_storage_accounting_counts_everything() -> None:
    spec = IntFormat(bits=4, group_size=128, sym=False)
    # 5 groups per row (last one 64 wide): codes + fp16 scales + 4-bit zeros
    assert spec.storage_bits(10, 576) == 10 * 576 * 4 + 10 * 5 * (16 + 4)
    assert IntFormat(bits=3, group_size=128, sym=True).storage_bits(10, 512) == 10 * 512 * 3 + 10 * 4 * 16
    assert IntFormat(bits=4, group_size=-1).bits_per_weight(1, 4096) == pytest.approx(4 + 20 / 4096)


def test_packed_sizes_match_accounting() -> None:
    spec = IntFormat(bits=3, group_size=128)
    res = rtn_quantize(torch.randn(64, 576), 3, 128, False)
    nbits = sum(t.numel() * t.element_size() * 8 for t in spec.pack(res).values())
    assert abs(nbits - spec.storage_bits(64, 576)) <= 16  # byte padding only


@pytest.mark.parametrize("bad", [{"bits": 5}, {"group_size": 0}, {"group_size": -3}])
def test_invalid_specs(bad: dict) -> None:
    with pytest.raises(ValueError):
        IntFormat(**bad)


def test_json_round_trip() -> None:
    spec = IntFormat(bits=3, group_size=64, sym=True, g_idx=True)
    assert format_from_json(spec.to_json()) == spec
