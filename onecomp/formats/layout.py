"""Storage arithmetic the format specs share, free of torch, so a job's
settings (and a plan's sizes) can be checked without loading the numerics."""

from __future__ import annotations


def packed_nbytes(ncodes: int, bits: int) -> int:
    """Bytes of ``ncodes`` codes of ``bits`` bits, densely packed."""
    return (ncodes * bits + 7) // 8


def lords_rank(out_features: int, in_features: int, block: int) -> int:
    """Rank whose fp16 factors cost what fp16 scales of ``block``-wide blocks cost."""
    return max(1, (out_features * in_features) // (block * (out_features + in_features)))
