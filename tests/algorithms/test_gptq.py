import pytest
import torch

from onecomp.algorithms.gptq import GPTQSettings, HessianError, gptq_quantize, inverse_hessian_cholesky, relative_output_error
from onecomp.algorithms.quant_grid import ClipSearch
from onecomp.algorithms.rtn import rtn_quantize


def _data(n_in: int = 320, n_out: int = 96, tokens: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) * 0.2 + torch.eye(n_in)
    x = torch.randn(tokens, n_in, generator=g) @ mix
    x[:, :8] *= 8  # a few outlier channels, as in real activations
    h = 2 * x.T @ x / tokens
    w = torch.randn(n_out, n_in, generator=g)
    return w, h


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order,static", [(False, False), (True, False), (True, True)])
def test_gptq_output_error_below_rtn(bits: int, act_order: bool, static: bool) -> None:
    w, h = _data()
    rtn = rtn_quantize(w, bits, 128, False)
    q = gptq_quantize(w, h, bits, 128, False, GPTQSettings(act_order=act_order, static_groups=static))
    e_gptq = relative_output_error(w, q.dequantize(), h)
    e_rtn = relative_output_error(w, rtn.dequantize(), h)
    assert e_gptq < 0.8 * e_rtn


def test_act_order_group_indices() -> None:
    w, h = _data(n_in=200)
    q = gptq_quantize(w, h, 4, 64, False, GPTQSettings(act_order=True, static_groups=False))
    perm = torch.argsort(torch.diag(h), descending=True)
    assert q.g_idx is not None
    # the i-th column in act-order belongs to group i // 64, including the short last group
    assert torch.equal(q.g_idx[perm], torch.arange(200) // 64)
    assert q.scale.shape == (w.shape[0], 4)
    # every stored code reproduces through its group's parameters
    deq = (q.codes - q.zero[:, q.g_idx]) * q.scale[:, q.g_idx]
    torch.testing.assert_close(deq, q.dequantize())


def test_static_groups_need_no_index() -> None:
    w, h = _data()
    q = gptq_quantize(w, h, 4, 128, False, GPTQSettings(act_order=True, static_groups=True))
    assert q.g_idx is None


def test_dead_columns_are_zeroed() -> None:
    w, h = _data()
    h[5, :] = 0
    h[:, 5] = 0
    q = gptq_quantize(w, h, 4, 128, True, GPTQSettings())
    assert torch.all(q.dequantize()[:, 5] == 0)


def test_damping_grows_until_cholesky_succeeds() -> None:
    h = torch.ones(16, 16)  # rank one: singular
    h[0, 0] = 1.0
    _, damping = inverse_hessian_cholesky(h - 0.5 * torch.eye(16), 0.01, 8)
    assert damping.requested == 0.01 and damping.used > 0.01 and damping.raised


def indefinite(h: torch.Tensor, times: float = 5.0) -> torch.Tensor:
    """``h`` with one diagonal entry of -``times`` x mean(diag h): its mean diagonal
    stays positive, but no damping below about ``times`` makes it positive definite."""
    h = h.clone()
    h[0, 0] = -times * float(torch.diag(h).mean())
    return h


def test_an_indefinite_hessian_reports_the_damping_it_needed() -> None:
    w, h = _data()
    result = gptq_quantize(w, indefinite(h), 4, 128, False, GPTQSettings(damp=0.1))
    damping = result.info["damping"]
    assert damping.raised and damping.requested == 0.1
    assert damping.used == pytest.approx(10.0)  # 0.1 x 10 x 10: the first that factors (about 5 needed)
    assert not gptq_quantize(w, h, 4, 128, False, GPTQSettings(damp=0.1)).info["damping"].raised


def test_a_hessian_no_damping_can_fix_is_an_error() -> None:
    w, h = _data()
    with pytest.raises(HessianError, match="damping up to"):
        gptq_quantize(w, indefinite(h, 1e9), 4, 128, False, GPTQSettings())


def test_clip_search_lowers_weight_error() -> None:
    w = torch.randn(64, 256)
    w[:, 0] *= 20
    plain = rtn_quantize(w, 3, -1, False)
    clipped = rtn_quantize(w, 3, -1, False, ClipSearch())
    err = lambda r: float(((r.dequantize() - w) ** 2).sum())  # noqa: E731
    assert err(clipped) < err(plain)


def test_several_formats_at_once_equal_one_at_a_time() -> None:
    from onecomp.algorithms.gptq import gptq_quantize_formats

    w, h = _data(n_in=200)
    formats = [(b, g, False) for b in (2, 3, 4, 8) for g in (32, 64, -1)] + [(3, 64, True)]
    for settings in (GPTQSettings(static_groups=True, clip=ClipSearch()), GPTQSettings(act_order=True, static_groups=False)):
        many = gptq_quantize_formats(w, h, formats, settings)
        for fmt, got in zip(formats, many):
            one = gptq_quantize(w, h, *fmt, settings)
            assert torch.equal(got.codes, one.codes), fmt
            assert torch.equal(got.scale, one.scale) and torch.equal(got.zero, one.zero)
            assert (got.g_idx is None) == (one.g_idx is None)


def test_fast_rounding_equals_torch_round() -> None:
    from onecomp.algorithms.quant_grid import round_half_even

    x = torch.cat([torch.randn(10000) * 300, torch.arange(-20, 20) + 0.5, torch.tensor([0.5, -0.5, 1.5, 2.5, 4194303.5])])
    assert torch.equal(round_half_even(x), torch.round(x))
