"""Dense bit packing: n codes of b bits take exactly ceil(n*b/8) bytes.

The layout is an LSB-first bit stream. Eight b-bit codes fill exactly b bytes,
so packing and unpacking work on chunks of eight codes with integer shifts,
which keeps both fast and vectorized for every b in 1..8 (3 bits included).
"""

from __future__ import annotations

import torch

from onecomp.formats.layout import packed_nbytes

__all__ = ["pack_codes", "packed_nbytes", "unpack_codes"]


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) into a flat uint8 tensor."""
    _check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits")
    pad = (-n) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    chunks = flat.view(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    words = (chunks << shifts).sum(dim=1)  # each word holds 8*bits <= 64 bits
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    out = (words.unsqueeze(1) >> byte_shifts) & 0xFF
    return out.to(torch.uint8).reshape(-1)[: packed_nbytes(n, bits)]


def unpack_codes(packed: torch.Tensor, bits: int, ncodes: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``ncodes`` codes in an integer dtype (uint8 up to int64)."""
    _check_bits(bits)
    if bits in (1, 2, 4, 8):
        return _unpack_aligned(packed, bits, ncodes)
    wide = torch.int32 if 8 * bits < 32 else torch.int64
    data = packed.reshape(-1).to(wide)
    need = ((ncodes + 7) // 8) * bits
    if data.numel() < need:
        data = torch.cat([data, data.new_zeros(need - data.numel())])
    chunks = data[:need].view(-1, bits)
    byte_shifts = torch.arange(bits, dtype=wide, device=data.device) * 8
    words = (chunks << byte_shifts).sum(dim=1, dtype=wide)
    shifts = torch.arange(8, dtype=wide, device=data.device) * bits
    codes = (words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:ncodes]


def _unpack_aligned(packed: torch.Tensor, bits: int, ncodes: int) -> torch.Tensor:
    """Fast path when codes never straddle a byte boundary."""
    per_byte = 8 // bits
    data = packed.reshape(-1)
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=data.device) * bits
    codes = (data.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:ncodes]
