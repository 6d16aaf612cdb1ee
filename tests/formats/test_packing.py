import pytest
import torch

from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 5, 8, 9, 63, 64 * 37 + 3])
def test_round_trip_every_width(bits: int, n: int) -> None:
    codes = torch.randint(0, 1 << bits, (n,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, n).long(), codes)


def test_three_bit_is_dense() -> None:
    # 8 codes of 3 bits take exactly 3 bytes: no per-byte padding
    assert pack_codes(torch.full((8,), 7), 3).tolist() == [255, 255, 255]


def test_out_of_range_codes_rejected() -> None:
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([16]), 4)
