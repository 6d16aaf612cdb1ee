"""GPTQ (Frantar et al., 2022): column-by-column rounding with Hessian-based
error feedback, H = 2/N * sum x x^T over the layer's calibration inputs.

Details that decide quality on sensitive models are all here: act-order with
correct group indices (or static groups), clip search, damping that grows until
the Cholesky factorization succeeds, dead input columns, and groups that do not
divide the input width (the last group is shorter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onecomp.algorithms.quant_grid import ClipSearch, dequantize_codes, find_params, quantize_codes
from onecomp.algorithms.result import IntQuantResult, contiguous_groups


@dataclass(frozen=True)
class GPTQSettings:
    act_order: bool = True
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    clip: ClipSearch | None = None
    max_damp_retries: int = 6


class HessianError(RuntimeError):
    """The Hessian stayed indefinite even with the largest damping tried."""


def inverse_hessian_cholesky(hessian: torch.Tensor, damp: float, retries: int) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1; damping x10 on each failure."""
    mean_diag = float(torch.diag(hessian).mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(retries):
        lam = damp * (10**attempt) * mean_diag
        chol, info = torch.linalg.cholesky_ex(hessian + lam * eye)
        if int(info) != 0:
            continue
        hinv = torch.cholesky_inverse(chol)
        upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
        if int(info) == 0 and torch.isfinite(upper).all():
            return upper, damp * (10**attempt)
    raise HessianError(f"Cholesky failed with damping up to {damp * 10 ** (retries - 1):g} x mean(diag H)")


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    settings: GPTQSettings = GPTQSettings(),
) -> IntQuantResult:
    w = weight.float().clone()
    h = hessian.float().clone()
    n_out, n_in = w.shape
    g = n_in if group_size <= 0 else group_size

    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    static: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    if settings.static_groups or group_size <= 0:
        static = [find_params(w[:, a:b], bits, sym, settings.clip) for a, b in contiguous_groups(n_in, group_size)]

    perm = torch.argsort(torch.diag(h), descending=True) if settings.act_order else torch.arange(n_in)
    w = w[:, perm]
    h = h[perm][:, perm]
    hinv, damp_used = inverse_hessian_cholesky(h, settings.damp, settings.max_damp_retries)

    codes = torch.zeros_like(w)
    ngroups = -(-n_in // g)
    scales = torch.zeros(n_out, ngroups)
    zeros = torch.zeros(n_out, ngroups)
    scale = zero = None
    bs = settings.block_size
    for i1 in range(0, n_in, bs):
        i2 = min(i1 + bs, n_in)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                gid = int(perm[col]) // g
                scale, zero = static[gid]
            elif col % g == 0:
                window = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :g]
                scale, zero = find_params(window, bits, sym, settings.clip)
                scales[:, col // g], zeros[:, col // g] = scale, zero
            q = quantize_codes(w1[:, i : i + 1], scale, zero, bits)
            codes[:, col] = q[:, 0]
            deq = dequantize_codes(q, scale, zero)[:, 0]
            e = (w1[:, i] - deq) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    invperm = torch.argsort(perm)
    codes = codes[:, invperm]
    g_idx = None
    if static is not None:
        scales = torch.stack([s for s, _ in static], 1)
        zeros = torch.stack([z for _, z in static], 1)
    elif settings.act_order:
        g_idx = invperm // g
    result = IntQuantResult(codes=codes, group_size=group_size, scale=scales, zero=zeros, g_idx=g_idx)
    result.info["damp"] = damp_used
    return result


def relative_output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(D H D^T) / tr(W H W^T): the layer's output error on calibration inputs, relative."""
    d = weight.float() - approx.float()
    num = ((d @ hessian) * d).sum()
    den = ((weight.float() @ hessian) * weight.float()).sum().clamp(min=1e-30)
    return float(num / den)
