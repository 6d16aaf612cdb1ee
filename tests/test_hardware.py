import json
from pathlib import Path

import pytest
import torch

from onecomp.hardware import HardwareProfile, detect_hardware, disk_free_bytes, parse_cpuinfo, peak_rss_bytes, reset_peak_rss

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse avx512f avx512_bf16 amx_tile
processor\t: 1
model name\t: other
flags\t\t: fpu
"""


def test_profile_is_sane_and_serializable() -> None:
    hw = detect_hardware()
    assert isinstance(hw, HardwareProfile)
    assert hw.cpu_count >= 1
    assert 0 < hw.ram_available_bytes <= hw.ram_total_bytes
    assert isinstance(hw.bf16_cpu, bool)
    assert len(hw.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for gpu in hw.gpus:
        assert gpu["total_memory_bytes"] > 0 and isinstance(gpu["bf16"], bool)
    assert json.loads(json.dumps(hw.to_dict())) == hw.to_dict()
    assert peak_rss_bytes() > 10 * 2**20


def test_parse_cpuinfo_takes_the_first_processor() -> None:
    model, flags = parse_cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8488C"
    assert "avx512_bf16" in flags and "fpu" in flags
    assert parse_cpuinfo("") == (None, frozenset())


def test_disk_free_of_a_path_not_yet_created(tmp_path) -> None:
    free = disk_free_bytes(tmp_path / "not" / "yet")
    assert free > 0 and abs(free - detect_hardware().disk_free_bytes(tmp_path)) < 2**30  # others write too


def _resident(nbytes: int) -> bytearray:
    """A buffer whose every page is touched, so it counts in resident memory."""
    buf = bytearray(nbytes)
    buf[::4096] = b"x" * len(buf[::4096])
    return buf


def test_peak_rss_is_this_program_s_not_its_parent_s() -> None:
    import subprocess
    import sys

    code = "from onecomp.hardware import peak_rss_bytes; print(peak_rss_bytes())"
    hog = _resident(600 * 2**20)  # the parent grows large before starting the child
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 500 * 2**20, child / 2**20
    del hog


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak reset is Linux only")
def test_a_reset_forgets_the_earlier_peak() -> None:
    """A job run inside a process that peaked before must report its own peak."""
    _resident(400 * 2**20)  # the process peaks, and the buffer is freed at once
    before = peak_rss_bytes()
    assert reset_peak_rss()
    assert peak_rss_bytes() < before - 300 * 2**20
