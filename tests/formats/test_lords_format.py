import pytest
import torch

from onecomp.algorithms.lords import LoRDSSettings, lords_quantize, lords_rank
from onecomp.formats import FORMATS, IntFormat, default_candidates, format_from_json, format_from_label
from onecomp.formats.lords import LoRDSFormat, LoRDSLinear

FAST = LoRDSSettings(iterations=2, search_grid=5, search_rounds=1)


def _weight(n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g) * torch.exp(0.5 * torch.randn(1, m, generator=g))


def test_registered_with_candidates_only_for_its_own_method() -> None:
    from onecomp.formats import IntFormat
    from onecomp.methods import METHODS

    assert FORMATS["lords"] is LoRDSFormat
    labels = [f.label() for f in default_candidates(METHODS["lords"].formats)]
    assert labels == ["lords2g64", "lords2g128", "lords3g64", "lords3g128", "lords4g64", "lords4g128"]
    assert not any(isinstance(f, LoRDSFormat) for f in default_candidates(METHODS["gptq"].formats))
    assert all(isinstance(f, IntFormat) for f in default_candidates(METHODS["gptq"].formats))
    # every candidate's bits count what it stores, on a shape with a short last block
    for spec in default_candidates(METHODS["lords"].formats):
        stored = spec.resolved(96, 200)
        module = stored.make_module(200, 96, bias=False)
        assert sum(t.numel() * t.element_size() for t in module.state_dict().values()) == spec.storage_bytes(96, 200)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("codebook", ["int", "nf"])
def test_module_reproduces_dequantized_weight(bits: int, codebook: str) -> None:
    n, m = 40, 200  # 8000 codes: 3 bits do not fill whole bytes per row
    res = lords_quantize(_weight(n, m), None, bits, 32, codebook, FAST)
    spec = LoRDSFormat(bits=bits, block=32, codebook=codebook).resolved(n, m)
    module = spec.make_module(m, n, bias=True)
    assert isinstance(module, LoRDSLinear)
    packed = spec.pack(res)
    assert set(packed) == {"qweight", "scale_b", "scale_a"}
    bias = torch.randn(n)
    module.load_state_dict({**packed, "bias": bias})
    assert set(dict(module.named_buffers())) == set(packed)
    assert torch.equal(module.dequantize(), res.dequantize())
    x = torch.randn(3, m)
    torch.testing.assert_close(module(x), x @ res.dequantize().T + bias)
    assert module(x.half()).dtype == torch.float16


def test_storage_accounting() -> None:
    spec = LoRDSFormat(bits=3, block=128)
    r = lords_rank(4096, 4096, 128)
    assert spec.storage_bits(4096, 4096) == 4096 * 4096 * 3 + 16 * r * 8192
    assert spec.bits_per_weight(4096, 4096) == pytest.approx(3 + 16 / 128)
    assert LoRDSFormat(bits=4, block=128, rank=5).storage_bits(10, 30) == 10 * 30 * 4 + 16 * 5 * 40
    # never more than the symmetric int format with the same block size
    assert spec.storage_bits(576, 1536) <= IntFormat(bits=3, group_size=128, sym=True).storage_bits(576, 1536)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_sizes_match_storage_bytes(bits: int) -> None:
    n, m = 36, 130
    spec = LoRDSFormat(bits=bits, block=32, codebook="nf").resolved(n, m)
    packed = spec.pack(lords_quantize(_weight(n, m), None, bits, 32, "nf", FAST))
    nbytes = sum(t.numel() * t.element_size() for t in packed.values())
    assert nbytes == spec.storage_bytes(n, m) == LoRDSFormat(bits=bits, block=32, codebook="nf").storage_bytes(n, m)
    assert abs(8 * nbytes - spec.storage_bits(n, m)) < 8


def test_resolved_rank_is_stored() -> None:
    spec = LoRDSFormat(bits=3, block=64)
    stored = spec.resolved(256, 512)
    assert spec.rank is None and stored.rank == lords_rank(256, 512, 64) == 2
    assert stored.to_json() == {"format": "lords", "bits": 3, "block": 64, "codebook": "int", "rank": 2}
    assert format_from_json(stored.to_json()) == stored
    assert format_from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):  # the result's rank must be the spec's
        LoRDSFormat(bits=3, block=64, rank=3).pack(lords_quantize(_weight(24, 64), None, 3, 64, "int", FAST))


@pytest.mark.parametrize("label", ["lords3g128", "lords3g128nf", "lords4g64r7", "lords2g32r1nf", "lords8g256"])
def test_label_round_trip(label: str) -> None:
    spec = format_from_label(label)
    assert isinstance(spec, LoRDSFormat)
    assert spec.label() == label
    assert LoRDSFormat.from_label(label) == spec


def test_labels_do_not_collide() -> None:
    assert format_from_label("lords3g128nf") == LoRDSFormat(bits=3, block=128, codebook="nf")
    assert isinstance(format_from_label("w3g128"), IntFormat)
    for other in ("w3g128", "lords3", "lords3g128xx", "lordsg128"):
        assert LoRDSFormat.from_label(other) is None


@pytest.mark.parametrize("bad", [{"bits": 5}, {"block": 0}, {"rank": 0}, {"codebook": "fp"}])
def test_invalid_specs(bad: dict) -> None:
    with pytest.raises(ValueError):
        LoRDSFormat(**bad)


def test_pack_rejects_mismatched_result() -> None:
    res = lords_quantize(_weight(16, 64), None, 3, 32, "int", FAST)
    with pytest.raises(ValueError):
        LoRDSFormat(bits=4, block=32).pack(res)
    with pytest.raises(ValueError):
        LoRDSFormat(bits=3, block=32, codebook="nf").pack(res)
