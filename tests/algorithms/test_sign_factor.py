import pytest
import torch

from onecomp.algorithms.sign_factor import (
    SignFactorSettings,
    SignPath,
    fit_path,
    project,
    refine_dbf_vectors,
    refine_output_signs,
    sign_factor_quantize,
)


def _weight(n: int = 48, m: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # row and column magnitudes like real layers, not a flat Gaussian
    return torch.randn(n, m, generator=g) * torch.rand(n, 1, generator=g).add(0.5) * torch.rand(1, m, generator=g).add(0.5)


def _hessian(m: int = 96, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, m, generator=g) * torch.rand(1, m, generator=g).mul(3).add(0.2)
    return x.T @ x / 512


def _rel(w: torch.Tensor, approx: torch.Tensor, h: torch.Tensor | None = None) -> float:
    d = w - approx
    if h is None:
        return float(d.norm() / w.norm())
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum())


@pytest.mark.parametrize("rank", [1, 2])
def test_projection_is_signs_times_a_low_rank_envelope(rank: int) -> None:
    m = torch.randn(30, 20)
    signs, p, q = project(m, rank, 20, torch.Generator().manual_seed(0))
    assert set(signs.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(signs, torch.where(m >= 0, 1.0, -1.0))
    assert torch.linalg.matrix_rank(p @ q.T) <= rank
    # the envelope is the best rank-`rank` fit of |M|
    s = torch.linalg.svdvals(m.abs())
    best = float(s[rank:].pow(2).sum().sqrt())
    assert float((m.abs() - p @ q.T).norm()) == pytest.approx(best, rel=1e-3)


def test_factor_error_decreases_with_iterations() -> None:
    w = _weight()
    errors = []
    for iterations in (0, 5, 20):
        path = fit_path(w, 40, 1, SignFactorSettings(iterations=iterations), torch.Generator().manual_seed(0))
        errors.append(_rel(w, path.dense()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.75 * errors[0]


def test_more_middle_dimension_fits_better() -> None:
    w = _weight()
    errs = [_rel(w, sign_factor_quantize(w, None, k).dequantize()) for k in (16, 48, 96)]
    assert errs[0] > errs[1] > errs[2]


def test_dbf_form_is_the_envelope_one_case() -> None:
    # l = 1: F G = diag(a) S_F diag(mu) S_G diag(b), mu = q_f * p_g
    res = sign_factor_quantize(_weight(), None, 24, envelope=1)
    (path,) = res.paths
    a, mu, b = path.p_f[:, 0], (path.q_f * path.p_g)[:, 0], path.q_g[:, 0]
    dbf = torch.diag(a) @ path.sign_f @ torch.diag(mu) @ path.sign_g @ torch.diag(b)
    torch.testing.assert_close(dbf, res.dequantize(), rtol=1e-5, atol=1e-6)


def test_wider_envelope_and_second_path_fit_better_at_the_same_rank() -> None:
    w = _weight()
    one = _rel(w, sign_factor_quantize(w, None, 24, envelope=1).dequantize())
    two = _rel(w, sign_factor_quantize(w, None, 24, envelope=2).dequantize())
    paths = _rel(w, sign_factor_quantize(w, None, 24, envelope=1, paths=2).dequantize())
    assert two < one and paths < one


def test_hessian_refinement_of_the_vectors_never_hurts() -> None:
    w, h = _weight(), _hessian()
    path = fit_path(w, 32, 1, SignFactorSettings(iterations=10), torch.Generator().manual_seed(0))
    refined = refine_dbf_vectors(w, path, h, rounds=3)
    assert torch.equal(refined.sign_f, path.sign_f) and torch.equal(refined.sign_g, path.sign_g)
    assert _rel(w, refined.dense(), h) < 0.99 * _rel(w, path.dense(), h)


def test_hessian_weighting_lowers_the_output_error() -> None:
    w, h = _weight(), _hessian()
    plain = sign_factor_quantize(w, None, 32).dequantize()
    weighted = sign_factor_quantize(w, h, 32)
    assert _rel(w, weighted.dequantize(), h) < _rel(w, plain, h)
    assert weighted.info["hessian_gain"] >= 0


def test_stored_vectors_are_float16_values() -> None:
    res = sign_factor_quantize(_weight(), _hessian(), 16, envelope=2)
    for p in res.paths:
        for t in (p.p_f, p.q_f, p.p_g, p.q_g):
            assert torch.equal(t, t.half().float())


def test_fit_is_deterministic() -> None:
    w, h = _weight(), _hessian()
    a = sign_factor_quantize(w, h, 20, envelope=2).dequantize()
    b = sign_factor_quantize(w, h, 20, envelope=2).dequantize()
    assert torch.equal(a, b)


def test_sign_path_dense_matches_its_factors() -> None:
    g = torch.Generator().manual_seed(0)
    sf, sg = torch.randn(6, 4, generator=g).sign(), torch.randn(4, 5, generator=g).sign()
    path = SignPath(sf, torch.rand(6, 2), torch.rand(4, 2), sg, torch.rand(4, 2), torch.rand(5, 2))
    f = sf * (path.p_f @ path.q_f.T)
    g_ = sg * (path.p_g @ path.q_g.T)
    torch.testing.assert_close(path.dense(), f @ g_)


def _row_errors(w: torch.Tensor, approx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    d = w - approx
    return ((d @ h) * d).sum(1)


def test_row_coordinate_descent_never_hurts_a_row_and_helps_the_layer() -> None:
    w, h = _weight(), _hessian()
    path = fit_path(w, 32, 1, SignFactorSettings(iterations=10), torch.Generator().manual_seed(0))
    ls_only = refine_output_signs(w, path, h, sweeps=0)
    with_cd = refine_output_signs(w, path, h, sweeps=2)
    assert torch.equal(with_cd.sign_g, path.sign_g)
    assert bool((_row_errors(w, with_cd.dense(), h) <= _row_errors(w, ls_only.dense(), h) * (1 + 1e-5)).all())
    assert _rel(w, with_cd.dense(), h) < 0.97 * _rel(w, ls_only.dense(), h)


def test_more_sign_rounds_fit_better_under_the_hessian() -> None:
    w, h = _weight(), _hessian()
    errs = [_rel(w, sign_factor_quantize(w, h, 32, settings=SignFactorSettings(sign_rounds=r)).dequantize(), h) for r in (0, 1, 2)]
    assert errs[0] > errs[1] >= errs[2]


def test_the_sign_pass_reports_the_damping_it_needed() -> None:
    w, h = _weight(), _hessian()
    fast = SignFactorSettings(iterations=4, damp=0.1)
    assert not sign_factor_quantize(w, h, 16, settings=fast).info["damping"].raised
    bad = h.clone()
    bad[0, 0] = -5.0 * float(h.diagonal().mean())  # no damping below about 5 factors it
    damping = sign_factor_quantize(w, bad, 16, settings=fast).info["damping"]
    assert damping.raised and damping.requested == 0.1 and damping.used == pytest.approx(10.0)
