import pytest
import torch

from onecomp.algorithms.gptq import GPTQSettings, gptq_quantize, relative_output_error
from onecomp.algorithms.lords import (
    LoRDSSettings,
    block_absmax,
    codebook_levels,
    init_factors,
    init_level,
    lords_quantize,
    lords_rank,
    nearest_codes,
    nf_levels,
)

FAST = LoRDSSettings(iterations=4, search_grid=7, search_rounds=1)


def _weight(n: int = 64, m: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with row and column magnitude structure, as LLM layers have."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.exp(0.5 * torch.randn(n, 1, generator=g))
    cols = torch.exp(0.5 * torch.randn(1, m, generator=g))
    return torch.randn(n, m, generator=g) * rows * cols


def _hessian(m: int = 256, tokens: int = 1024, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, m, generator=g) @ (torch.randn(m, m, generator=g) * 0.2 + torch.eye(m))
    x[:, :8] *= 8  # a few outlier channels, as in real activations
    return x.T @ x / tokens


def _error(w: torch.Tensor, approx: torch.Tensor, h: torch.Tensor | None) -> float:
    e = (w - approx).double()
    return float((e * e).sum()) if h is None else float(((e @ h.double()) * e).sum())


def test_rank_matches_block_scale_budget() -> None:
    assert lords_rank(4096, 4096, 128) == 16
    assert lords_rank(4096, 4096, 64) == 32
    assert lords_rank(4096, 14336, 64) == 49
    assert lords_rank(256, 512, 128) == 1
    assert lords_rank(8, 8, 128) == 1  # never zero
    for n, m, blk in [(4096, 4096, 128), (576, 1536, 64), (100, 300, 32)]:
        r = lords_rank(n, m, blk)
        assert 16 * r * (n + m) <= 16 * n * m / blk < 16 * (r + 1) * (n + m)


def test_nf_levels() -> None:
    for bits in (2, 3, 4, 8):
        lv = nf_levels(bits)
        assert lv.numel() == 2**bits
        assert torch.all(lv[1:] > lv[:-1])
        assert lv[0] == -1 and lv[-1] == 1 and (lv == 0).sum() == 1
        assert int((lv > 0).sum()) == 2 ** (bits - 1)  # one more positive than negative level
    qlora_nf4 = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                 0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]  # fmt: skip
    torch.testing.assert_close(nf_levels(4), torch.tensor(qlora_nf4), atol=2e-3, rtol=0)
    assert torch.equal(nf_levels(3), nf_levels(3))  # deterministic


def test_int_levels_and_nearest() -> None:
    lv = codebook_levels(3, "int")
    assert lv.tolist() == [-4, -3, -2, -1, 0, 1, 2, 3]
    assert init_level(3, "int") == 3 and init_level(3, "nf") == 1
    x = torch.tensor([-9.0, -3.4, -0.6, 0.2, 2.5, 7.0])
    assert lv[nearest_codes(x, lv)].tolist() == [-4, -3, -1, 0, 2, 3]
    nf = codebook_levels(2, "nf")
    y = torch.linspace(-2, 2, 101)
    best = (y.unsqueeze(1) - nf.unsqueeze(0)).abs().argmin(dim=1)
    assert torch.equal(nearest_codes(y, nf), best)


def test_init_reproduces_low_rank_block_scale_exactly() -> None:
    # |W| has block absmax u_i * c_g: a rank-1 block-scale matrix, with the last block short
    g = torch.Generator().manual_seed(0)
    n, m, blk = 24, 200, 64
    u = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.5
    c = torch.rand(1, 4, generator=g, dtype=torch.float64) + 0.5
    r = torch.rand(n, m, generator=g, dtype=torch.float64) * 2 - 1
    r[:, ::blk] = torch.where(torch.rand(n, 4, generator=g) < 0.5, -1.0, 1.0).double()  # each block reaches |1|
    w = u * c[:, torch.arange(m) // blk] * r  # float64, so |W|'s block absmax is exactly rank 1
    b, a = init_factors(w, blk, rank=1, level=3.0)
    expected = block_absmax(w, blk)[:, torch.arange(m) // blk] / 3.0
    torch.testing.assert_close(b @ a, expected, rtol=1e-12, atol=1e-12)
    # a full-rank block scale at rank r is its best rank-r approximation: exact at rank = blocks
    w2 = torch.randn(n, m, generator=g).double()
    b2, a2 = init_factors(w2, blk, rank=4, level=1.0)
    torch.testing.assert_close(b2 @ a2, block_absmax(w2, blk)[:, torch.arange(m) // blk], rtol=1e-10, atol=1e-10)
    assert b2.shape == (n, 4) and a2.shape == (4, m)


@pytest.mark.parametrize("codebook", ["int", "nf"])
@pytest.mark.parametrize("with_h", [False, True])
def test_objective_descends_and_refinement_beats_init(codebook: str, with_h: bool) -> None:
    w = _weight()
    h = _hessian() if with_h else None
    res = lords_quantize(w, h, 3, 32, codebook, LoRDSSettings(iterations=5, tol=0.0, search_grid=0))
    obj, fac = res.info["objective"], res.info["objective_factors"]
    assert len(obj) == 6 and len(fac) == 5
    # the factor steps are exact / descent steps: never above the preceding code step
    assert all(f <= o * (1 + 1e-9) for f, o in zip(fac, obj))
    if not with_h:  # nearest rounding is the exact code step: the whole alternation descends
        assert all(o <= f * (1 + 1e-9) for o, f in zip(obj[1:], fac))
    assert min(obj) < 0.8 * obj[0]
    # the stored (fp16) result is what was measured, and it keeps the refinement's gain
    assert res.info["objective_final"] == pytest.approx(_error(w, res.dequantize(), h), rel=1e-5)
    assert res.info["objective_final"] < 0.85 * obj[0]


def test_rescale_search_improves_the_init() -> None:
    w = _weight()
    plain = lords_quantize(w, None, 3, 32, "int", LoRDSSettings(iterations=0, search_grid=0))
    searched = lords_quantize(w, None, 3, 32, "int", LoRDSSettings(iterations=0))
    assert searched.info["objective"][0] < 0.7 * plain.info["objective"][0]


def test_result_is_exact_in_fp16() -> None:
    res = lords_quantize(_weight(), None, 4, 32, "nf", FAST)
    assert res.B.dtype == res.A.dtype == torch.float32
    assert torch.equal(res.B, res.B.half().float()) and torch.equal(res.A, res.A.half().float())
    assert res.codes.dtype == torch.int64 and int(res.codes.min()) >= 0 and int(res.codes.max()) < 16
    assert res.dequantize().dtype == torch.float32
    assert res.rank == res.info["rank"] == lords_rank(64, 256, 32)


@pytest.mark.parametrize("codebook", ["int", "nf"])
def test_gptq_codes_beat_nearest_under_the_hessian(codebook: str) -> None:
    w, h = _weight(), _hessian()
    gptq = lords_quantize(w, h, 3, 32, codebook, FAST)
    rtn = lords_quantize(w, None, 3, 32, codebook, FAST)
    rtn_h = lords_quantize(w, h, 3, 32, codebook, LoRDSSettings(iterations=4, search_grid=7, search_rounds=1, error_feedback=False))
    e_gptq = _error(w, gptq.dequantize(), h)
    assert e_gptq < 0.7 * _error(w, rtn.dequantize(), h)
    assert e_gptq < 0.7 * _error(w, rtn_h.dequantize(), h)
    # H-weighted factors alone already help
    assert _error(w, rtn_h.dequantize(), h) < _error(w, rtn.dequantize(), h)


def test_dead_columns_and_explicit_rank() -> None:
    w, h = _weight(), _hessian()
    h[5, :] = 0
    h[:, 5] = 0
    res = lords_quantize(w, h, 3, 64, "int", FAST, rank=3)
    assert res.B.shape == (64, 3) and res.A.shape == (3, 256)
    assert torch.all(res.dequantize()[:, 5] == 0)
    assert torch.isfinite(res.dequantize()).all()


def test_zero_rows_stay_finite() -> None:
    w = _weight()
    w[3] = 0
    res = lords_quantize(w, None, 2, 32, "int", FAST)
    deq = res.dequantize()
    assert torch.isfinite(deq).all() and torch.all(deq[3] == 0)


def test_lords_vs_int_gptq_at_w3g128_budget() -> None:
    """LoRDS at the rank of block 128 (r = 1 here) next to GPTQ w3g128 (asymmetric
    groups of 128, same order of scale budget): not a claimed win, a sanity bound."""
    n, m = 256, 512
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, m, generator=g)
    x = torch.randn(2048, m, generator=g) @ (torch.randn(m, m, generator=g) * 0.2 + torch.eye(m))
    x[:, :8] *= 8
    h = x.T @ x / 2048
    lords = lords_quantize(w, h, 3, 128, "int", LoRDSSettings(iterations=4))
    e_lords = relative_output_error(w, lords.dequantize(), h)
    e_int = relative_output_error(w, gptq_quantize(w, h, 3, 128, False, GPTQSettings()).dequantize(), h)
    print(f"3-bit relative output error: LoRDS int r={lords.rank} {e_lords:.5f}, GPTQ w3g128 {e_int:.5f}")
    assert e_lords < 1.5 * e_int


@pytest.mark.parametrize("with_h", [False, True])
def test_several_formats_at_once_equal_one_at_a_time(with_h: bool) -> None:
    """The lockstep driver shares the code steps' column pass (stacked rows); each
    run, including when one stops early on ``tol``, is what it is alone."""
    from onecomp.algorithms.lords import LoRDSJob, lords_quantize_many

    w = _weight(48, 200)
    h = _hessian(200) if with_h else None
    jobs = [LoRDSJob(2, 32, "nf"), LoRDSJob(3, 64, "int"), LoRDSJob(4, 32, "nf", rank=2), LoRDSJob(3, 32, "nf")]
    settings = LoRDSSettings(iterations=6, search_grid=5, search_rounds=1, tol=0.02)
    many = lords_quantize_many(w, h, jobs, settings)
    rounds = set()
    for job, got in zip(jobs, many):
        one = lords_quantize(w, h, job.bits, job.block, job.codebook, settings, rank=job.rank)
        assert torch.equal(got.codes, one.codes), job
        assert torch.equal(got.B, one.B) and torch.equal(got.A, one.A), job
        assert got.info["objective"] == one.info["objective"], job
        rounds.add(len(one.info["objective"]))
    assert len(rounds) > 1  # the runs stopped at different rounds


def test_an_indefinite_hessian_reports_the_damping_it_needed() -> None:
    w, h = _weight(), _hessian()
    assert not lords_quantize(w, h, 3, 64, "nf", FAST).info["damping"].raised
    bad = h.clone()
    bad[0, 0] = -5.0 * float(h.diagonal().mean())  # no damping below about 5 factors it
    damping = lords_quantize(w, bad, 3, 64, "nf", FAST).info["damping"]
    assert damping.raised and damping.requested == FAST.damp and damping.used == pytest.approx(10.0)
