import pytest
import torch

from onecomp.algorithms.gptq import GPTQSettings, gptq_quantize
from onecomp.algorithms.qep import QEPError, qep_corrected_weight


def _layer(seed: int = 0, n_out: int = 48, n_in: int = 64, tokens: int = 2048):
    """A weight, full-precision inputs X with correlated features, and quantized-path
    inputs X̂ = X + an error that is partly a function of X (as upstream rounding is)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) / n_in**0.5 + torch.eye(n_in)
    x = torch.randn(tokens, n_in, generator=g) @ mix
    x_hat = x + 0.15 * (x @ (torch.randn(n_in, n_in, generator=g) / n_in**0.5)) + 0.05 * torch.randn(tokens, n_in, generator=g)
    w = torch.randn(n_out, n_in, generator=g)
    scale = 2.0 / tokens
    h = scale * x_hat.T @ x_hat
    cross = scale * (x - x_hat).T @ x_hat
    return w, x, x_hat, h, cross


def _error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(((x @ w.T - x_hat @ q.T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def test_full_correction_is_the_least_squares_solution() -> None:
    w, x, x_hat, h, cross = _layer()
    corrected = qep_corrected_weight(w, h, cross, alpha=1.0, damp=1e-8).weight
    lstsq = torch.linalg.lstsq(x_hat.double(), (x @ w.T).double()).solution.T.float()
    torch.testing.assert_close(corrected, lstsq, rtol=1e-3, atol=1e-3)


def test_correction_lowers_the_error_against_the_original_output() -> None:
    w, x, x_hat, h, cross = _layer()
    errors = [_error(w, qep_corrected_weight(w, h, cross, a, 0.01).weight, x, x_hat) for a in (0.0, 0.25, 0.5, 1.0)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.2 * errors[0]


def test_quantizing_the_corrected_weight_beats_plain_gptq() -> None:
    w, x, x_hat, h, cross = _layer(seed=1)
    settings = GPTQSettings(static_groups=True)
    plain = gptq_quantize(w, h, 4, 32, False, settings).dequantize()
    target = qep_corrected_weight(w, h, cross, 0.5, 0.01).weight
    qep = gptq_quantize(target, h, 4, 32, False, settings).dequantize()
    assert _error(w, qep, x, x_hat) < 0.7 * _error(w, plain, x, x_hat)


def test_alpha_zero_is_plain_quantization() -> None:
    w, _, _, h, cross = _layer()
    assert torch.equal(qep_corrected_weight(w, h, cross, 0.0, 0.01).weight, w)


def test_collinear_inputs_are_damped_not_fatal() -> None:
    w, x, x_hat, h, cross = _layer()
    x_hat[:, 5] = 0.0  # a dead input column makes H singular
    h = 2.0 / x.shape[0] * x_hat.T @ x_hat
    corrected = qep_corrected_weight(w, h, cross, 0.5, 1e-12).weight
    assert torch.isfinite(corrected).all()


def test_residual_term_also_cancels_the_drift_in_the_stream() -> None:
    """With R, the full correction is the least-squares fit of W x + (h − ĥ) from x̂."""
    w, x, x_hat, h, cross = _layer(seed=3)
    g = torch.Generator().manual_seed(9)
    drift = 0.1 * (x_hat @ torch.randn(x.shape[1], w.shape[0], generator=g)) + 0.01 * torch.randn(x.shape[0], w.shape[0], generator=g)
    residual = 2.0 / x.shape[0] * drift.T @ x_hat
    corrected = qep_corrected_weight(w, h, cross, 1.0, 1e-8, residual).weight
    lstsq = torch.linalg.lstsq(x_hat.double(), (x @ w.T + drift).double()).solution.T.float()
    torch.testing.assert_close(corrected, lstsq, rtol=1e-3, atol=1e-3)


def test_an_indefinite_hessian_reports_the_damping_it_needed() -> None:
    w, _, _, h, cross = _layer()
    assert not qep_corrected_weight(w, h, cross, 0.5, 0.01).damping.raised
    bad = h.clone()
    bad[0, 0] = -5.0 * float(h.diagonal().mean())  # no damping below about 5 factors it
    corrected = qep_corrected_weight(w, bad, cross, 0.5, 0.01)
    assert corrected.damping.raised and corrected.damping.requested == 0.01
    assert corrected.damping.used == pytest.approx(10.0)  # 0.01 x 10^3
    assert torch.isfinite(corrected.weight).all()


def test_alpha_zero_solves_nothing() -> None:
    w, _, _, h, cross = _layer()
    assert qep_corrected_weight(w, h, cross, 0.0, 0.01).damping is None


def test_a_hessian_no_damping_can_fix_is_an_error() -> None:
    w, _, _, h, cross = _layer()
    bad = h.clone()
    bad[0, 0] = -1e9 * float(h.diagonal().mean())
    with pytest.raises(QEPError, match="damping up to"):
        qep_corrected_weight(w, bad, cross, 0.5, 0.01)
