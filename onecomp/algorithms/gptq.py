"""GPTQ (Frantar et al., 2022): column-by-column rounding with Hessian-based
error feedback, H = 2/N * sum x x^T over the layer's calibration inputs.

Details that decide quality on sensitive models are all here: act-order with
correct group indices (or static groups), clip search, damping that grows until
the Cholesky factorization succeeds (the result says how far), dead input columns, and groups that do not
divide the input width (the last group is shorter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from onecomp.algorithms.quant_grid import ClipSearch, dequantize_codes, find_group_params, find_params, quantize_codes
from onecomp.algorithms.result import Damping, IntQuantResult, contiguous_group_index


@dataclass(frozen=True)
class GPTQSettings:
    act_order: bool = True
    static_groups: bool = False
    damp: float = 0.1  # x mean(diag H); measured best with QEP at 3-4 bits (docs/notes/benchmarks-notebook.md)
    block_size: int = 128
    clip: ClipSearch | None = None
    max_damp_retries: int = 6


class HessianError(RuntimeError):
    """The Hessian stayed indefinite even with the largest damping tried."""


def permuted_copy(matrix: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """``matrix[perm][:, perm]`` (float32), built a slab of rows at a time: no
    second full-size temporary."""
    if perm is None:
        return matrix.to(torch.float32, copy=True)
    out = torch.empty(matrix.shape, dtype=torch.float32, device=matrix.device)
    slab = max(1, 2**24 // max(1, matrix.shape[1]))
    for r in range(0, matrix.shape[0], slab):
        out[r : r + slab] = matrix.index_select(0, perm[r : r + slab]).float().index_select(1, perm)
    return out


def factor_in_place(work: torch.Tensor, upper: bool = False) -> bool:
    """Cholesky factor of the symmetric ``work``, written over it: ``work.mT``
    is then the factor. LAPACK works in place on a column-major matrix, which
    the transposed view of a symmetric row-major one is, so no copy is made.
    False when the matrix is not positive definite (``work`` is then spoiled)."""
    info = torch.empty((), dtype=torch.int32, device=work.device)
    torch.linalg.cholesky_ex(work.mT, upper=upper, out=(work.mT, info))
    return int(info) == 0


def inverse_hessian_cholesky(
    hessian: torch.Tensor, damp: float, retries: int, perm: torch.Tensor | None = None
) -> tuple[torch.Tensor, Damping]:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, H permuted by
    ``perm``; damping x10 on each failure. Returns the damping it needed, so
    callers can report a raised one.

    ``hessian`` is left as it is; one working matrix of its size is made and
    factored, inverted and factored again in place, which is what decides the
    stage's peak on the widest layers (a 14336-wide MLP input: 0.8 GB each)."""
    mean_diag = float(hessian.diagonal().mean())
    work = permuted_copy(hessian, perm)
    for attempt in range(retries):
        if attempt:
            work.copy_(permuted_copy(hessian, perm))
        work.diagonal().add_(damp * (10**attempt) * mean_diag)
        if not factor_in_place(work):
            continue
        torch.cholesky_inverse(work.mT, out=work.mT)
        if factor_in_place(work, upper=True) and torch.isfinite(work).all():
            return work.mT, Damping(damp, damp * (10**attempt))
    raise HessianError(f"Cholesky failed with damping up to {damp * 10 ** (retries - 1):g} x mean(diag H)")


def _prepare(weight: torch.Tensor, hessian: torch.Tensor, settings: GPTQSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Damping]:
    """Zero dead columns, permute (act-order), and factor the damped inverse Hessian."""
    w = weight.float().clone()
    diag = torch.diag(hessian).float()
    dead = diag == 0
    w[:, dead] = 0.0
    perm = torch.argsort(diag, descending=True) if settings.act_order else torch.arange(w.shape[1], device=w.device)
    if dead.any():  # a dead input's row and column are zero: a unit diagonal keeps the factorization defined
        hessian = hessian.float().clone()
        hessian[dead, dead] = 1.0
    hinv, damping = inverse_hessian_cholesky(hessian, settings.damp, settings.max_damp_retries, perm)
    return w, perm, hinv, damping


ColumnQuantizer = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # (column, index) -> (codes, dequantized)


def gptq_column_pass(w: torch.Tensor, hinv: torch.Tensor, quantize_column: ColumnQuantizer, block_size: int) -> torch.Tensor:
    """GPTQ's column pass with lazy block updates, for any per-column quantizer.

    ``w`` columns are in processing order and ``hinv`` is the upper Cholesky factor
    of the (permuted, damped) inverse Hessian. Each column is quantized after the
    errors of the columns before it were fed back; returns the codes.
    """
    w = w.clone()
    codes: torch.Tensor | None = None
    n_in = w.shape[1]
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q, deq = quantize_column(w1[:, i], i1 + i)
            if codes is None:
                codes = torch.zeros(w.shape, dtype=q.dtype, device=w.device)
            codes[:, i1 + i] = q
            e = (w1[:, i] - deq) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    assert codes is not None
    return codes


def _gptq_fixed_grid(
    w: torch.Tensor, hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int | torch.Tensor, block_size: int
) -> torch.Tensor:
    """Codes of ``w`` (columns already in processing order) on a grid fixed per
    element (``scale``/``zero`` of w's shape), with GPTQ's error feedback.

    Rows are independent, so several formats of one weight can be stacked as rows
    (``bits`` then gives one width per row) and share one pass over the columns.
    """

    def column(x: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, z = scale[:, col : col + 1], zero[:, col : col + 1]
        q = quantize_codes(x.unsqueeze(1), s, z, bits)
        return q[:, 0], dequantize_codes(q, s, z)[:, 0]

    return gptq_column_pass(w, hinv, column, block_size)


def _gptq_dynamic_groups(
    w: torch.Tensor, hinv: torch.Tensor, bits: int, g: int, sym: bool, settings: GPTQSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ whose group parameters come from the error-updated weights at each group start."""
    n_out, n_in = w.shape
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
            if col % g == 0:
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
    return codes, scales, zeros


def _uses_fixed_grid(group_size: int, settings: GPTQSettings) -> bool:
    return settings.static_groups or group_size <= 0


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    settings: GPTQSettings = GPTQSettings(),
) -> IntQuantResult:
    return gptq_quantize_formats(weight, hessian, [(bits, group_size, sym)], settings)[0]


def gptq_quantize_formats(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    formats: list[tuple[int, int, bool]],
    settings: GPTQSettings = GPTQSettings(),
) -> list[IntQuantResult]:
    """GPTQ of one weight in each of several integer formats (bits, group size, sym).

    Formats whose grid is fixed before the column pass (static groups, per-channel)
    share one factorization and one stacked pass; the result for each format is the
    one :func:`gptq_quantize` gives for it alone. This is what makes measuring every
    candidate format of every layer affordable for the planner.
    """
    w, perm, hinv, damping = _prepare(weight, hessian, settings)
    n_out, n_in = w.shape
    invperm = torch.argsort(perm)
    results: dict[int, IntQuantResult] = {}
    fixed = [i for i, (_, gs, _) in enumerate(formats) if _uses_fixed_grid(gs, settings)]
    if fixed:
        grids = [find_group_params(w, formats[i][0], formats[i][1], formats[i][2], settings.clip) for i in fixed]
        idx = [contiguous_group_index(n_in, formats[i][1])[perm] for i in fixed]
        scale = torch.cat([s[:, gi] for (s, _), gi in zip(grids, idx)])
        zero = torch.cat([z[:, gi] for (_, z), gi in zip(grids, idx)])
        bits = torch.cat([torch.full((n_out,), formats[i][0], dtype=torch.int64) for i in fixed])
        stacked = w[:, perm].repeat(len(fixed), 1)
        codes = _gptq_fixed_grid(stacked, hinv, scale, zero, bits, settings.block_size)[:, invperm]
        for k, i in enumerate(fixed):
            s, z = grids[k]
            results[i] = IntQuantResult(codes=codes[k * n_out : (k + 1) * n_out], group_size=formats[i][1], scale=s, zero=z)
    for i, (b, gs, sym) in enumerate(formats):
        if i in results:
            continue
        codes, scales, zeros = _gptq_dynamic_groups(w[:, perm], hinv, b, gs, sym, settings)
        g_idx = invperm // gs if settings.act_order else None
        results[i] = IntQuantResult(codes=codes[:, invperm], group_size=gs, scale=scales, zero=zeros, g_idx=g_idx)
    out = [results[i] for i in range(len(formats))]
    for r in out:
        r.info["damping"] = damping
    return out


def relative_output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(D H D^T) / tr(W H W^T): the layer's output error on calibration inputs, relative."""
    d = weight.float() - approx.float()
    num = ((d @ hessian) * d).sum()
    den = ((weight.float() @ hessian) * weight.float()).sum().clamp(min=1e-30)
    return float(num / den)
