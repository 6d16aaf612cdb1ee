"""Sensitivity measurement: the gradient weights, the error formula, and the
block-by-block measuring pass on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onecomp.formats import default_candidates
from onecomp.methods import METHODS
from onecomp.models.adapters import adapter_for
from onecomp.plan.fisher import output_grad_moments
from onecomp.plan.measure import candidate_errors, measure_blocks
from tests.conftest import streamed, tiny_model



def _names(layers: int = 2) -> list[str]:
    ad = adapter_for("llama")
    return [f"{ad.block_prefix(b)}.{n}" for b in range(layers) for n in ad.linear_names()]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_block_by_block_gradients_equal_whole_model_backward(arch: str) -> None:
    """Streamed from the weights one block at a time, forward then backward:
    the whole model's gradients (Gemma's tied head and soft cap included)."""
    model = tiny_model(arch)
    if arch == "gemma3_text":
        model.config.final_logit_softcapping = 30.0
    ad = adapter_for(arch)
    names = [f"{ad.block_prefix(b)}.{n}" for b in range(2) for n in ad.linear_names()]
    ids = torch.randint(3, 128, (6, 24), generator=torch.Generator().manual_seed(0))
    moments, info = output_grad_moments(streamed(model), ad, names, ids, 2)
    ref = {n: torch.zeros(model.get_submodule(n).out_features) for n in names}

    def hook(name: str):
        def fn(_m, _a, out):
            def acc(g):
                ref[name].add_((g * g).reshape(-1, g.shape[-1]).sum(0))

            out.register_hook(acc)

        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    total = 0.0
    for b in range(0, 6, 2):
        x = ids[b : b + 2]
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        loss.backward()
        total += float(loss.detach())
    for h in handles:
        h.remove()
    for n in names:
        torch.testing.assert_close(moments[n], ref[n] / ids.numel(), rtol=1e-4, atol=1e-12)
    assert abs(info["mean_loss"] - total / (6 * 23)) < 1e-4
    assert all(p.requires_grad for p in model.parameters())  # restored after the pass


def test_weighted_error_is_half_the_gradient_weighted_output_error() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=g)
    w = torch.randn(8, 16, generator=g)
    approx = w + 0.1 * torch.randn(8, 16, generator=g)
    grad_sq = torch.rand(8, generator=g)
    h = 2 * x.T @ x / x.shape[0]
    (weighted, relative), = candidate_errors(w, [approx], h, grad_sq)
    dy = x @ (w - approx).T  # per-token output error
    assert abs(weighted - 0.5 * float((dy**2).mean(0) @ grad_sq)) < 1e-4 * weighted
    assert abs(relative - float((dy**2).sum() / ((x @ w.T) ** 2).sum())) < 1e-4 * relative


def test_measuring_pass_orders_candidates_and_resumes() -> None:
    model = tiny_model("llama")
    names = _names()
    ad = adapter_for("llama")
    ids = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(2))
    grad_sq, _ = output_grad_moments(streamed(model), ad, names, ids, 2)
    method = METHODS["gptq"]
    opts = method.options()
    cands = {f.label(): method.stored_spec(f, opts) for f in default_candidates() if f.label() in ("w2g32", "w4g32", "w8g32", "w4ch")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved: dict[int, dict] = {}
    full = measure_blocks(streamed(model), ad, names, cands, method, opts, grad_sq, ids, 2, on_block=lambda i, new: saved.update({i: new}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # measuring changes no weight
    for n in names:
        e = {k: v["weighted"] for k, v in full[n]["errors"].items()}
        assert e["w8g32"] < e["w4g32"] < e["w2g32"], n
        assert full[n]["errors"]["w4g32"]["relative"] < full[n]["errors"]["w4ch"]["relative"], n
    # a resumed pass keeps the finished block and measures the rest identically
    again = measure_blocks(streamed(model), ad, names, cands, method, opts, grad_sq, ids, 2, done=saved[0])
    for n in names:
        for label in cands:
            assert again[n]["errors"][label] == full[n]["errors"][label]


def test_a_sample_of_rows_estimates_the_layer_error() -> None:
    from onecomp.plan.measure import sample_rows

    g = torch.Generator().manual_seed(3)
    n, m = 768, 96
    x = torch.randn(2000, m, generator=g) @ (torch.eye(m) + 0.3 * torch.randn(m, m, generator=g))
    h = 2 * x.T @ x / x.shape[0]
    w = torch.randn(n, m, generator=g) * torch.rand(n, 1, generator=g)
    grad_sq = torch.rand(n, generator=g) ** 4  # a few output channels matter far more than the rest
    method = METHODS["gptq"]
    opts = method.options()
    specs = [method.stored_spec(f, opts) for f in default_candidates() if f.label() in ("w2g32", "w3g64", "w4ch")]
    full = candidate_errors(w, [r.dequantize() for r, _ in method.quantize_formats(w, h, specs, opts)], h, grad_sq)
    importance = grad_sq * ((w @ h) * w).sum(1)
    rows, weights = sample_rows(importance, 0.125, 64, 16, seed=0)
    assert rows.numel() == 96 and weights.sum() == pytest.approx(n)
    sub = w[rows]
    est = candidate_errors(sub, [r.dequantize() for r, _ in method.quantize_formats(sub, h, specs, opts)], h, grad_sq[rows], weights)
    for (fw, fr), (ew, er) in zip(full, est):
        assert ew == pytest.approx(fw, rel=0.2) and er == pytest.approx(fr, rel=0.2)
    # a layer smaller than min_rows is measured whole, exactly
    rows, weights = sample_rows(importance[:50], 0.125, 64, 16, seed=0)
    assert torch.equal(rows, torch.arange(50)) and torch.equal(weights, torch.ones(50))


def test_candidates_of_other_formats_are_measured_with_their_own_method() -> None:
    from onecomp.formats import format_from_label
    from onecomp.plan.measure import RowSampling

    model = tiny_model("llama")
    names = _names(1)
    ad = adapter_for("llama")
    ids = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(2))
    grad_sq, _ = output_grad_moments(streamed(model), ad, names, ids, 2)
    gptq, dbf = METHODS["gptq"], METHODS["dbf"]
    labels = ["w2g32", "dbf2", "dbf3", "lords3g32"]
    cands = {label: format_from_label(label) for label in labels}
    # rows are sampled for GPTQ; a factorization needs the whole matrix and gets it
    sampling = RowSampling(fraction=0.5, min_rows=4, heavy=1)
    mixed = measure_blocks(streamed(model), ad, names, cands, gptq, gptq.options(), grad_sq, ids, 2, sampling=sampling)
    alone = measure_blocks(streamed(model), ad, names, {"dbf2": cands["dbf2"]}, dbf, dbf.options(), grad_sq, ids, 2, sampling=sampling)
    for n in names:
        errs = {k: v["weighted"] for k, v in mixed[n]["errors"].items()}
        assert list(errs) == labels
        assert errs["dbf2"] == alone[n]["errors"]["dbf2"]["weighted"]
        assert errs["dbf3"] < errs["dbf2"], n


def test_lords_is_measured_on_a_sample_of_rows_with_the_whole_layers_rank() -> None:
    from onecomp.formats import format_from_label
    from onecomp.plan.measure import sample_rows

    g = torch.Generator().manual_seed(4)
    n, m = 512, 128
    x = torch.randn(2000, m, generator=g) @ (torch.eye(m) + 0.3 * torch.randn(m, m, generator=g))
    h = 2 * x.T @ x / x.shape[0]
    # rows and columns of uneven magnitude: the structure a low-rank scale captures
    w = torch.randn(n, m, generator=g) * torch.rand(n, 1, generator=g) * (0.5 + torch.rand(1, m, generator=g))
    grad_sq = torch.rand(n, generator=g) ** 2
    lords = METHODS["lords"]
    opts = lords.options(iterations=2)
    spec = format_from_label("lords3g32").resolved(n, m)
    assert spec.rank == 3
    (full_result, _), = lords.quantize_formats(w, h, [spec], opts)
    (full, _), = candidate_errors(w, [full_result.dequantize()], h, grad_sq)
    rows, weights = sample_rows(grad_sq * ((w @ h) * w).sum(1), 0.25, 64, 16, seed=0)
    (sub_result, stored), = lords.quantize_formats(w[rows], h, [spec], opts)
    assert stored.rank == spec.rank  # the sample is fitted at the whole layer's rank, not its own
    (est, _), = candidate_errors(w[rows], [sub_result.dequantize()], h, grad_sq[rows], weights)
    assert 0.75 * full < est < 1.1 * full, (est, full)


def test_lords_is_measured_with_cheaper_options_close_to_the_full_fit() -> None:
    from onecomp.formats import format_from_label
    from onecomp.methods import LORDS_MEASURE_ROUNDS
    from onecomp.plan.measure import candidate_producers

    specs = [format_from_label(label) for label in ("w3g128", "lords3g128nf", "lords2g128nf")]
    gptq, lords = METHODS["gptq"], METHODS["lords"]
    producers = {p.name: (opts, idx) for p, opts, idx in candidate_producers(specs, gptq, gptq.options())}
    assert producers["gptq"] == (gptq.options(), [0])  # the job's own options, unchanged
    measuring = producers["lords"][0]
    assert measuring.iterations == LORDS_MEASURE_ROUNDS < lords.options().iterations
    assert (measuring.search_grid, measuring.search_rounds, measuring.solve_dtype) == (8, 1, "float32")
    assert producers["lords"][1] == [1, 2]

    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 256, generator=g) * torch.rand(96, 1, generator=g) * (0.5 + torch.rand(1, 256, generator=g))
    x = torch.randn(1024, 256, generator=g) @ (torch.eye(256) + 0.2 * torch.randn(256, 256, generator=g))
    h = 2 * x.T @ x / 1024
    fmts = [s.resolved(96, 256) for s in specs[1:]]
    full = lords.quantize_formats(w, h, fmts, lords.options())
    short = lords.quantize_formats(w, h, fmts, measuring)
    for (f, _), (s, _) in zip(full, short):
        ratio = s.info["objective_final"] / f.info["objective_final"]
        assert 0.98 < ratio < 1.25, ratio  # close, and not optimistic
        assert len(s.info["objective"]) <= LORDS_MEASURE_ROUNDS + 1
