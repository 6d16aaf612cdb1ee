import json

from onecomp.hardware import detect_hardware, peak_rss_bytes


def test_profile_is_sane_and_serializable() -> None:
    hw = detect_hardware()
    assert hw.cpu_count >= 1
    assert 0 < hw.ram_available_bytes <= hw.ram_total_bytes
    json.dumps(hw.to_dict())
    assert peak_rss_bytes() > 10 * 2**20
