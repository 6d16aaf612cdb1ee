"""Round-to-nearest: the baseline every other method must beat."""

from __future__ import annotations

import torch

from onecomp.algorithms.quant_grid import ClipSearch, find_params, quantize_codes
from onecomp.algorithms.result import IntQuantResult, contiguous_groups


def rtn_quantize(
    weight: torch.Tensor, bits: int, group_size: int, sym: bool, clip: ClipSearch | None = None
) -> IntQuantResult:
    w = weight.float()
    codes = torch.empty_like(w)
    scales, zeros = [], []
    for start, stop in contiguous_groups(w.shape[1], group_size):
        scale, zero = find_params(w[:, start:stop], bits, sym, clip)
        codes[:, start:stop] = quantize_codes(w[:, start:stop], scale, zero, bits)
        scales.append(scale)
        zeros.append(zero)
    return IntQuantResult(codes=codes, group_size=group_size, scale=torch.stack(scales, 1), zero=torch.stack(zeros, 1))
