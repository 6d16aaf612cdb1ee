"""Row weights by loss gradients: a result rescaled by rows equals the rescaled
dense weight, and weighting lowers the loss-weighted error of methods whose rows
share factors (and changes nothing for GPTQ, whose rows are independent)."""

from __future__ import annotations

import pytest
import torch

from onecomp.algorithms.row_weights import row_scale
from onecomp.formats import format_from_label
from onecomp.methods import METHODS
from onecomp.stages.layerwise import quantize_weight

FAST = {"dbf": {"iterations": 6}, "mdbf": {"iterations": 6, "paths": 2}, "lords": {"iterations": 2, "output_weighting": 0.5}, "gptq": {}}
LABELS = {"dbf": "dbf2", "mdbf": "mdbf2e1p2", "lords": "lords3g32", "gptq": "w2g32"}


def _layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, m = 96, 128
    w = torch.randn(n, m, generator=g) * torch.rand(n, 1, generator=g).add(0.5) * torch.rand(1, m, generator=g).add(0.5)
    x = torch.randn(1024, m, generator=g) * torch.rand(1, m, generator=g).mul(3).add(0.2)
    h = 2 * x.T @ x / x.shape[0]
    grad_sq = torch.rand(n, generator=g) ** 6  # a few output channels matter far more than the rest
    return w, h, grad_sq


def _weighted(w: torch.Tensor, deq: torch.Tensor, h: torch.Tensor, grad_sq: torch.Tensor) -> float:
    d = w - deq
    return float((((d @ h) * d).sum(1) * grad_sq).sum())


def test_row_scale_weights_each_rows_error_by_a_power_of_its_gradient_moment() -> None:
    g = torch.tensor([4.0, 1.0, 0.25, 0.0])
    assert torch.allclose(row_scale(g, 0.0), torch.ones(4))
    s = row_scale(g, 1.0)
    assert torch.allclose(s[:3] ** 2, g[:3] / g.mean())
    assert s[3] > 0  # a row without gradient keeps a (tiny) positive scale, so its vector can be divided back


@pytest.mark.parametrize("method", ["dbf", "lords"])
def test_a_result_scaled_by_rows_is_the_scaled_weight(method: str) -> None:
    w, h, _ = _layer()
    m = METHODS[method]
    assert m.scale_rows is not None
    result, _ = m.quantize(w, h, format_from_label(LABELS[method]), m.options(**FAST[method]))
    s = torch.linspace(0.3, 3.0, w.shape[0])
    scaled = m.scale_rows(result, s).dequantize()
    assert torch.allclose(scaled, s[:, None] * result.dequantize(), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["dbf", "mdbf", "lords"])
def test_weighting_rows_lowers_the_loss_weighted_error(method: str) -> None:
    w, h, grad_sq = _layer()
    m = METHODS[method]
    fmt, opts = format_from_label(LABELS[method]), m.options(**FAST[method])
    _, plain, *_ = quantize_weight(w, h, fmt, m, opts)
    _, weighted, *_ = quantize_weight(w, h, fmt, m, opts, grad_sq)
    assert _weighted(w, weighted, h, grad_sq) < 0.95 * _weighted(w, plain, h, grad_sq)
    off = opts.model_copy(update={"output_weighting": 0.0})
    _, unweighted, *_ = quantize_weight(w, h, fmt, m, off, grad_sq)
    assert torch.equal(unweighted, plain)


def test_gptq_ignores_row_weights() -> None:
    w, h, grad_sq = _layer()
    m = METHODS["gptq"]
    fmt = format_from_label(LABELS["gptq"])
    _, plain, *_ = quantize_weight(w, h, fmt, m, m.options())
    _, given, *_ = quantize_weight(w, h, fmt, m, m.options(), grad_sq)
    assert torch.equal(plain, given)
