"""Weighting a layer's output channels by how much they matter to the loss.

To second order, the loss rises by 1/2 sum_q E[g_q^2] (D S D^T)_qq when a layer's
weight is off by D (g: the loss gradient at the layer's outputs, S = E[x x^T]).
Row-separable quantizers (GPTQ, RTN) solve each row on its own, so row weights
change nothing for them. Formats whose rows share factors (a binary
factorization's sign matrices, LoRDS's low-rank scale) do trade rows against
each other, and all of them keep a free per-row scale (DBF's a, LoRDS's B rows):
fitting diag(s) W and dividing that scale by s afterwards minimizes the
row-weighted error with the method's own fit, unchanged.
"""

from __future__ import annotations

import torch

_FLOOR = 1e-4  # relative E[g^2] below which a row is weighted as if it were this


def row_scale(grad_sq: torch.Tensor, exponent: float) -> torch.Tensor:
    """s_q = (E[g_q^2] / mean)^(exponent / 2): the fitted error of row q is weighted
    by s_q^2 = E[g_q^2]^exponent (1: the second-order loss; 0: unweighted)."""
    g = grad_sq.float()
    rel = (g / g.mean().clamp_min(1e-30)).clamp_min(_FLOOR)
    return rel ** (exponent / 2)
