import pytest
import torch

from onecomp.algorithms.sign_factor import SignFactorSettings, sign_factor_quantize
from onecomp.formats import SignFactorFormat, format_from_json, format_from_label

FAST = SignFactorSettings(iterations=3)


def _fit(spec: SignFactorFormat, n: int, m: int, seed: int = 0):
    w = torch.randn(n, m, generator=torch.Generator().manual_seed(seed))
    stored = spec.resolved(n, m)
    return stored, sign_factor_quantize(w, None, stored.rank, spec.envelope, spec.paths, FAST)


@pytest.mark.parametrize(("envelope", "paths"), [(1, 1), (2, 1), (1, 2), (3, 2)])
def test_module_computes_the_dense_reconstruction(envelope: int, paths: int) -> None:
    n, m = 80, 144
    stored, res = _fit(SignFactorFormat(bpw=2.0, envelope=envelope, paths=paths), n, m)
    module = stored.make_module(m, n, bias=True)
    tensors = stored.pack(res)
    module.load_state_dict({**tensors, "bias": torch.randn(n)})
    module.requires_grad_(False)
    dense = module.dequantize()
    torch.testing.assert_close(dense, res.dequantize(), rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 5, m)
    torch.testing.assert_close(module(x), x @ dense.T + module.bias, rtol=1e-4, atol=1e-5)
    # bfloat16 activations: signs are exact, so only bf16 rounding of the products differs
    want = x @ dense.T + module.bias
    assert float((module(x.bfloat16()).float() - want).norm() / want.norm()) < 0.02


@pytest.mark.parametrize("spec", [SignFactorFormat(bpw=2.0), SignFactorFormat(bpw=1.5, envelope=2), SignFactorFormat(bpw=2.5, paths=2)])
@pytest.mark.parametrize(("n", "m"), [(576, 576), (1536, 576), (192, 576), (61, 77)])
def test_storage_counts_every_packed_byte_and_fits_the_target(spec: SignFactorFormat, n: int, m: int) -> None:
    stored = spec.resolved(n, m)
    r = stored.rank
    module = stored.make_module(m, n, bias=False)
    nbytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert nbytes == spec.storage_bytes(n, m)
    assert spec.storage_bits(n, m) <= spec.bpw * n * m  # never over the target
    assert nbytes * 8 - spec.storage_bits(n, m) < 8 * 2 * spec.paths  # only byte padding of the sign matrices
    # the next middle dimension would exceed it: the rate is used, not wasted
    assert spec.model_copy(update={"rank": r + 1}).storage_bits(n, m) > spec.bpw * n * m
    if n * m >= 100_000:
        assert spec.bits_per_weight(n, m) == pytest.approx(spec.bpw, rel=0.02)


def test_dbf_storage_formula() -> None:
    spec = SignFactorFormat(bpw=2.0, rank=100)
    # two sign matrices plus a (n), mu (k), b (m) in fp16
    assert spec.storage_bits(64, 128) == 100 * (64 + 128) + 16 * (64 + 128 + 100)
    mdbf = SignFactorFormat(bpw=2.0, envelope=2, paths=2, rank=50)
    assert mdbf.storage_bits(64, 128) == 2 * (50 * (64 + 128) + 16 * (2 * (64 + 128) + 4 * 50))


def test_labels_round_trip() -> None:
    for spec in (SignFactorFormat(bpw=2.0), SignFactorFormat(bpw=1.5, envelope=2), SignFactorFormat(bpw=2.25, envelope=1, paths=2)):
        assert format_from_label(spec.label()) == spec
    assert format_from_label("dbf1.5") == SignFactorFormat(bpw=1.5)
    assert format_from_label("mdbf2") == SignFactorFormat(bpw=2.0, envelope=2)


def test_json_round_trip_keeps_the_resolved_rank() -> None:
    stored = SignFactorFormat(bpw=2.0, envelope=2).resolved(96, 160)
    again = format_from_json(stored.to_json())
    assert again == stored and again.rank == stored.rank


def test_too_small_a_budget_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot hold one sign path"):
        SignFactorFormat(bpw=0.1).storage_bits(8, 8)


def test_pack_rejects_a_result_of_another_shape_of_format() -> None:
    stored, res = _fit(SignFactorFormat(bpw=2.0), 16, 32)
    with pytest.raises(ValueError, match="paths"):
        stored.model_copy(update={"paths": 2}).pack(res)
