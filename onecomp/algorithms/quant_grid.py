"""Uniform integer grids: per-row scale and zero for a group of columns.

Scales are rounded to float16 here, where they are chosen, so the codes are
computed against exactly the scale that the checkpoint stores: the saved model
then reproduces the quantizer's own dequantized weights bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCALE_DTYPE = torch.float16
_MIN_SCALE = 1e-6
_ROUNDER = 12582912.0  # 1.5 * 2**23: adding and subtracting it rounds a float32 to the nearest integer, ties to even


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` for float32, as two additions.

    Exact for |x| < 2**22 (larger values stay large and are clamped by every caller).
    torch.round parallelizes tensors of a few thousand elements, and on a busy
    machine each call then waits milliseconds for a second thread; GPTQ calls it
    once per column, so this keeps it from slowing down by orders of magnitude.
    """
    if x.dtype != torch.float32:
        return torch.round(x)
    return (x + _ROUNDER) - _ROUNDER


@dataclass(frozen=True)
class ClipSearch:
    """Grid search over shrunken ranges (GPTQ's ``mse`` option)."""

    grid: int = 100
    maxshrink: float = 0.8
    norm: float = 2.4


def maxq_of(bits: int) -> int:
    return (1 << bits) - 1


def _params_from_range(
    xmin: torch.Tensor, xmax: torch.Tensor, bits: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    maxq = maxq_of(bits)
    if sym:
        amax = torch.maximum(xmin.abs(), xmax.abs())
        scale = 2 * amax / maxq
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        xmin = torch.minimum(xmin, torch.zeros_like(xmin))
        xmax = torch.maximum(xmax, torch.zeros_like(xmax))
        scale = (xmax - xmin) / maxq
    scale = scale.clamp(min=_MIN_SCALE).to(SCALE_DTYPE).float()
    if not sym:
        zero = round_half_even(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int | torch.Tensor) -> torch.Tensor:
    """Integer codes of ``w`` (rows x cols) for per-row ``scale``/``zero`` (rows,) or broadcastable."""
    if scale.dim() == 1:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    q = round_half_even(w / scale) + zero
    if isinstance(bits, torch.Tensor):  # one width per row (several formats stacked)
        return torch.minimum(q.clamp_(min=0), (2**bits - 1).to(q.dtype).view(-1, 1))
    return torch.clamp(q, 0, maxq_of(bits))


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    if scale.dim() == 1:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return (codes - zero) * scale


_CLIP_CHUNK = 1 << 16  # elements per chunk of the clip search: its working set stays in the CPU's cache


def find_params(
    w: torch.Tensor, bits: int, sym: bool, clip: ClipSearch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) for the columns of ``w``; with ``clip``, the range
    shrink that minimizes the row's quantization error (|err|^norm) is chosen.

    Rows are independent, so the search runs over chunks of rows, each through
    the whole grid while it is in cache: the same result as one pass over the
    grid for all rows, several times faster on wide layers."""
    w = w.float()
    if clip is None or w.shape[0] * w.shape[1] <= _CLIP_CHUNK:
        return _find_params(w, bits, sym, clip)
    step = max(1, _CLIP_CHUNK // max(1, w.shape[1]))
    parts = [_find_params(w[r : r + step], bits, sym, clip) for r in range(0, w.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _find_params(w: torch.Tensor, bits: int, sym: bool, clip: ClipSearch | None) -> tuple[torch.Tensor, torch.Tensor]:
    xmin, xmax = w.min(dim=1).values, w.max(dim=1).values
    scale, zero = _params_from_range(xmin, xmax, bits, sym)
    if clip is None:
        return scale, zero
    best = torch.full_like(xmin, float("inf"))
    steps = max(1, int(clip.maxshrink * clip.grid))
    maxq = maxq_of(bits)
    for i in range(steps):
        p = 1 - i / clip.grid
        s, z = _params_from_range(p * xmin, p * xmax, bits, sym)
        sc, zc = s.unsqueeze(1), z.unsqueeze(1)
        # dequantize(quantize(w)) - w in place: the same operations as quantize_codes and
        # dequantize_codes, in the same order, without a new tensor for each
        e = w / sc
        e.add_(_ROUNDER).sub_(_ROUNDER).add_(zc).clamp_(0, maxq).sub_(zc).mul_(sc).sub_(w)
        err = e.abs_().pow_(clip.norm).sum(dim=1)
        better = err < best
        if better.any():
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
    return scale, zero


def find_group_params(
    w: torch.Tensor, bits: int, group_size: int, sym: bool, clip: ClipSearch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of shape (rows, ngroups) for contiguous groups of ``group_size``
    columns (``<= 0``: one group per row); the last group may be shorter.

    All full groups are searched at once as rows of one matrix, so the clip search
    costs one pass instead of one per group; rows are independent, so the result is
    that of :func:`find_params` applied group by group.
    """
    n, m = w.shape
    g = m if group_size <= 0 else min(group_size, m)
    full = m // g
    scales, zeros = [], []
    if full:
        rows = w[:, : full * g].reshape(n * full, g)
        s, z = find_params(rows, bits, sym, clip)
        scales.append(s.view(n, full))
        zeros.append(z.view(n, full))
    if full * g < m:
        s, z = find_params(w[:, full * g :], bits, sym, clip)
        scales.append(s.view(n, 1))
        zeros.append(z.view(n, 1))
    return torch.cat(scales, 1), torch.cat(zeros, 1)
